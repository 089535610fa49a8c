"""Library log noise (timm's "Loaded from checkpoint", transformers' progress bars, deprecation warnings) never
reaches the user: a command's stderr holds vitlab's own lines only; -v shows the libraries again."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from train_helpers import subprocess_env


def _vitlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, timeout=300,
                          env=subprocess_env())


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("peers")
    model = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "timm.safetensors"))
    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=128, image_size=32, patch_size=8, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(str(root / "hf"))
    return root


def test_convert_from_timm_and_hf_prints_no_library_chatter(peers, tmp_path) -> None:
    timm_run = _vitlab("convert", "--from", "timm", "--timm-name", "test_vit", str(peers / "timm.safetensors"),
                       str(tmp_path / "a.safetensors"))
    assert timm_run.returncode == 0, timm_run.stderr[-2000:]
    assert timm_run.stderr == "", timm_run.stderr  # timm's own loader logs "Loaded  from checkpoint ..." at INFO
    hf_run = _vitlab("convert", "--from", "hf", str(peers / "hf"), str(tmp_path / "b.safetensors"))
    assert hf_run.returncode == 0, hf_run.stderr[-2000:]
    assert hf_run.stderr == "", hf_run.stderr  # transformers draws a "Loading weights" progress bar


def test_library_deprecation_warnings_are_filtered(monkeypatch) -> None:
    from vitlab import cli

    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    cli.configure_output(verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        exec(compile("import warnings\nwarnings.warn('old api', FutureWarning)", "timm/models/x.py", "exec"),
             {"__name__": "timm.models.x"})
        exec(compile("import warnings\nwarnings.warn('check this', UserWarning)", "timm/models/x.py", "exec"),
             {"__name__": "timm.models.x"})
        exec(compile("import warnings\nwarnings.warn('ours', UserWarning)", "vitlab/x.py", "exec"),
             {"__name__": "vitlab.x"})
    assert [str(w.message) for w in caught] == ["ours"]
