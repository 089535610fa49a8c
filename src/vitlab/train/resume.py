"""What may change between a run and its resumption, and how a saved data position maps to this session.

A resume must compute the same thing: every config key that changes the computation has to match the saved
``config.yaml``; the keys in :data:`RESUMABLE_CHANGES` (threads, logging and checkpoint intervals, workers,
device, micro batch) may differ. A different micro batch or world size renumbers the data position, which works
when the examples consumed so far fill whole micro-batches of the new size.
"""
from __future__ import annotations

from vitlab.config import RunConfig, load_config
from vitlab.errors import CheckpointError, ConfigError
from vitlab.train.checkpoint import CheckpointDir
from vitlab.train.rundir import RunDir

# Config keys that may differ between a run and its resumption (they do not change the computation).
RESUMABLE_CHANGES = {
    "train.num_threads", "train.log_every", "train.eval_every", "train.checkpoint_every", "data.num_workers",
    "data.eval_batch_size", "train.device", "distributed.backend", "distributed.timeout_minutes", "train.micro_batch_size",
}


def check_run_dir(run_dir: RunDir, ckpt: CheckpointDir, cfg: RunConfig, resume: bool) -> None:
    """Refuse to overwrite a run silently, and to resume one with a config that computes something else."""
    if ckpt.exists() and not resume:
        raise ConfigError(
            f"--out {run_dir.root} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume and run_dir.config.exists():
        saved = load_config(run_dir.config)
        blocking = [key for key in differences(saved.to_dict(), cfg.to_dict()) if key not in RESUMABLE_CHANGES]
        if blocking:
            raise ConfigError(
                f"--resume: the config differs from {run_dir.config} in {', '.join(blocking)}; "
                "resume with the same config (or omit --config to reuse the saved one)"
            )


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (option dicts and sweep grids compare as wholes)."""
    keys = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(left, dict) and isinstance(right, dict) and not dotted.endswith(("grid", "options")):
            keys += differences(left, right, dotted + ".")
        elif left != right:
            keys.append(dotted)
    return keys


def data_position(saved: dict, examples_now: int) -> dict:
    """The saved stream state, renumbered for ``examples_now`` examples per micro-step (all processes)."""
    state = dict(saved["data"])
    examples = saved.get("examples_per_batch", examples_now)
    if examples != examples_now:  # another micro batch / world size: same examples, other batch numbering
        if (state["batch"] * examples) % examples_now:
            raise CheckpointError(
                f"cannot resume step {saved['step']} with {examples_now} examples per micro-step (was {examples}): "
                "the data position does not fall on a batch boundary"
            )
        state["batch"] = state["batch"] * examples // examples_now
    return state
