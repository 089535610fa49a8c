# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install vitlab, get Fashion-MNIST, run the main job
#   make test   the same set-up, then the import contracts and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vitlab-installed
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,tensorboard,export]"
	touch $(STAMP)

# Fashion-MNIST: Debian's package where apt works (root), else vitlab's checksummed download.
data: setup
	@if [ ! -d $(FMNIST_DEB_DIR) ] && [ -z "$$VITLAB_DATA" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || true; \
	fi
	$(BIN)/vitlab download fashion_mnist

demo: data
	$(BIN)/vitlab demo --out runs/demo

# lint-imports checks the [tool.importlinter] contracts of pyproject.toml (layers, no cycles) before the tests.
test: data
	$(BIN)/lint-imports
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
