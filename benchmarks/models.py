"""Training throughput of every model at the census and industrial sizes.

Prints, per model and size: training examples/s, peak memory, and achieved
GFLOP/s next to this machine's measured fp32 matrix-multiply peak. With
``--reference PATH`` (the authors' ``mtl_lib.py`` from facebookresearch/AdaTT,
fetched by you, never committed) the same models built from the reference
``CentralTaskArch`` are measured side by side in the same run, fed one-hot
columns as in the reference's census setup.

    python benchmarks/models.py [--reference mtl_lib.py] [--models adatt_sp,ple] [--bf16]
                                [--rounds 3]

Sizes:
  census      28 categorical fields (~470 one-hot columns) + 9 dense, 3 tasks,
              2 levels of 6 experts (128, 64), towers 32, batch 512
  industrial  512-wide dense input, 3 tasks, 2 levels of 6 experts (256, 128),
              towers 64, batch 1024

Each (implementation, model, size) runs in its own subprocess so peak memory
(max RSS growth) is its own; timing is the median of several timed windows
after warm-up. Threads: all cores of this machine, one process at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

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


def run_one(impl: str, name: str, size_name: str, ref_path: str | None, bf16: bool) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
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
        from adatt.train.memory import keep_freed_memory

        keep_freed_memory()  # as `adatt train` does
        model = make_ours(name, size)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

        def step(i):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(dense[i], cat[i])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float(), labels[i], reduction="none").mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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

    with FlopCounterMode(display=False) as fc:
        step(0)
    flops = fc.get_total_flops()
    for i in range(5):
        step(i % n_batches)
    windows = []
    steps = 20 if size_name == "census" else 10
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i % n_batches)
        windows.append((time.perf_counter() - t0) / steps)
    dt = statistics.median(windows)
    rss = _peak_rss_kb()
    return dict(impl=impl, model=name, size=size_name, ex_per_s=B / dt,
                gflops=flops / dt / 1e9, flops_per_ex=flops / B,
                peak_mb=(rss - rss0) / 1024, params=sum(p.numel() for p in model.parameters()))


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


def matmul_peak() -> float:
    torch.set_num_threads(os.cpu_count() or 1)
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
    p.add_argument("--bf16", action="store_true", help="also measure ours under bf16 autocast")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every row N times, interleaved; report the median")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds < 1:
        sys.exit("error: --rounds must be >= 1")
    if args.one:
        impl, name, size, bf16 = args.one.split(":")
        print(json.dumps(run_one(impl, name, size, args.reference, bf16 == "1")))
        return
    peak = matmul_peak()
    print(f"fp32 matmul peak on this machine ({os.cpu_count()} threads): {peak:.0f} GFLOP/s\n")
    plan = []
    for size in args.sizes.split(","):
        for name in args.models.split(","):
            impls = [("ours", "0")]
            if args.bf16:
                impls.append(("ours", "1"))
            if args.reference:
                impls.append(("reference", "0"))
            plan += [(impl, name, size, bf) for impl, bf in impls]
    # every round measures every row once, so slow phases of a shared machine hit all rows
    measured: dict[tuple, list[dict]] = {key: [] for key in plan}
    for _ in range(args.rounds):
        for impl, name, size, bf in plan:
            cmd = [sys.executable, __file__, "--one", f"{impl}:{name}:{size}:{bf}"]
            if args.reference:
                cmd += ["--reference", args.reference]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{impl} {name} {size} failed:\n{out.stderr[-2000:]}")
                continue
            measured[(impl, name, size, bf)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (impl, _name, _size, bf), runs in measured.items():
        if not runs:
            continue
        runs.sort(key=lambda r: r["ex_per_s"])
        r = dict(runs[len(runs) // 2])  # the median round (upper median for an even count)
        r["impl"] = impl + ("+bf16" if bf == "1" else "")
        rows.append(r)
    hdr = (f"{'size':<11}{'model':<14}{'impl':<12}{'ex/s':>10}{'vs ref':>8}{'GFLOP/s':>9}"
           f"{'% peak':>8}{'MFLOP/ex':>10}{'peak MB':>9}{'params':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "reference" and x["model"] == r["model"]
                    and x["size"] == r["size"]), None)
        ratio = f"{r['ex_per_s'] / ref['ex_per_s']:.2f}x" if ref else "-"
        print(f"{r['size']:<11}{r['model']:<14}{r['impl']:<12}{r['ex_per_s']:>10.0f}{ratio:>8}"
              f"{r['gflops']:>9.1f}{100 * r['gflops'] / peak:>7.0f}%"
              f"{r['flops_per_ex'] / 1e6:>10.2f}"
              f"{r['peak_mb']:>9.0f}{r['params']:>10}")


if __name__ == "__main__":
    main()
