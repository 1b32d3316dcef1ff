"""Issue 18's complaint: a regression label with standard deviation 3.4 trained with the
defaults, with and without the standardisation of regression labels.

Data: simulator ``group3`` rows (``watch_time``, view, finish, dislike, follow) written
as the user's Parquet files, ``watch_time`` rescaled to seconds-like values with mean
11 and standard deviation 3.4 on the training split (``11 + 3.4 * z``, ``z`` the
standardised ``log1p`` watch time). Each size trains twice with the default config
(AdaTT-sp, Adam lr 1e-3, batch 512, selection on validation AUC) for ``--epochs``
epochs: ``data.standardize_labels=false`` (labels used raw, as before) and the
default (standardised on the training split). Reported: test MSE / MAE of
``watch_time`` (original units, both runs) and the test NE of view and finish.

    python benchmarks/label_scaling.py [--rows 5000,30000] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from host import describe


def write_files(out: Path, rows: int, seed: int = 0) -> None:
    """Train / valid / test Parquet files and their schema (``watch_time``: mean 11, std 3.4)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from adatt.data.simulator import load_sim

    s = load_sim("group3", rows, seed=seed)
    w = s.train.labels[:, 0].double()
    mean, std = float(w.mean()), float(w.std(unbiased=False))
    for split, ds in s.items():
        cols = {c: ds.dense[:, j].numpy() for j, c in enumerate(s.schema.dense)}
        cols |= {c: ds.cat[:, j].numpy() for j, c in enumerate(s.schema.categorical)}
        for j, t in enumerate(s.schema.tasks):
            y = ds.labels[:, j].double().numpy()
            cols[t.name] = 11.0 + 3.4 * (y - mean) / std if t.kind == "regression" else y
        pq.write_table(pa.table(cols), out / f"{split}.parquet")
    labels = "".join(f"  {t.name}: {t.kind}\n" for t in s.schema.tasks)
    (out / "schema.yaml").write_text(f"dense: {list(s.schema.dense)}\n"
                                     f"categorical: {list(s.schema.categorical)}\n"
                                     f"labels:\n{labels}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="5000,30000", help="simulator rows per data set")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(describe())

    from adatt.config import load_config
    from adatt.train.trainer import train

    print("| rows | labels | watch_time test MSE | MAE | view NE | finish NE | seconds |")
    print("|---|---|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            write_files(out, rows)
            base = ["data.source=files", f"data.schema={out / 'schema.yaml'}",
                    f"data.train={out / 'train.parquet'}", f"data.valid={out / 'valid.parquet'}",
                    f"data.test={out / 'test.parquet'}", f"train.epochs={args.epochs}",
                    "runtime.progress=false", f"runtime.threads={args.threads}",
                    f"out_dir={out / 'runs'}"]
            for name, extra in (("raw", ["data.standardize_labels=false"]),
                                ("standardised", [])):
                cfg = load_config(None, [*base, f"name={name}", *extra])
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the raw labels' warning, expected
                    res = train(cfg)
                te = res["test"]
                print(f"| {rows:,} | {name} | {te['watch_time']['mse']:.2f} | "
                      f"{te['watch_time']['mae']:.2f} | {te['view']['ne']:.4f} | "
                      f"{te['finish']['ne']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
