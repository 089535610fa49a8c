"""The training step reads nothing back to the host: on a GPU such a read stalls the queue of kernels.

Runnable without a GPU: every way a tensor reaches Python (``item``, ``tolist``, ``float()``, ``int()``,
``bool()``, ``.cpu()``, ``.numpy()``) is counted while the engine trains; between two log steps there must
be none. The objective counts its calls, so a read is placed in the step it happened in.
"""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import tiny_config

from vitlab.train import run_training
from vitlab.train.mpp import MaskedPatchPrediction
from vitlab.train.objectives import Supervised

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


class _Counting:
    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, model, images, targets):
        self.calls += 1
        return self.inner(model, images, targets)


@pytest.mark.parametrize("objective", ["classify", "mpp"])
def test_no_host_read_between_log_steps(tmp_path, monkeypatch, objective):
    steps, accumulation = 6, 2
    counting = _Counting(Supervised() if objective == "classify" else MaskedPatchPrediction())
    reads: list[tuple[str, int, str]] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append((_name, counting.calls, "".join(traceback.format_stack(limit=6)[:-1])))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    cfg = tiny_config(
        data={"augment": "light2", "test_split": None},
        train={"steps": steps, "log_every": steps, "checkpoint_every": 0, "eval_every": 0, "ema_decay": 0.9,
               "micro_batch_size": 8, "objective": objective},
    )
    run_training(cfg, tmp_path, objective=counting, evaluate_test=False)
    assert counting.calls == steps * accumulation
    # From the first forward pass to the last one (the log read comes after it), nothing reached the host.
    inside = [r for r in reads if 1 <= r[1] < steps * accumulation]
    assert not inside, f"{len(inside)} host reads inside training steps, first: {inside[0][0]}\n{inside[0][2]}"
    assert any(r[1] == steps * accumulation for r in reads), "the log step reads the meter once"


def _shape_depends_on_data(func, args) -> bool:
    """Ops a GPU can only run by reading a result back first: their output shape (or a Python value) comes from
    the data. Boolean-mask indexing (``x[mask]``) reaches the dispatcher as ``aten.index`` with a bool index."""
    name = func.overloadpacket.__name__
    if name in ("nonzero", "masked_select", "_local_scalar_dense", "unique", "_unique", "_unique2",
                "unique_consecutive", "unique_dim", "equal", "is_nonzero", "repeat_interleave"):
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
    return False


class _DataDependentShapes(TorchDispatchMode):
    """Notes every data-dependent op that runs under it, with the value of ``where()`` at that moment."""

    def __init__(self, where=lambda: 0) -> None:
        super().__init__()
        self.where, self.found = where, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _shape_depends_on_data(func, args):
            self.found.append((func.overloadpacket.__name__, self.where()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("objective", ["classify", "mpp"])
def test_no_data_dependent_shape_inside_training_steps(tmp_path, objective):
    """Catches the host syncs that never reach Python: a ``nonzero`` inside a kernel (boolean-mask indexing) stalls
    a GPU as surely as ``.item()``. Every aten op of the run, backward included, passes through the mode."""
    steps = 4
    counting = _Counting(Supervised() if objective == "classify" else MaskedPatchPrediction())
    cfg = tiny_config(
        data={"test_split": None},
        train={"steps": steps, "log_every": steps, "checkpoint_every": 0, "eval_every": 0, "objective": objective},
    )
    with _DataDependentShapes(lambda: counting.calls) as detector:
        run_training(cfg, tmp_path, objective=counting, evaluate_test=False)
    assert counting.calls == steps
    inside = [f for f in detector.found if 1 <= f[1] < steps]
    assert not inside, f"data-dependent shapes inside training steps: {sorted(set(inside))}"


def test_data_dependent_shape_detector_sees_boolean_mask_indexing():
    """The detector above must be able to fail: the selection masked patch prediction used to make is caught."""
    tokens, mask = torch.randn(2, 5, 3), torch.rand(2, 5) < 0.5
    with _DataDependentShapes() as detector:
        torch.where(mask[..., None], tokens, 0.0).sum()
    assert detector.found == []
    with _DataDependentShapes() as detector:
        tokens[mask].sum()
    assert [name for name, _ in detector.found] == ["index"]
