"""OutputGuard: --out is checked up front; a failed start leaves the folder as it was, results are never removed."""
from __future__ import annotations

import pytest

from vitlab import outdir
from vitlab.errors import ConfigError, DataError
from vitlab.outdir import OutputGuard


def test_a_failed_start_removes_only_what_it_made(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    with pytest.raises(DataError):
        with OutputGuard(out):
            (out / "config.yaml").write_text("x")
            (out / "sweep" / "lr=0.1").mkdir(parents=True)
            raise DataError("bad data")
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt"]


def test_a_new_out_is_removed_entirely_and_a_bug_is_not_cleaned(tmp_path) -> None:
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(ConfigError):
        with OutputGuard(out):
            (out / "config.yaml").write_text("x")
            raise ConfigError("bad key")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ZeroDivisionError):  # not bad input: left for the traceback's reader to look at
        with OutputGuard(out):
            (out / "config.yaml").write_text("x")
            raise ZeroDivisionError
    assert (out / "config.yaml").exists()


def test_weights_written_before_the_failure_are_kept(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(DataError):
        with OutputGuard(out):
            (out / "checkpoints").mkdir(parents=True)
            (out / "checkpoints" / "last.safetensors").write_bytes(b"w")
            raise DataError("a bad image at step 900")
    assert (out / "checkpoints" / "last.safetensors").exists()


def test_the_folder_of_an_output_file_is_not_walked(tmp_path, monkeypatch) -> None:
    def walk(root):
        raise AssertionError("an existing folder of an output file must not be walked")

    monkeypatch.setattr(outdir, "_listing", walk)
    (tmp_path / "big").mkdir()
    with pytest.raises(DataError):
        with OutputGuard(tmp_path / "big", track_files=False):
            raise DataError("x")
    with pytest.raises(DataError):
        with OutputGuard(tmp_path / "new" / "dir", track_files=False):
            raise DataError("x")
    assert not (tmp_path / "new").exists()


def test_an_uncreatable_out_is_one_config_error(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the directory"):
        with OutputGuard(tmp_path / "file" / "run"):
            pass
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        with OutputGuard(tmp_path / "file"):
            pass


def test_every_command_whose_output_is_a_file_is_listed() -> None:
    """A file --out guarded as a folder would be created as a directory: the CLI must know which are files."""
    from vitlab import cli

    for name in cli.COMMANDS:
        parser = cli._parser_for(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        for action in sub._actions:
            if action.dest not in ("out", "dest"):
                continue
            words = f"{action.metavar or ''} {action.help or ''}".lower()
            is_file = "file" in words and not any(w in words for w in ("folder", "directory", " dir"))
            assert is_file == (cli.OUTPUT_FILES.get(name) == action.dest), (name, action.dest, words)
