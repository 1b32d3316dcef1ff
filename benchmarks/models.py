"""Training throughput of every model at the census and industrial sizes.

Prints, per model and size: training examples/s, peak memory, and achieved
GFLOP/s next to this machine's measured fp32 matrix-multiply peak. With
``--reference PATH`` (the authors' ``mtl_lib.py`` from facebookresearch/AdaTT,
fetched by you, never committed) the same models built from the reference
``CentralTaskArch`` are measured side by side in the same run, fed one-hot
columns as in the reference's census setup.

    python benchmarks/models.py [--reference mtl_lib.py] [--models adatt_sp,ple] [--bf16]
                                [--compile] [--threads 2] [--rounds 3]

Rows: ``ours`` (eager), ``ours+bf16`` (``--bf16``: bf16 autocast, only where
the host has AVX-512-BF16 or AMX, or with ``--bf16=force``), ``ours+compile``
and ``ours+bf16+compile`` (``--compile``: the training step of
:class:`adatt.train.compiled.TrainStep`, forward + loss + backward and the
optimizer step through ``torch.compile``; the compile time is printed per
row, and its break-even step count against the eager row), ``reference``.

Sizes:
  census      28 categorical fields (~470 one-hot columns) + 9 dense, 3 tasks,
              2 levels of 6 experts (128, 64), towers 32, batch 512
  industrial  512-wide dense input, 3 tasks, 2 levels of 6 experts (256, 128),
              towers 64, batch 1024

Each (implementation, model, size) runs in its own worker process, so peak
memory (max RSS growth) is its own. The rows of one (model, size) take turns
(``benchmarks/paired.py``): after warm-up each worker times one window of
steps in turn (at least 0.4 s of them), for 5 turns per round, the first
worker rotating. Examples/s is the median window, and ``vs ref`` the median
over turns of the two windows' ratio, so the drift of a shared machine
cancels instead of landing on one side. Threads: all cores of this machine;
one worker runs at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402
from paired import Worker, paired_ratio, run_group, serve, take_turns  # noqa: E402,I001

# census-like cardinalities: 28 fields, ~470 one-hot columns once index 0 is added
CENSUS_CARDS = [10, 53, 48, 8, 4, 25, 4, 8, 7, 7, 4, 4, 4, 8, 7, 52, 39, 9, 10, 10, 4, 6, 4,
                44, 44, 44, 6, 4]
SIZES = {
    "census": dict(dense=9, cards=CENSUS_CARDS, experts=[128, 64], tower=32, batch=512),
    "industrial": dict(dense=512, cards=[], experts=[256, 128], tower=64, batch=1024),
}
T, EXPERTS = 3, 6
MODELS = ["adatt_sp", "adatt", "ple", "mmoe", "ml_mmoe", "cross_stitch", "shared_bottom"]
REF_NAME = {"adatt_sp": "att_sp", "adatt": "att_g", "ple": "ple", "mmoe": "mmoe",
            "ml_mmoe": "mmoe", "cross_stitch": "cross_st", "shared_bottom": "share_bottom"}


def our_kwargs(name: str, size: dict) -> dict:
    e = size["experts"]
    kw = dict(num_tasks=T, dense_dim=size["dense"], cat_cardinalities=size["cards"],
              tower_sizes=[size["tower"]])
    if name == "adatt_sp":
        kw.update(expert_sizes=e, experts_per_task=EXPERTS // T)
    elif name in ("adatt", "ple"):
        kw.update(expert_sizes=e, experts_per_task=1, shared_experts=EXPERTS - T)
    elif name == "mmoe":
        kw.update(expert_sizes=[e], num_experts=EXPERTS)
    elif name == "ml_mmoe":
        kw.update(expert_sizes=e, num_experts=EXPERTS)
    else:
        kw.update(expert_sizes=e)
    return kw


def make_ours(name: str, size: dict):
    from adatt.models import create_model

    return create_model(name, **our_kwargs(name, size))


def make_reference(path: str, name: str, size: dict):
    spec = importlib.util.spec_from_file_location("mtl_lib", path)
    lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lib)
    e = size["experts"]
    ref = REF_NAME[name]
    if name == "mmoe":
        dims = [e]
    else:
        dims = [[d] for d in e]
    cfg = lib.MtlConfigs(
        mtl_model=ref,
        num_task_experts=EXPERTS // T if name == "adatt_sp" else 1,
        num_shared_experts=EXPERTS if name in ("mmoe", "ml_mmoe") else EXPERTS - T,
        expert_out_dims=dims,
    )
    opts = lib.ArchInputs(num_task=T, task_mlp=[size["tower"]], mtl_configs=cfg)
    in_dim = size["dense"] + sum(size["cards"])
    return lib.CentralTaskArch(cfg, opts, in_dim)


def run_one(impl: str, name: str, size_name: str, ref_path: str | None, bf16: bool,
            compiled: bool = False, threads: int | None = None) -> None:
    """Worker: build one row, warm up, then time windows on request (:func:`paired.serve`)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    size = SIZES[size_name]
    B, Dd, cards = size["batch"], size["dense"], size["cards"]
    _reset_peak_rss()
    rss0 = _current_rss_kb()
    g = torch.Generator().manual_seed(0)
    n_batches = 8
    dense = torch.randn(n_batches, B, Dd, generator=g)
    cat = torch.stack([torch.randint(0, c, (n_batches, B), generator=g) for c in cards], -1) \
        if cards else torch.zeros(n_batches, B, 0, dtype=torch.long)
    labels = (torch.rand(n_batches, B, T, generator=g) < 0.3).float()
    if impl == "ours":
        from adatt.config import TrainConfig
        from adatt.data.batch import Batch
        from adatt.train.compiled import TrainStep
        from adatt.train.distributed import shard
        from adatt.train.losses import TaskLoss
        from adatt.train.memory import keep_freed_memory
        from adatt.train.optim import make_optimizer

        keep_freed_memory()  # as `adatt train` does
        model = make_ours(name, size)
        # as `adatt train` builds them: fused Adam eagerly, the compilable one when compiling
        opt = make_optimizer(model.parameters(), TrainConfig(optimizer={"lr": 1e-4}), compiled)
        ts = TrainStep(model, TaskLoss(["binary"] * T), opt, compiled=compiled, bf16=bf16)
        batches = [Batch(dense[i], cat[i], labels[i]) for i in range(n_batches)]
        whole = shard(torch.arange(B))

        def step(i):
            losses = ts.losses(batches[i], whole)  # [T]
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            ts.step()
    else:
        model = make_reference(ref_path, name, size)
        onehot = [torch.cat([dense[i]] + [torch.nn.functional.one_hot(cat[i][:, f], c).float()
                                           for f, c in enumerate(cards)], 1)
                  for i in range(n_batches)]
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(i):
            outs = model(onehot[i])
            logits = torch.cat(outs, dim=1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels[i], reduction="none").mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    from torch.utils.flop_counter import FlopCounterMode

    compile_s = 0.0
    if impl == "ours" and compiled:
        step(0)  # compiles; FLOPs are counted on the eager model below
        compile_s = ts.compile_s
        eager = TrainStep(model, TaskLoss(["binary"] * T), opt, compiled=False, bf16=bf16)
        with FlopCounterMode(display=False) as fc:
            eager.losses(batches[0], whole).sum().backward()
        opt.zero_grad(set_to_none=True)
    else:
        with FlopCounterMode(display=False) as fc:
            step(0)
    flops = fc.get_total_flops()
    warm = []
    for i in range(6):
        t0 = time.perf_counter()
        step(i % n_batches)
        warm.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    serve({"train": lambda i: step(i % n_batches)},
          dict(impl=impl, model=name, size=size_name, batch=B, flops=flops, params=params,
               step_s=statistics.median(warm[1:]), compile_s=compile_s),
          lambda: dict(peak_mb=(_peak_rss_kb() - rss0) / 1024))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _current_rss_kb() -> int:
    return _status_kb("VmRSS")


def _peak_rss_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def host_has_bf16() -> bool:
    """This CPU has AVX-512-BF16 or AMX (bf16 autocast then pays)."""
    import host

    return bool({"avx512_bf16", "amx_bf16"} & set(host.cpu_flags()))


def matmul_peak(threads: int | None = None) -> float:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    n = 10
    for _ in range(n):
        a @ b
    return 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reference", help="path of the authors' mtl_lib.py")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default="census,industrial")
    p.add_argument("--bf16", nargs="?", const="host", choices=["host", "force"],
                   help="also measure ours under bf16 autocast (where the host has "
                        "AVX-512-BF16 or AMX; force: anyway)")
    p.add_argument("--compile", action="store_true",
                   help="also measure ours with the compiled training step")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=1,
                   help="N x 5 timed turns per row (default 1); report the median")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds < 1:
        sys.exit("error: --rounds must be >= 1")
    if args.one:
        impl, name, size, bf16, comp = args.one.split(":")
        run_one(impl, name, size, args.reference, bf16 == "1", comp == "1", args.threads)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe())
    threads = torch.get_num_threads()
    peak = matmul_peak(threads)
    print(f"fp32 matmul peak on this machine ({threads} threads): {peak:.0f} GFLOP/s\n")
    bf16 = args.bf16 == "force" or (args.bf16 == "host" and host_has_bf16())
    if args.bf16 == "host" and not bf16:
        print("bf16 rows left out: this CPU has neither AVX-512-BF16 nor AMX (--bf16=force)\n")
    impls = [("ours", "0", "0")] + ([("ours", "1", "0")] if bf16 else [])
    if args.compile:
        impls += [("ours", "0", "1")] + ([("ours", "1", "1")] if bf16 else [])
    impls += [("reference", "0", "0")] if args.reference else []
    rows = []
    for size in args.sizes.split(","):
        for name in args.models.split(","):
            rows += measure_group(name, size, impls, args.reference, args.rounds, args.threads)
    hdr = (f"{'size':<11}{'model':<14}{'impl':<19}{'ex/s':>10}{'vs ref':>8}{'GFLOP/s':>9}"
           f"{'% peak':>8}{'MFLOP/ex':>10}{'peak MB':>9}{'params':>10}{'compile s':>10}"
           f"{'break-even':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if "status" in r:
            print(f"{r['size']:<11}{r['model']:<14}{r['impl']:<19}  {r['status']}")
            continue
        ratio = f"{r['vs_ref']:.2f}x" if r.get("vs_ref") else "-"
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] else "-"
        print(f"{r['size']:<11}{r['model']:<14}{r['impl']:<19}{r['ex_per_s']:>10.0f}{ratio:>8}"
              f"{r['gflops']:>9.1f}{100 * r['gflops'] / peak:>7.0f}%"
              f"{r['flops_per_ex'] / 1e6:>10.2f}"
              f"{r['peak_mb']:>9.0f}{r['params']:>10}{comp:>10}{r['break_even']:>11}")


#: shortest timed window (seconds): a window starts on caches the other rows have used
WINDOW_S = 0.4


def measure_group(name: str, size: str, impls: list[tuple[str, str, str]],
                  reference: str | None, rounds: int, threads: int | None = None) -> list[dict]:
    """The rows of one (model, size), timed in turns; ``vs_ref`` is the paired ratio."""
    cmds = {}
    for impl, bf, comp in impls:
        cmd = [sys.executable, __file__, "--one", f"{impl}:{name}:{size}:{bf}:{comp}"]
        key = impl + ("+bf16" if bf == "1" else "") + ("+compile" if comp == "1" else "")
        cmds[key] = cmd + (["--reference", reference] if reference else []) + (
            ["--threads", str(threads)] if threads else [])

    def measure(workers: dict[str, Worker]) -> dict[str, dict]:
        steps = 20 if size == "census" else 10
        times = dict(zip(workers, take_turns(list(workers.values()), "train", steps,
                                             turns=5 * rounds, window=WINDOW_S), strict=True))
        rows = {}
        for key, w in workers.items():
            m, dt = w.meta, statistics.median(times[key])
            rows[key] = dict(ex_per_s=m["batch"] / dt, gflops=m["flops"] / dt / 1e9,
                             flops_per_ex=m["flops"] / m["batch"], params=m["params"],
                             vs_ref=paired_ratio(times["reference"], times[key])
                             if "reference" in times else None,
                             compile_s=m.get("compile_s", 0.0), break_even="-")
            eager = key.replace("+compile", "")
            if key.endswith("+compile") and eager in times:
                # steps after which compile time + compiled steps < eager steps
                saved = statistics.median(times[eager]) - dt
                rows[key]["break_even"] = (f"{m['compile_s'] / saved:.0f}" if saved > 0
                                           else "never")
        return rows

    return [dict(impl=key, model=name, size=size, **row)
            for key, row in run_group(cmds, measure).items()]


if __name__ == "__main__":
    main()
