"""Make the figures and screenshots of docs/ from real (short) runs:

    python docs/make_figures.py [--work runs/docs-figures]      # or: make docs-figures

1. a shortened demo (the `cpu` demo's recipes, 300 pre-training steps, 60-step transfers, one learning rate each)
   -> WORK/demo/ with its report.html (every stage's report linked);
2. ``vitlab inspect`` on the demo's pre-training run directory -> WORK/inspect/;
3. a small data-size study (a ViT and a hybrid with the ResNet root, 3 pre-training set sizes) -> WORK/study/;
4. the confusion matrix of the fine-tuned model on the digits test split -> WORK/eval/;
then copies one PNG of each kind to docs/figures/ and saves screenshots of the demo report (Chromium, headless)
as docs/figures/demo-report.png. The figures in docs/ took about 45 minutes on 2 vCPUs shared with other jobs at a
load average near 18 (the shortened demo 33 minutes of it); an idle machine takes a fraction of that.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from vitlab import demo
from vitlab.cli import main as vitlab
from vitlab.data import build_stream, get_source
from vitlab.models.weights import load_model
from vitlab.report import build_report, confusion_figure
from vitlab.report.browser import browser_unavailable, check_page
from vitlab.studies.study import run_study, study_from_dict

DOCS = Path(__file__).resolve().parent / "figures"

DOCS_DEMO = demo.DemoSize(
    pretrain="demo-cpu",
    pretrain_overrides=("train.steps=300", "train.log_every=10", "train.eval_every=100"),
    finetune="demo-cpu-transfer",
    finetune_overrides=("train.steps=60", "train.log_every=5"),
    finetune_grid={"optim.lr": [0.1]},
    scratch_overrides=("optim.name=adam", "optim.weight_decay=0.05"),
    scratch_grid={"optim.lr": [0.003]},
    note="docs figures: the cpu demo's recipes, 300 pre-training steps, 60-step transfers",
)

STUDY = {
    "kind": "data_size",
    "base": "fmnist-vit-tiny",
    "overrides": ["train.steps=150", "optim.warmup_steps=15", "train.batch_size=64", "train.checkpoint_every=0",
                  "train.log_every=10", "data.eval_batch_size=1000"],
    "models": {"ViT": ["model.name=vit_ti4", "model.depth=2", "model.width=64", "model.mlp_dim=128",
                       "model.num_heads=2", "data.img_size=28"],
               "Hybrid (ResNet root)": ["model.depth=2", "model.width=64", "model.mlp_dim=128", "model.num_heads=2"]},
    "sizes": [500, 2000, 8000],
    "evaluation": {"dataset": "digits", "shots": [5], "seeds": [0, 1, 2], "test_limit": 500},
}


def confusion(run: Path, out: Path) -> Path:
    """The fine-tuned model's confusion matrix on the digits test split (rows true, columns predicted)."""
    model = load_model(run / "checkpoints" / "best.safetensors").eval()
    source = get_source("digits", "test")
    matrix = torch.zeros(len(source.classes), len(source.classes), dtype=torch.long)
    stream = build_stream(source, batch_size=256, train=False, img_size=model.config.img_size,
                          in_chans=model.config.in_chans, prefetch=0)
    with torch.no_grad():
        for images, labels in stream:
            predicted = model(images).argmax(dim=1)
            matrix += torch.bincount(labels * len(source.classes) + predicted,
                                     minlength=len(source.classes) ** 2).reshape(matrix.shape)
    out.mkdir(parents=True, exist_ok=True)
    (out / "confusion.json").write_text(json.dumps({"classes": list(source.classes), "matrix": matrix.tolist()}))
    return confusion_figure(list(source.classes), matrix.numpy(), out / "confusion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/docs-figures", help="where the runs go")
    args = parser.parse_args()
    work = Path(args.work)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    demo.SIZES["docs"] = DOCS_DEMO
    demo.run_demo(work / "demo", "docs")
    start = time.perf_counter()
    build_report(work / "demo")
    print(f"demo report rebuilt in {time.perf_counter() - start:.1f} s")
    assert vitlab(["inspect", "--checkpoint", str(work / "demo" / "pretrain"), "--dataset", "fashion_mnist",
                   "--out", str(work / "inspect")]) == 0
    run_study(study_from_dict(STUDY), work / "study")
    confusion(work / "demo" / "finetune", work / "eval")
    DOCS.mkdir(exist_ok=True)
    copies = {
        work / "demo" / "pretrain" / "figures" / "training_curves.png": "training_curves.png",
        work / "study" / "study.png": "study.png",
        work / "demo" / "figures" / "fewshot.png": "fewshot.png",
        work / "eval" / "confusion.png": "confusion.png",
        **{work / "inspect" / f"{name}.png": f"{name}.png" for name in
           ("attention_rollout", "attention_distance", "position_similarity", "embedding_filters")},
    }
    for source, name in copies.items():
        shutil.copyfile(source, DOCS / name)
        print(f"docs/figures/{name} <- {source}")
    reason = browser_unavailable()
    if reason:
        print(f"no screenshots: {reason}")
        return
    check = check_page(work / "demo" / "report.html", DOCS / "demo-report.png", full_page=False)
    print(f"docs/figures/demo-report.png: {check.images} images, console errors {check.console_errors}")


if __name__ == "__main__":
    main()
