"""Cache-line padding on this host: the padded products against the plain ones, in a training step.

Notation: B batch, T tasks.

:func:`adatt.modules.kernels.align_pad` can pad a large product whose output
rows are not whole 64-byte cache lines (the industrial first layer: 1554
columns) with zero weight columns; by default (``"auto"``) it does so on hosts
below AVX-512. This benchmark measures what that choice is worth in the place it
matters, a whole training step: per model, two ``TrainStep``s built from the
same seed, one run under ``padding_mode("on")`` (pad wherever the size
qualifies), one under ``padding_mode("off")``, take turns in one process (6
steps per turn, 8 batches of synthetic industrial-shaped data, fused Adam as
``adatt train`` builds it). Printed: each side's median step time, the median of
the per-turn ratios "on ÷ off" (below 1: padding pays on this host), and the
padding "auto" picks here for the input layer (0: none).

Sizes are ``models.py``'s industrial size (512 dense inputs, 3 tasks, 2 levels of
6 experts (256, 128), towers 64, batch 1024); at census size no product is large
enough to be padded. Cross-stitch and Shared-bottom have no padded product there
either.

Usage::

    python benchmarks/padding.py --threads 2 [--bf16] [--models adatt_sp,mmoe] [--turns 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models as bench  # noqa: E402
from host import describe  # noqa: E402

MODELS = "adatt_sp,adatt,ple,mmoe,ml_mmoe"
STEPS_PER_TURN = 6
N_BATCHES = 8


def paired(name: str, turns: int, bf16: bool) -> dict:
    """Time ``name``'s step with the padding forced on and off, in turns."""
    from adatt.config import TrainConfig
    from adatt.data.batch import Batch
    from adatt.modules.kernels import align_pad, padding_mode
    from adatt.train.compiled import TrainStep
    from adatt.train.distributed import shard
    from adatt.train.losses import TaskLoss
    from adatt.train.optim import make_optimizer

    size, T = bench.SIZES["industrial"], bench.T
    B = size["batch"]
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(N_BATCHES, B, size["dense"], generator=g)  # [n, B, Dd]
    labels = (torch.rand(N_BATCHES, B, T, generator=g) < 0.3).float()  # [n, B, T]
    no_cat = torch.zeros(B, 0, dtype=torch.long)
    batches = [Batch(dense[i], no_cat, labels[i]) for i in range(N_BATCHES)]
    whole = shard(torch.arange(B))
    sides = {}
    for mode in ("on", "off"):
        torch.manual_seed(0)
        model = bench.make_ours(name, size)
        opt = make_optimizer(model.parameters(), TrainConfig(optimizer={"lr": 1e-4}), False)
        sides[mode] = (model, opt, TrainStep(model, TaskLoss(["binary"] * T), opt,
                                             compiled=False, bf16=bf16))

    def steps(mode: str) -> float:
        _, opt, ts = sides[mode]
        t0 = time.perf_counter()
        with padding_mode(mode):
            for i in range(STEPS_PER_TURN):
                losses = ts.losses(batches[i % N_BATCHES], whole)  # [T]
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                ts.step()
        return (time.perf_counter() - t0) / STEPS_PER_TURN

    for mode in sides:  # warm-up
        steps(mode)
    model = sides["off"][0]
    with padding_mode("auto"), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        chosen = align_pad(size["dense"], model.input.out_features, dense[0])
    times: dict[str, list[float]] = {mode: [] for mode in sides}
    for _ in range(turns):
        for mode in sides:
            times[mode].append(steps(mode))
    ratios = [a / b for a, b in zip(times["on"], times["off"], strict=True)]  # per turn
    return dict(model=name, chosen=chosen, on=statistics.median(times["on"]),
                off=statistics.median(times["off"]), ratio=statistics.median(ratios))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--turns", type=int, default=16)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (AMX / AVX-512-BF16 hosts)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from adatt.train.memory import keep_freed_memory

    keep_freed_memory()  # as `adatt train` does
    print(describe())
    print(f"industrial size, {'bf16 autocast' if args.bf16 else 'fp32'}, {args.turns} turns "
          f"of {STEPS_PER_TURN} steps, medians")
    print(f"{'model':14s} {'auto pads':>10s} {'on ms':>8s} {'off ms':>8s} {'on / off':>10s}")
    for name in args.models.split(","):
        r = paired(name, args.turns, args.bf16)
        print(f"{r['model']:14s} {r['chosen']:>10d} {r['on'] * 1e3:8.2f} {r['off'] * 1e3:8.2f} "
              f"{r['ratio']:9.3f}x", flush=True)


if __name__ == "__main__":
    main()
