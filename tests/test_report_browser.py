"""Every kind of report.html opened in headless Chromium (Debian's `chromium`, driven by Playwright): no console
errors, no request off the machine, every image loaded (naturalWidth > 0), the headline table holding the numbers
of the directory's summary.json (or study.json). Screenshots go to the test's tmp dir.

Skips with the reason where Chromium or Playwright is missing; `make test` installs both where apt works and then
sets VITLAB_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from report_helpers import require_browser
from test_demo import TINY_DEMO as TEST_DEMO
from test_studies import tiny as tiny_study
from train_helpers import tiny_tree, write_config

from vitlab import demo
from vitlab.cli import main
from vitlab.report.html import flatten
from vitlab.studies.runner import run_study
from vitlab.studies.study import study_from_dict

TINY_DEMO = dataclasses.replace(TEST_DEMO, scratch_grid={"optim.lr": [0.003]}, note="browser test")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """One small directory of each kind, made by the commands that make them."""
    require_browser()

    root = tmp_path_factory.mktemp("reports")
    tree = tiny_tree()
    tree["train"].update(steps=6, checkpoint_every=0, log_every=2)
    assert main(["pretrain", "--config", str(write_config(root / "run.yaml", tree)), "--out", str(root / "run")]) == 0
    assert main(["inspect", "--checkpoint", str(root / "run"), "--distance-images", "8", "--num-images", "2",
                 "--out", str(root / "inspect")]) == 0
    study = tiny_study("data-size-fmnist")  # the preset at a size that runs in seconds, one seed here
    study["seeds"] = [0]
    run_study(study_from_dict(study), root / "study")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(demo.SIZES, "tiny", TINY_DEMO)
        patch.setattr(demo, "FEWSHOT_SHOTS", (1, 5))
        patch.setattr(demo, "FEWSHOT_SEEDS", (0, 1))
        demo.run_demo(root / "demo", "tiny")
    return {"run": root / "run", "inspection": root / "inspect", "study": root / "study", "demo": root / "demo"}


def numbers(summary: dict) -> dict[str, float]:
    return {key: value for key, value in flatten(summary)
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def open_report(directory: Path, tmp_path: Path):
    from vitlab.report.browser import check_page

    shot = tmp_path / f"{directory.name}-report.png"
    check = check_page(directory / "report.html", shot)
    assert check.console_errors == [] and check.external_requests == []
    assert check.images >= 1 and check.broken_images == []
    assert shot.stat().st_size > 10_000
    return check


@pytest.mark.parametrize("kind", ["run", "inspection"])
def test_run_and_inspection_reports_show_summary_numbers(outputs, kind, tmp_path) -> None:
    check = open_report(outputs[kind], tmp_path)
    expected = numbers(json.loads((outputs[kind] / "summary.json").read_text()))
    assert expected and check.headline == expected
    assert check.images == (1 if kind == "run" else 4)  # training curves | the four inspection figures


def test_study_report_shows_every_point(outputs, tmp_path) -> None:
    check = open_report(outputs["study"], tmp_path)
    points = json.loads((outputs["study"] / "study.json").read_text())["points"]
    for index, point in enumerate(points):
        assert check.headline[f"points.{index}.size"] == point["size"]
        assert check.headline[f"points.{index}.fewshot.1-shot"] == point["fewshot"]["1-shot"]
    assert any(link.endswith("runs/vit-ti-4-n40-s0/pretrain/report.html") for link in check.links)  # points link their runs


def test_demo_report_has_the_table2_table_and_links_every_stage(outputs, tmp_path) -> None:
    check = open_report(outputs["demo"], tmp_path)
    summary = json.loads((outputs["demo"] / "summary.json").read_text())
    assert check.headline == numbers({k: v for k, v in summary.items() if k not in ("rows", "verdict")})
    table = check.tables["table2"]
    for index, row in enumerate(summary["rows"]):
        assert table[f"table.{index}.accuracy"] == row["accuracy"]
        assert table[f"table.{index}.transfer_minutes"] == row["transfer_minutes"]
    for stage in ("pretrain", "finetune", "scratch"):
        assert f"{stage}/report.html" in check.links
        open_report(outputs["demo"] / stage, tmp_path)  # each stage's own page loads too
    assert "fewshot-pretrained.json" in check.links and "fewshot-random-init.json" in check.links
    assert check.images == 4  # training curves of the three stages and the few-shot curve
