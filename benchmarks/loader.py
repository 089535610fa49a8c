"""Images per second of the input pipelines alone (no model): Fashion-MNIST in memory, and an image folder.

    python benchmarks/loader.py [--batches 40] [--out benchmarks/results/loader.json]

In-memory sets (Fashion-MNIST 28 px -> 32 px) are augmented on whole batches of tensors; the figure is
how many images per second one process turns into training batches, with augmentation ``none``, the
paper's ``paper`` (inception crop + flip) and the AugReg level ``light2`` (+ RandAugment(2, 10), mixup).
"stall" is the share of time a consumer that spends ``--step-ms`` (several values) per batch waits for the next one
(worker processes, 4 batches ahead each): 0 means the training loop never waits; inline, the wait is the making.
"cpu_training" is the consumer that matters on a CPU: the ``fmnist-vit-tiny`` preset's model trained (forward,
backward, AdamW) on the stream's batches of 64, with the batches made inline (``num_workers=0``, the default) and
by ``--workers`` persistent DataLoader worker processes (1 torch thread each), and the milliseconds that making one
such batch inline takes. ``--only cpu_training`` runs that part alone.

The image-folder pipeline decodes JPEGs (160x120, written to a temporary folder first) with inception
crop + flip to 96 px, in-process and with worker processes. Results go to stdout and a JSON file.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitlab.data import build_stream, get_source


def images_per_second(stream, batches: int, warmup: int = 3) -> float:
    it = iter(stream)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    count = 0
    for x, _ in itertools.islice(it, batches):
        count += len(x)
    return count / (time.perf_counter() - start)


def stall_fraction(stream, batches: int, step_s: float) -> float:
    """Share of wall time spent waiting for batches when each step takes ``step_s`` (sleep = GPU busy)."""
    it = iter(stream)
    next(it)
    waited = 0.0
    start = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        waited += time.perf_counter() - t
        time.sleep(step_s)
    return waited / (time.perf_counter() - start)


def training_images_per_second(stream, steps: int, warmup: int = 5) -> float:
    """Images/s of the ``fmnist-vit-tiny`` preset's model trained on ``stream`` (fwd + bwd + AdamW, fp32)."""
    import vitlab
    from vitlab.config import load_config

    cfg = load_config("fmnist-vit-tiny")
    model = vitlab.create_model(cfg.model.name, num_classes=10, img_size=cfg.data.img_size, in_chans=1,
                                **cfg.model.overrides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter(stream)
    count, start = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start, count = time.perf_counter(), 0
        images, labels = next(it)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += len(images)
    return count / (time.perf_counter() - start)


def make_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class_{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((160, 120), Image.BICUBIC)  # smooth, photo-like content
        image.save(cls / f"{i:05d}.jpg", "JPEG", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--step-ms", type=float, nargs="+", default=[20.0, 100.0],
                        help="consumer step times for the stall measurement")
    parser.add_argument("--train-steps", type=int, default=60, help="steps of the CPU-training consumer")
    parser.add_argument("--folder-images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["cpu_training"], help="run one part only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = parser.parse_args()

    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(), "torch": torch.__version__},
        "batch_size": args.batch_size, "fashion_mnist": {}, "image_folder": {},
    }
    start = time.perf_counter()
    fmnist = get_source("fashion_mnist", split="train")
    results["fashion_mnist"]["load_seconds"] = round(time.perf_counter() - start, 3)
    print(f"Fashion-MNIST train loaded in {results['fashion_mnist']['load_seconds']:.2f} s")
    default_threads = torch.get_num_threads()
    for threads in [] if args.only else sorted({default_threads, 1}, reverse=True):
        # Small-tensor kernels on a busy machine: more intra-op threads can be slower, so both are shown.
        torch.set_num_threads(threads)
        table = results["fashion_mnist"][f"torch_threads_{threads}"] = {}
        for augment in ("none", "paper", "light2"):
            common = dict(batch_size=args.batch_size, train=True, img_size=32, in_chans=3, augment=augment, seed=0)
            rate = images_per_second(build_stream(fmnist, **common), args.batches)
            table[augment] = {"images_per_second": round(rate)}
            print(f"fashion_mnist 28->32 augment={augment:7s} torch threads {threads}: {rate:8.0f} images/s inline")
    torch.set_num_threads(default_threads)
    table = results["fashion_mnist"]["cpu_training"] = {}
    for augment in ("none", "paper", "light2"):
        common = dict(batch_size=64, train=True, img_size=32, in_chans=1, augment=augment, seed=0)
        row = {"inline": round(training_images_per_second(build_stream(fmnist, **common), args.train_steps)),
               f"workers_{args.workers}": round(training_images_per_second(
                   build_stream(fmnist, num_workers=args.workers, **common), args.train_steps))}
        row["make_ms_per_batch"] = round(64e3 / images_per_second(build_stream(fmnist, **common), args.batches), 2)
        table[augment] = row
        print(f"fashion_mnist 28->32 augment={augment:7s} CPU training images/s: inline {row['inline']}, "
              f"{args.workers} workers {row[f'workers_{args.workers}']}; making a batch of 64 inline: "
              f"{row['make_ms_per_batch']} ms")
    if args.only == "cpu_training":
        return _write(results, args.out)
    table = results["fashion_mnist"][f"workers_{args.workers}"] = {}
    for augment in ("none", "paper", "light2"):  # worker processes (1 torch thread each) make whole batches
        common = dict(batch_size=args.batch_size, train=True, img_size=32, in_chans=3, augment=augment, seed=0,
                      num_workers=args.workers, prefetch=4)
        rate = images_per_second(build_stream(fmnist, **common), args.batches)
        stalls = {ms: stall_fraction(build_stream(fmnist, **common), args.batches, ms / 1000) for ms in args.step_ms}
        table[augment] = {"images_per_second": round(rate),
                          "stall_fraction_by_step_ms": {str(ms): round(v, 4) for ms, v in stalls.items()}}
        print(f"fashion_mnist 28->32 augment={augment:7s} {args.workers} workers:       {rate:8.0f} images/s   "
              f"stall " + ", ".join(f"{100 * v:.1f}% at {ms:.0f} ms/step" for ms, v in stalls.items()))

    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.folder_images)
        folder = get_source("image_folder", root=tmp, verify="none")
        bs = 64
        batches = max(1, min(args.batches, args.folder_images // bs - 4))
        for workers in (0, args.workers):
            stream = build_stream(folder, batch_size=bs, train=True, img_size=96, augment="paper", seed=0,
                                  num_workers=workers)
            rate = images_per_second(stream, batches)
            results["image_folder"][f"workers_{workers}"] = {"images_per_second": round(rate), "img_size": 96,
                                                             "source": "160x120 JPEG", "augment": "paper"}
            print(f"image_folder 160x120 JPEG -> 96 paper, workers={workers}: {rate:8.0f} images/s")
    _write(results, args.out)


def _write(results: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
