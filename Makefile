# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install vitlab, get Fashion-MNIST, run the main job
#   make test   the same set-up, then the import contracts and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vitlab-installed
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data browser docs-figures demo test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,tensorboard,export,report]"
	touch $(STAMP)

# Fashion-MNIST: Debian's package where apt works (root), else vitlab's checksummed download.
data: setup
	@if [ ! -d $(FMNIST_DEB_DIR) ] && [ -z "$$VITLAB_DATA" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || true; \
	fi
	$(BIN)/vitlab download fashion_mnist

# Chromium for the browser tests of report.html: Debian's package where apt works (root); Playwright (pip extra
# `report`) drives it. Elsewhere the browser tests skip and say why (set VITLAB_CHROMIUM to another binary).
CHROMIUM ?= /usr/bin/chromium
browser: setup
	@if [ -x "$${VITLAB_CHROMIUM:-$(CHROMIUM)}" ]; then echo "browser tests use $${VITLAB_CHROMIUM:-$(CHROMIUM)}"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package chromium for the report browser tests"; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "WARNING: apt-get install chromium failed: the report browser tests will be SKIPPED"; \
	else \
	  echo "WARNING: no $(CHROMIUM) and no root apt-get to install it: the report browser tests will be SKIPPED"; \
	  echo "         (install Debian's chromium, or point VITLAB_CHROMIUM at a Chromium binary)"; \
	fi

# The demo report's screenshots in docs/ (docs/reports.md): a small demo run, its report, headless Chromium.
docs-figures: browser
	$(BIN)/python docs/make_figures.py

demo: data
	$(BIN)/vitlab demo --out runs/demo

# lint-imports checks the [tool.importlinter] contracts of pyproject.toml (layers, no cycles) before the tests.
# Where apt works (root), Chromium is installed by `browser` and the report browser tests must run: a skip is then
# a failure (VITLAB_REQUIRE_BROWSER=1).
test: data browser
	$(BIN)/lint-imports
	VITLAB_REQUIRE_BROWSER=$$( [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && echo 1 || echo 0 ) \
	  $(BIN)/python -m pytest

test-slow: data
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/mfu.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/attention.py --threads 2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
