"""Data-parallel scaling on CPU: one process with P threads vs P processes with one thread each.

Both run the whole ``adatt train`` command on the census AdaTT-sp configuration
(``configs/census/adatt_sp.yaml``: 2 levels of 6 experts (128, 64), towers 32,
one-hot categorical input, Adam lr 1e-4, global batch 512):

* ``1 x P``: ``python -m adatt train ... runtime.threads=P``;
* ``P x 1``: ``python -m torch.distributed.run --standalone --nproc-per-node P
  -m adatt train ... runtime.threads=1`` (DistributedDataParallel over gloo, each
  process computing its part of every global batch; docs/distributed.md).

Data: the census files when ``ADATT_DATA_DIR`` is set (or ``--data-dir``),
otherwise the recommender simulator with ``--rows`` rows (other shapes, the
same model sizes). Throughput is the trainer's ``train_examples_per_s``
(training steps only, evaluation excluded); wall time is the whole command
(start-up, data loading, evaluation included). Both runs compute the same
model (to float rounding): the largest test-metric difference is printed as a
check.

    python benchmarks/scaling.py [--procs 2] [--epochs 1] [--data-dir DIR] [--rows 200000]
                                [--max-examples N]

Run it on a quiet machine: on cores shared with other processes, the
processes of the ``P x 1`` run wait for each other at every step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "census" / "adatt_sp.yaml"


def _run(launcher: list[str], overrides: list[str], out: Path, name: str) -> dict:
    cmd = [*launcher, "-m", "adatt", "train", "--config", str(CONFIG), *overrides,
           f"out_dir={out}", f"name={name}", "runtime.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torch threads come from runtime.threads
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    res = json.loads((out / name / "results.json").read_text())
    res["command_wall_s"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2, help="P: threads of the single process, "
                    "processes of the distributed run")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("ADATT_DATA_DIR"),
                    help="census directory (default ADATT_DATA_DIR; else the simulator)")
    ap.add_argument("--rows", type=int, default=200_000, help="simulator rows (no census)")
    ap.add_argument("--max-examples", type=int, help="stop after this many training examples "
                    "(a quick check)")
    args = ap.parse_args()
    print(describe())
    p = args.procs
    common = [f"train.epochs={args.epochs}"]
    if args.max_examples:
        common += [f"train.max_examples={args.max_examples}"]
    if args.data_dir:
        common += [f"data.data_dir={args.data_dir}"]
        data = f"census ({args.data_dir})"
    else:
        common += ["data.source=sim", f"data.rows={args.rows}"]
        data = f"simulator, {args.rows:,} rows"
    py = [sys.executable]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(p)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        one = _run(py, [*common, f"runtime.threads={p}"], out, "one")
        many = _run(torchrun, [*common, "runtime.threads=1"], out, "many")
    diff = max(abs(v - many["test"][t][k]) for t, ms in one["test"].items()
               for k, v in ms.items() if k != "count")
    base = one["train_examples_per_s"]
    print(f"AdaTT-sp census config, {data}, {args.epochs} epoch(s), global batch 512\n")
    print("| run | processes x threads | train examples/s | vs 1 process | command wall s |")
    print("|---|---|---|---|---|")
    for label, shape, r in (("single process", f"1 x {p}", one),
                            ("DDP (gloo)", f"{p} x 1", many)):
        rate = r["train_examples_per_s"]
        print(f"| {label} | {shape} | {rate:,.0f} | {rate / base:.2f}x | "
              f"{r['command_wall_s']:.1f} |")
    print(f"\nlargest test-metric difference between the two runs: {diff:.2e}")


if __name__ == "__main__":
    main()
