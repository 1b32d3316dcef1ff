"""Training throughput of S seeds trained together (``train_ensemble``) vs S separate runs.

Notation: S copies, B batch, T tasks, N input-layer width.

The census configuration: ``configs/census/adatt_sp.yaml``'s model (AdaTT-sp, 2
levels of 6 experts (128, 64), towers 32, one-hot categorical input), its
optimizer (Adam lr 1e-4, weight decay 0.01) and batch 512. Data: the real census
training split when ``ADATT_DATA_DIR`` is set (or ``--census DIR``), otherwise
synthetic census-shaped data (199,523 rows, 9 dense columns, 28 categorical
fields with census-like cardinalities, 3 binary tasks) -- the step cost depends
on the shapes only.

For each S, in its own subprocess (so peak memory is its own):

* the ensemble step is :func:`adatt.train.ensemble.train_step` (per-copy
  gather ``[S,B,...]``, vectorised forward, loss summed over copies, one fused
  Adam step, schedule step), each copy reading its own permutation;
* a separate run's step is the trainer's step (``model(dense, cat)``,
  ``TaskLoss``, ``Equal.backward``, fused Adam, schedule), measured once (S=1).

Throughput is training examples per second summed over copies, ``S * B /
step time``, with the step time the median over timed windows after warm-up
(evaluation excluded). "vs separate" is that throughput divided by one
separate run's: how many times faster S seeds finish than S runs one after
the other; "(CPU time)" is the same ratio from the process's CPU time (user +
system), steadier when other processes share the cores. Peak memory is the
growth of the process's max RSS (CPU) or ``torch.cuda.max_memory_allocated``
(CUDA) over the data already loaded.

Here S copies always train together; ``train_ensemble`` on CPU trains large
S in groups by default (:func:`adatt.train.ensemble.auto_chunk`), because
glibc serves blocks over 32 MiB with fresh pages on every allocation and the
page faults dominate at S = 100. ``--malloc-no-mmap`` shows the allocator's
share: it runs the measurements with ``MALLOC_MMAP_MAX_=0``.

    python benchmarks/ensemble.py [--copies 1,10,100] [--steps 10] [--windows 3]
                                  [--device cpu|cuda] [--threads N] [--census DIR]
                                  [--malloc-no-mmap]

On a CPU shared with other processes, ``--threads 1`` gives steadier numbers
(OpenMP threads that wait on busy cores inflate every small operation).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402

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


def run_one(kind: str, S: int, args: argparse.Namespace) -> dict:
    """Time ``kind`` ('ensemble' with S copies, or 'single': one separate run)."""
    from adatt.config import load_config
    from adatt.train.ensemble import EnsembleLoss, EnsembleModel, train_step
    from adatt.train.losses import TaskLoss
    from adatt.train.optim import make_optimizer, make_schedule
    from adatt.train.runs import build_model
    from adatt.train.seeding import seed_everything
    from adatt.train.weighting import create_weighting

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

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    windows = []
    cpu_windows = []
    for w in range(args.windows):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.steps):
            step(args.warmup + w * args.steps + i)
        sync()
        windows.append((time.perf_counter() - t0) / args.steps)
        cpu_windows.append((time.process_time() - c0) / args.steps)
    dt = statistics.median(windows)
    copies = S if kind == "ensemble" else 1
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        peak = _rss_kb() * 1024 - base_mem
    return dict(kind=kind, S=copies, step_s=dt, ex_per_s=copies * B / dt,
                cpu_step_s=statistics.median(cpu_windows), peak_mb=peak / 2**20,
                threads=torch.get_num_threads())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--copies", default="1,10,100", help="comma-separated S values")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows (median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--malloc-no-mmap", action="store_true",
                   help="run the measurements with MALLOC_MMAP_MAX_=0 (glibc: large blocks "
                        "from the heap, reused instead of faulted in afresh)")
    p.add_argument("--census", default=os.environ.get("ADATT_DATA_DIR"),
                   help="census directory (default $ADATT_DATA_DIR; else synthetic data)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, s = args.one.split(":")
        print(json.dumps(run_one(kind, int(s), args)))
        return
    print(describe())
    data_desc = f"census ({args.census})" if args.census else "synthetic census-shaped"
    threads = args.threads or os.cpu_count()
    print(f"adatt_sp census config, batch 512, {data_desc} data, device {args.device}, "
          f"{threads} CPU threads; median of {args.windows} windows x {args.steps} steps "
          f"after {args.warmup} warm-up steps\n", flush=True)
    passthrough = ["--steps", str(args.steps), "--windows", str(args.windows),
                   "--warmup", str(args.warmup), "--device", args.device]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    if args.census:
        passthrough += ["--census", args.census]

    env = dict(os.environ)
    if args.malloc_no_mmap:  # every block from the heap, never returned: no page faults
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**40))

    def sub(kind: str, S: int) -> dict:
        cmd = [sys.executable, __file__, "--one", f"{kind}:{S}", *passthrough]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{kind} S={S} failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    single = sub("single", 1)
    header = (f"{'S':>5} {'step ms':>9} {'ex/s (sum)':>11} {'ex/s/copy':>10} "
              f"{'vs separate':>12} {'(CPU time)':>11} {'peak MB':>8}")
    print(f"separate run (trainer step): {single['step_s'] * 1e3:.1f} ms/step "
          f"({single['cpu_step_s'] * 1e3:.1f} ms CPU time), {single['ex_per_s']:,.0f} ex/s, "
          f"peak +{single['peak_mb']:.0f} MB\n")
    print(header)
    print("-" * len(header), flush=True)
    for S in [int(x) for x in args.copies.split(",")]:
        r = sub("ensemble", S)
        cpu_ratio = S * single["cpu_step_s"] / r["cpu_step_s"]
        print(f"{S:>5} {r['step_s'] * 1e3:>9.1f} {r['ex_per_s']:>11,.0f} "
              f"{r['ex_per_s'] / S:>10,.0f} {r['ex_per_s'] / single['ex_per_s']:>11.2f}x "
              f"{cpu_ratio:>10.2f}x {r['peak_mb']:>8.0f}", flush=True)
    print("\nvs separate: ensemble ex/s over one separate run's ex/s (wall clock); (CPU time):"
          " the same from\nthe process's CPU time, steadier on a shared machine. On CPU,"
          " train_ensemble trains\nlarge S in groups (adatt.train.ensemble.auto_chunk: 10"
          " copies here) unless chunk= is given.")


if __name__ == "__main__":
    main()
