"""Serving latency and throughput: eager vs TorchScript vs torch.export vs ONNX Runtime.

For each model at the census size (see ``benchmarks/models.py``), the model is
wrapped as it is served (:class:`adatt.serve.export.ServingModel`: raw feature
tensors in, per-task probabilities out), exported to every format with
:func:`adatt.serve.export.export_model` (which checks each file against the
eager model) and timed at batch 1 (latency of one request) and batch 4096
(bulk scoring): median and 95th percentile milliseconds per call over many
calls after warm-up, and rows per second.

    python benchmarks/export.py [--models adatt_sp,mmoe] [--batches 1,4096] [--threads 2]

ONNX needs the serve extra (``pip install adatt[serve]``); without it the
ONNX rows say so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402
from models import SIZES, our_kwargs  # noqa: E402

FORMATS = ("eager", "torchscript", "export", "onnx")


def time_calls(fn, args, min_calls: int, min_seconds: float) -> list[float]:
    """Seconds per call of ``fn(*args)`` after warm-up, at least ``min_calls`` calls."""
    for _ in range(5):
        fn(*args)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return times


def runners(name: str, workdir: Path) -> dict[str, object]:
    """Format -> ``(dense, cat) -> probabilities`` for model ``name`` at the census size."""
    from adatt.data.schema import FeatureSchema, TaskSpec
    from adatt.models import create_model
    from adatt.serve.export import ServingModel, export_model, load_exported

    size = SIZES["census"]
    torch.manual_seed(0)
    model = create_model(name, **our_kwargs(name, size)).eval()
    schema = FeatureSchema(
        dense=tuple(f"d{i}" for i in range(size["dense"])),
        categorical=tuple(f"c{i}" for i in range(len(size["cards"]))),
        cardinalities=tuple(size["cards"]),
        tasks=tuple(TaskSpec(f"t{i}") for i in range(3)),
    )
    serving = ServingModel(model, schema.task_kinds).eval()

    def eager(dense, cat):
        with torch.inference_mode():
            return serving(dense, cat)

    out: dict[str, object] = {"eager": eager, "_schema": schema}
    for fmt, suffix in (("torchscript", ".pt"), ("export", ".pt2"), ("onnx", ".onnx")):
        try:
            export_model(model, schema, fmt, workdir / f"{name}{suffix}")
            fn = load_exported(workdir / f"{name}{suffix}", fmt)
        except Exception as e:  # e.g. the serve extra missing: reported in the table
            out[fmt] = f"unavailable: {str(e).splitlines()[0][:60]}"
            continue
        if fmt == "onnx":
            out[fmt] = fn
        else:
            def run(dense, cat, fn=fn):
                with torch.inference_mode():
                    return fn(dense, cat)

            out[fmt] = run
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="adatt_sp,adatt,ple,mmoe,shared_bottom")
    ap.add_argument("--batches", default="1,4096")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe())
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from adatt.serve.export import example_inputs

    batches = [int(b) for b in args.batches.split(",")]
    print(f"threads {args.threads}, torch {torch.__version__}, census size "
          f"(28 categorical fields + 9 dense, experts (128, 64), towers 32, 3 tasks)")
    header = "| model | format | batch | median ms | p95 ms | rows/s | vs eager |"
    print(header)
    print("|" + "---|" * 7)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            fns = runners(name, Path(tmp))
            schema = fns.pop("_schema")
            for b in batches:
                dense, cat = example_inputs(schema, b, seed=1)
                eager_rate = None
                for fmt in FORMATS:
                    fn = fns[fmt]
                    if isinstance(fn, str):
                        print(f"| {name} | {fmt} | {b} | {fn} | | | |")
                        continue
                    calls = 200 if b == 1 else 10
                    ts = time_calls(fn, (dense, cat), calls, args.seconds)
                    med = statistics.median(ts)
                    p95 = sorted(ts)[int(0.95 * (len(ts) - 1))]
                    rate = b / med
                    eager_rate = eager_rate or rate
                    print(f"| {name} | {fmt} | {b} | {med * 1e3:.3f} | {p95 * 1e3:.3f} | "
                          f"{rate:,.0f} | {rate / eager_rate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
