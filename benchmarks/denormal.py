"""Denormal floats late in training: one census run per model with and without
``train.flush_denormal``, examples/s epoch by epoch.

A fresh model has no denormal values, so a benchmark of early steps (``models.py``)
cannot see this. With Adam and the census protocol's L2 weight decay, weights whose
gradient stays 0 decay into the denormal range (below 1.2e-38) during training, and
every product that reads them runs in the CPU's slow microcode path. Each model
trains the paper's census protocol (``configs/census/<model>.yaml``: Adam lr 1e-4,
weight decay 0.01, batch 512) for ``--epochs`` epochs twice in this process, flush
off and on (in turns per model), and the table gives the training examples/s of
each epoch from the second on (the first includes the run's setup), the run's training
examples/s and wall time, the share of denormal
values among the final parameters of the run without flushing, and the test AUCs of
both runs (they differ only where values below 1.2e-38 were flushed).

    ADATT_DATA_DIR=/path/to/census python benchmarks/denormal.py \
        [--models adatt_sp,adatt] [--epochs 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from host import describe

ROOT = Path(__file__).resolve().parent.parent


def denormal_share(state: dict[str, torch.Tensor]) -> float:
    """Fraction of the float values of ``state`` that are denormal."""
    tiny = torch.finfo(torch.float32).tiny
    n = d = 0
    for t in state.values():
        if t.is_floating_point():
            n += t.numel()
            d += int(((t != 0) & (t.abs() < tiny)).sum())
    return d / max(n, 1)


def one_run(model: str, flush: bool, epochs: int, threads: int, out: Path) -> dict:
    from adatt.config import load_config
    from adatt.train.trainer import train

    cfg = load_config(ROOT / "configs" / "census" / f"{model}.yaml", [
        f"train.epochs={epochs}", f"train.flush_denormal={str(flush).lower()}",
        f"runtime.threads={threads}", "runtime.progress=false", f"out_dir={out}",
        f"name={model}_{'on' if flush else 'off'}"])
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    res = train(cfg, overwrite=True,
                on_eval=lambda rec: marks.append((time.perf_counter(), rec["examples"])))
    wall = time.perf_counter() - start
    # per epoch: examples over the time between evaluations (an evaluation's own time
    # is in the next interval; it is the same in both runs)
    rates, t0, e0 = [], start, 0
    for t, e in marks:
        rates.append((e - e0) / (t - t0))
        t0, e0 = t, e
    state = torch.load(out / cfg.name / "checkpoint.pt", weights_only=False)["model"]
    return {"rates": rates, "wall": wall, "denormal": denormal_share(state),
            "train": res["train_examples_per_s"],
            "auc": {k: v["auc"] for k, v in res["test"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="adatt_sp,adatt")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if not os.environ.get("ADATT_DATA_DIR"):
        sys.exit("error: set ADATT_DATA_DIR to the census folder (see configs/census)")
    if args.epochs < 1:
        sys.exit("error: --epochs must be >= 1")
    torch.set_num_threads(args.threads)
    print(describe())
    print(f"census protocol, {args.epochs} epochs, batch 512, {args.threads} threads; "
          "flush off -> on\n")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            off = one_run(model, False, args.epochs, args.threads, Path(tmp))
            on = one_run(model, True, args.epochs, args.threads, Path(tmp))
            print(f"{model}: training {off['train']:,.0f} -> {on['train']:,.0f} examples/s "
                  f"({on['train'] / off['train']:.2f}x), wall {off['wall']:.1f} s -> "
                  f"{on['wall']:.1f} s; denormal share of the final "
                  f"parameters without flushing {100 * off['denormal']:.2f}% "
                  f"(with: {100 * on['denormal']:.2f}%)")
            print(f"{'epoch':>5} {'off ex/s':>10} {'on ex/s':>10} {'on/off':>7}")
            for i, (a, b) in enumerate(zip(off["rates"], on["rates"], strict=True), 1):
                if i > 1:  # the first interval holds the run's setup
                    print(f"{i:>5} {a:>10,.0f} {b:>10,.0f} {b / a:>6.2f}x")
            aucs = ", ".join(f"{k} {off['auc'][k]:.5f} / {on['auc'][k]:.5f}" for k in off["auc"])
            print(f"test AUC off / on: {aucs}\n")


if __name__ == "__main__":
    main()
