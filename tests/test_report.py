"""vitlab.report: matplotlib figures (PNG + SVG, axis names, ticks, legends), report pages, `vitlab report`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from report_helpers import assert_matplotlib_png, svg_texts

from vitlab.errors import ConfigError, DataError
from vitlab.report import (build_report, confusion_figure, detect_kind, distance_figure, filters_figure,
                           log_figures, plot_study, read_confusion, read_metrics, rollout_figure, similarity_figure,
                           training_curves)

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"


def study_points() -> list[dict]:
    vit = [{"model": "ViT-B/32", "x": x, "mean": m, "std": s} for x, m, s in [(1e4, 40, 2), (1e5, 55, 1.5), (1e6, 70, 1)]]
    resnet = [{"model": "ResNet50x1", "x": x, "mean": m} for x, m in [(1e4, 48), (1e5, 58), (1e6, 63)]]
    return vit + resnet


def test_plot_study_has_log_x_ticks_legend_and_error_bars(tmp_path) -> None:
    png = plot_study(study_points(), "Number of JFT pre-training samples", "Linear 5-shot ImageNet Top1 [%]",
                     tmp_path / "study")
    assert_matplotlib_png(png)
    svg = tmp_path / "study.svg"
    assert svg_texts(svg, "xtick_")[:3] == ["10k", "100k", "1M"]  # every measured size labelled, log spaced
    assert len(svg_texts(svg, "ytick_")) >= 3
    assert set(svg_texts(svg, "legend_")) >= {"ViT-B/32", "ResNet50x1"}
    texts = svg_texts(svg)
    assert "Number of JFT pre-training samples" in texts and "Linear 5-shot ImageNet Top1 [%]" in texts
    assert "LineCollection" in svg.read_text()  # error bars (the ViT has a spread over seeds)
    plot_study([p for p in study_points() if "std" not in p], "x", "y", tmp_path / "no_spread")
    assert "LineCollection" not in (tmp_path / "no_spread.svg").read_text()  # no spread, no bars


def test_plot_study_names_bad_points(tmp_path) -> None:
    with pytest.raises(DataError, match="point 1 has no mean"):
        plot_study([{"model": "a", "x": 1, "mean": 2}, {"model": "a", "x": 3}], "x", "y", tmp_path / "s")
    with pytest.raises(DataError, match="positive x"):
        plot_study([{"model": "a", "x": 0, "mean": 2}], "x", "y", tmp_path / "s")


def metrics_rows() -> list[dict]:
    rows = [{"step": s, "loss": 2.0 / s, "lr": 1e-3 * (1 - s / 40), "train_accuracy": s / 40, "wall_seconds": 2.0 * s}
            for s in range(5, 41, 5)]
    rows += [{"step": 20, "dev_accuracy": 0.5, "dev_loss": 1.0}, {"step": 40, "test_accuracy": 0.8, "test_loss": 0.6}]
    return rows


def test_training_curves_against_steps_images_and_wall_time(tmp_path) -> None:
    png = training_curves(metrics_rows(), tmp_path / "curves", batch_size=64)
    assert_matplotlib_png(png)
    texts = svg_texts(tmp_path / "curves.svg")
    for label in ("Loss", "Learning rate", "Accuracy (%)", "Training step", "Images seen", "Wall time (seconds)"):
        assert label in texts, label
    assert {"train", "dev", "test"} <= set(svg_texts(tmp_path / "curves.svg", "legend_"))
    assert training_curves([{"step": 1, "test_accuracy": 0.5}], tmp_path / "none") is None  # nothing to draw


def test_read_metrics_skips_a_cut_last_line_and_names_a_bad_one(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}]
    path.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 3, "loss": 0.5}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2"):
        read_metrics(path)


def test_inspection_figures_have_labels_colour_bar_and_head_legend(tmp_path) -> None:
    grid = 5
    similarity = np.random.default_rng(0).uniform(-1, 1, (grid, grid, grid, grid))
    assert_matplotlib_png(similarity_figure(similarity, tmp_path / "similarity"))
    texts = svg_texts(tmp_path / "similarity.svg")
    assert "Cosine similarity" in texts and "Input patch row" in texts and "Input patch column" in texts
    assert svg_texts(tmp_path / "similarity.svg", "xtick_")[:grid] == [str(i) for i in range(1, grid + 1)]
    distances = np.linspace(5, 60, 4 * 3).reshape(4, 3)
    assert_matplotlib_png(distance_figure(distances, tmp_path / "distance", max_pixels=90))
    assert svg_texts(tmp_path / "distance.svg", "legend_")[1:] == ["Head 1", "Head 2", "Head 3"]
    assert "Mean attention distance (pixels)" in svg_texts(tmp_path / "distance.svg")
    assert len(svg_texts(tmp_path / "distance.svg", "ytick_")) >= 4  # the pixel axis has numbers
    filters = np.random.default_rng(1).normal(size=(28, 3, 8, 8))
    assert_matplotlib_png(filters_figure(filters, tmp_path / "filters", explained=[0.1] * 28))
    assert "PC 28 (10%)" in svg_texts(tmp_path / "filters.svg")
    images = [np.random.default_rng(i).integers(0, 255, (1, 28, 28), dtype=np.uint8) for i in range(3)]
    assert_matplotlib_png(rollout_figure(images, [np.random.rand(7, 7) for _ in images], tmp_path / "rollout"))
    with pytest.raises(Exception, match="as many heat maps"):
        rollout_figure(images, [np.random.rand(7, 7)], tmp_path / "bad")


def test_confusion_figure_from_confusion_json(tmp_path) -> None:
    path = tmp_path / "confusion.json"
    path.write_text(json.dumps({"classes": ["cat", "dog", "owl"], "matrix": [[5, 1, 0], [2, 7, 0], [0, 0, 9]]}))
    classes, matrix = read_confusion(path)
    assert_matplotlib_png(confusion_figure(classes, matrix, tmp_path / "confusion"))
    texts = svg_texts(tmp_path / "confusion.svg")
    assert "Predicted class" in texts and "True class" in texts and "7" in texts
    assert any("top-1 accuracy 87.50%" in t for t in texts)  # 21 of 24 on the diagonal
    path.write_text(json.dumps({"classes": ["a"], "matrix": [[1, 2]]}))
    with pytest.raises(DataError, match="confusion.json"):
        read_confusion(path)


def test_no_pillow_drawing_code_in_src() -> None:
    """Figures are matplotlib's; Pillow only reads and writes images."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"\bImageDraw\b|\bImageFont\b|\.paste\(|Image\.blend\(", text):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_figures_go_to_tensorboard_when_the_run_has_it(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    png = training_curves(metrics_rows(), tmp_path / "curves")
    assert not log_figures(tmp_path / "tensorboard", {"curves": png})  # no tensorboard/: the run did not use it
    (tmp_path / "tensorboard").mkdir()
    assert log_figures(tmp_path / "tensorboard", {"curves": png}, step=40)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (image,) = events.Images("figures/curves")
    assert image.step == 40 and image.encoded_image_string == png.read_bytes()


def test_detect_kind_and_report_cli_on_a_wrong_directory(tmp_path, capsys) -> None:
    from vitlab.cli import main

    for name, kind in (("demo.json", "demo"), ("study.yaml", "study"), ("inspect.json", "inspection"),
                       ("metrics.jsonl", "run")):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / name).write_text("{}")
        assert detect_kind(tmp_path / kind) == kind
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a vitlab run, study, inspection or demo"):
        build_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing: no such directory" in err


def test_run_report_headline_holds_summary_numbers(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    summary = {"task": "pretrain", "model": "vit_ti4", "dataset": "synthetic", "steps": 40, "wall_seconds": 12.5,
               "images_per_second": 204.8, "metrics": {"test_accuracy": 0.8125, "test_loss": 0.61}}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text("train:\n  batch_size: 64\n  steps: 40\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics_rows()))
    (run / "confusion.json").write_text(json.dumps({"classes": ["a", "b"], "matrix": [[3, 1], [0, 4]]}))
    html = build_report(run).read_text()
    assert 'data-key="metrics.test_accuracy" data-value="0.8125"' in html
    assert 'data-key="images_per_second" data-value="204.8"' in html
    assert html.count("data:image/png;base64,") == 2  # training curves + confusion matrix, embedded
    assert "batch_size: 64" in html  # the resolved config
    assert not re.search(r"(src|href)=\"https?://", html)  # nothing fetched from the network
    for png in (run / "figures").glob("*.png"):
        assert_matplotlib_png(png)
