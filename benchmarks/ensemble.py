"""Training throughput of S seeds trained together (``train_ensemble``) vs S separate runs.

Notation: S copies, B batch, T tasks, N input-layer width.

The census configuration: ``configs/census/adatt_sp.yaml``'s model (AdaTT-sp, 2
levels of 6 experts (128, 64), towers 32, one-hot categorical input), its
optimizer (Adam lr 1e-4, weight decay 0.01) and batch 512. Data: the real census
training split when ``ADATT_DATA_DIR`` is set (or ``--census DIR``), otherwise
synthetic census-shaped data (199,523 rows, 9 dense columns, 28 categorical
fields with census-like cardinalities, 3 binary tasks) -- the step cost depends
on the shapes only.

Every row is a worker process (its peak memory its own) that builds its step,
warms up and then times windows on request; the rows of one S (the ensemble
and one separate run) take turns, several times, as in ``benchmarks/models.py``
(:mod:`paired`), so a shared machine's drift lands on both sides:

* the ensemble step is :func:`adatt.train.ensemble.train_step` (per-copy
  gather ``[S,B,...]``, vectorised forward, loss summed over copies, one fused
  Adam step, schedule step), each copy reading its own permutation;
* a separate run's step is the trainer's step (``model(dense, cat)``,
  ``TaskLoss``, ``Equal.backward``, fused Adam, schedule).

Both call :func:`adatt.train.memory.keep_freed_memory` first, as ``adatt
train`` and ``train_ensemble`` do. Throughput is training examples per second
summed over copies, ``S * B / step time`` (median over turns, evaluation
excluded). "vs separate" is the paired ratio: per turn, S times the separate
run's step time over the ensemble's step time, the median over turns -- how
many times faster S seeds finish in one process than S runs one after the
other in one process each. Peak memory is the growth of the worker's max RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (CUDA) over the data already
loaded.

Here the S copies always train together; ``train_ensemble`` on CPU trains
large S in groups by default (:func:`adatt.train.ensemble.auto_chunk`).
``--malloc-no-mmap`` runs the workers with ``MALLOC_MMAP_MAX_=0`` (every block
from the heap, none faulted in afresh: the allocator's share at large S).

    python benchmarks/ensemble.py [--copies 1,5,10,20,50] [--steps 4] [--turns 5]
                                  [--device cpu|cuda] [--threads N] [--census DIR]
                                  [--malloc-no-mmap]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402
from paired import paired_ratio, run_group, serve, take_turns  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "census" / "adatt_sp.yaml"
# census-like cardinalities: 28 fields, ~470 one-hot columns (as benchmarks/models.py)
CENSUS_CARDS = [10, 53, 48, 8, 4, 25, 4, 8, 7, 7, 4, 4, 4, 8, 7, 52, 39, 9, 10, 10, 4, 6, 4,
                44, 44, 44, 6, 4]
CENSUS_ROWS, CENSUS_DENSE, CENSUS_TASKS = 199_523, 9, 3


def load_data(census_dir: str | None):
    """(splits, description): real census when a directory is given, else census-shaped."""
    from adatt.data.batch import TensorDataset
    from adatt.data.schema import FeatureSchema, TaskSpec
    from adatt.data.splits import Splits

    if census_dir:
        from adatt.data.census import load_census

        return load_census(census_dir, progress=False), f"census ({census_dir})"
    g = torch.Generator().manual_seed(0)
    n = CENSUS_ROWS
    dense = torch.rand(n, CENSUS_DENSE, generator=g)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CENSUS_CARDS], 1)
    labels = (torch.rand(n, CENSUS_TASKS, generator=g) < 0.2).float()
    ds = TensorDataset(dense, cat, labels)
    schema = FeatureSchema(
        tuple(f"d{i}" for i in range(CENSUS_DENSE)),
        tuple(f"c{i}" for i in range(len(CENSUS_CARDS))),
        tuple(CENSUS_CARDS),
        tuple(TaskSpec(f"task{i + 1}", "binary") for i in range(CENSUS_TASKS)),
    )
    return Splits("census-shaped", schema, ds, ds, ds, {}), "synthetic census-shaped"


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(kind: str, S: int, args: argparse.Namespace) -> None:
    """Worker: ``kind`` 'ensemble' (S copies) or 'single' (one separate run); timed on request."""
    from adatt.config import load_config
    from adatt.train.ensemble import EnsembleLoss, EnsembleModel, train_step
    from adatt.train.losses import TaskLoss
    from adatt.train.memory import keep_freed_memory
    from adatt.train.optim import make_optimizer, make_schedule
    from adatt.train.runs import build_model
    from adatt.train.seeding import seed_everything
    from adatt.train.weighting import create_weighting

    keep_freed_memory()  # as `adatt train` and train_ensemble do
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device)
    cfg = load_config(CONFIG, ["train.batch_size=512", f"runtime.device={args.device}"])
    tc = cfg.train
    splits, _ = load_data(args.census)
    data = splits.train
    if device.type != "cpu":
        from adatt.data.batch import TensorDataset

        data = TensorDataset(data.dense.to(device), data.cat.to(device),
                             data.labels.to(device),
                             None if data.weight is None else data.weight.to(device))
        torch.cuda.reset_peak_memory_stats()
    base_mem = torch.cuda.memory_allocated() if device.type == "cuda" else _rss_kb() * 1024
    n, B = len(data), tc.batch_size
    seeds = list(range(S))
    perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s))
                         for s in seeds]).to(device)  # [S,n]
    if kind == "ensemble":
        model = EnsembleModel.build(cfg.model, splits.schema, seeds, device)
        loss_fn = EnsembleLoss(splits.schema.task_kinds).to(device)
        opt = make_optimizer([{"params": model.parameters()}], tc)
        sched = make_schedule(opt, tc, 10**6)

        def step(i: int) -> None:
            j = i % (n // B)
            train_step(model, loss_fn, opt, sched, data, perms[:, j * B : (j + 1) * B], tc.bf16)
    else:
        seed_everything(0)
        single = build_model(cfg.model, splits.schema).to(device)
        task_loss = TaskLoss(splits.schema.task_kinds).to(device)
        weighting = create_weighting("equal", splits.schema.num_tasks).to(device)
        opt = make_optimizer([{"params": list(single.parameters())}], tc)
        sched = make_schedule(opt, tc, 10**6)
        shared = single.shared_parameters()

        def step(i: int) -> None:  # the trainer's step
            j = i % (n // B)
            batch = data.batch(perms[0, j * B : (j + 1) * B])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                logits = single(batch.dense, batch.cat)  # [B,T]
            losses = task_loss(logits.float(), batch.labels, batch.weight)  # [T]
            opt.zero_grad(set_to_none=True)
            weighting.backward(losses, shared)
            opt.step()
            sched.step()

    cpu = [0.0, 0]  # process CPU seconds and steps of the timed windows

    def synced(i: int) -> None:
        c0 = time.process_time()
        step(i)
        if device.type == "cuda" and (i + 1) % args.steps == 0:
            torch.cuda.synchronize()
        cpu[0], cpu[1] = cpu[0] + time.process_time() - c0, cpu[1] + 1

    warm = []
    for i in range(args.warmup):
        t0 = time.perf_counter()
        step(i)
        warm.append(time.perf_counter() - t0)

    def final() -> dict:
        peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                else _rss_kb() * 1024) - base_mem
        return dict(peak_mb=peak / 2**20, cpu_step_s=cpu[0] / max(cpu[1], 1))

    serve({"train": lambda i: synced(args.warmup + i)},
          dict(kind=kind, S=S, batch=B, step_s=statistics.median(warm[1:] or warm),
               threads=torch.get_num_threads()), final)


def measure(S: int, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """The ensemble of S copies and one separate run, in turns; one result row."""
    passthrough = ["--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    if args.census:
        passthrough += ["--census", args.census]
    cmds = {kind: [sys.executable, __file__, "--one", f"{kind}:{S if kind == 'ensemble' else 1}",
                   *passthrough] for kind in ("single", "ensemble")}

    def turns(workers) -> dict[str, dict]:
        times = dict(zip(workers, take_turns(list(workers.values()), "train", args.steps,
                                             args.turns), strict=True))
        ratio = S * paired_ratio(times["single"], times["ensemble"])
        return {k: dict(step_s=statistics.median(v), ratio=ratio) for k, v in times.items()}

    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the workers' environment (Popen inherits it)
    try:
        rows = run_group(cmds, turns)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--copies", default="1,5,10,20,50", help="comma-separated S values")
    p.add_argument("--steps", type=int, default=4, help="steps per timed window")
    p.add_argument("--turns", type=int, default=5, help="timed windows per row, taking turns")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--malloc-no-mmap", action="store_true",
                   help="run the workers with MALLOC_MMAP_MAX_=0 (glibc: large blocks "
                        "from the heap, reused instead of faulted in afresh)")
    p.add_argument("--census", default=os.environ.get("ADATT_DATA_DIR"),
                   help="census directory (default $ADATT_DATA_DIR; else synthetic data)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, s = args.one.split(":")
        worker(kind, int(s), args)
        return
    print(describe())
    data_desc = f"census ({args.census})" if args.census else "synthetic census-shaped"
    threads = args.threads or os.cpu_count()
    print(f"adatt_sp census config, batch 512, {data_desc} data, device {args.device}, "
          f"{threads} torch threads; {args.turns} turns of {args.steps}-step windows "
          f"after {args.warmup} warm-up steps, medians\n", flush=True)
    env = dict(os.environ)
    if args.malloc_no_mmap:  # every block from the heap, never returned: no page faults
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**40))
    header = (f"{'S':>4} {'ens ms/step':>12} {'ens ex/s':>10} {'sep ms/step':>12} "
              f"{'sep ex/s':>9} {'vs separate':>12} {'(CPU time)':>11} {'peak MB':>8}")
    print(header)
    print("-" * len(header), flush=True)
    for S in [int(x) for x in args.copies.split(",")]:
        rows = measure(S, args, env)
        ens, sep = rows["ensemble"], rows["single"]
        if "status" in ens or "status" in sep:
            print(f"{S:>4} {ens.get('status') or sep.get('status')}", flush=True)
            continue
        print(f"{S:>4} {ens['step_s'] * 1e3:>12.1f} {S * 512 / ens['step_s']:>10,.0f} "
              f"{sep['step_s'] * 1e3:>12.1f} {512 / sep['step_s']:>9,.0f} "
              f"{ens['ratio']:>11.2f}x {S * sep['cpu_step_s'] / ens['cpu_step_s']:>10.2f}x "
              f"{ens['peak_mb']:>8.0f}", flush=True)
    print("\nens ex/s: training examples/s summed over the S copies; sep: one separate run (the"
          " trainer's\nstep) timed in turns with it; vs separate: the paired ratio (median over"
          " turns of\nS x separate step time / ensemble step time); (CPU time): the same from the"
          " workers' CPU\nseconds per step, steadier when other processes share the cores. On CPU,"
          " train_ensemble\ntrains large S in groups (adatt.train.ensemble.auto_chunk) unless"
          " chunk= is given.")


if __name__ == "__main__":
    main()
