"""`vitlab presets`: every packaged preset says what it reproduces and how long it takes; `meta:` is not config."""
from __future__ import annotations

import yaml

from vitlab.cli import main
from vitlab.config import list_presets, load_config, preset_text


def test_every_preset_describes_itself() -> None:
    for name in list_presets():
        meta = yaml.safe_load(preset_text(name)).get("meta")
        assert meta and meta.get("reproduces") and meta.get("expected_time"), name


def test_presets_table_lists_each_preset_with_model_length_and_time(capsys) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    row = next(line for line in out.splitlines() if line.startswith("jft-vit-h14 "))
    assert "vit_h14" in row and "14 epochs" in row and "Table 2" in row
    assert "9 min 7 s on 2 CPU cores" in out  # fmnist-vit-tiny's measured time, from its own meta


def test_presets_pattern_and_no_match(capsys) -> None:
    assert main(["presets", "jft-*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line and not line[0].isspace()]
    assert names[:-1] == [n for n in list_presets() if n.startswith("jft-")]
    assert main(["presets", "nothing-*"]) == 2


def test_meta_is_not_part_of_the_run_config(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("meta:\n  reproduces: my own table\nbase: fmnist-vit-ti4\ntrain:\n  steps: 500\n")
    cfg = load_config(path)
    assert cfg.train.steps == 500 and "meta" not in cfg.to_yaml()
    assert cfg == load_config("fmnist-vit-ti4", ["train.steps=500"])
