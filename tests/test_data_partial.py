"""Partial labels on the file path: masks, conditions, per-task weights (CSV, Parquet, shards)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from adatt.data.files import load_files
from adatt.data.stream import load_stream

# --------------------------------------------------------------------------- fully labelled

FULL_SCHEMA = """\
dense: [x0, x1]
categorical: [user, item]
labels: {click: binary, watch: regression}
weight: w
"""


def full_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    return pa.table({
        "x0": x[:, 0], "x1": (3 * x[:, 1] + 1).astype(np.float32),
        "user": [f"u{k}" for k in rng.integers(0, 30, n)],
        "item": rng.integers(0, 20, n),
        "click": (rng.random(n) < 0.3).astype(np.int64),
        "watch": x[:, 0] * 2.5 + rng.standard_normal(n),
        "w": rng.random(n) * 2,
    })


def full_data(d: Path) -> dict[str, object]:
    """The same fully-labelled data loaded four ways: CSV (carved splits), Parquet, streamed."""
    (d / "schema.yaml").write_text(FULL_SCHEMA)
    pacsv.write_csv(full_table(300, 0), d / "train.csv")
    pq.write_table(full_table(300, 0), d / "train.parquet")
    pq.write_table(full_table(80, 1), d / "valid.parquet")
    pacsv.write_csv(full_table(80, 2), d / "test.csv")
    (d / "shards").mkdir(exist_ok=True)
    for s in range(2):
        pq.write_table(full_table(150, 10 + s), d / "shards" / f"part-{s}.parquet",
                       row_group_size=64)
    out: dict[str, object] = {
        "csv": load_files(d / "schema.yaml", d / "train.csv"),
        "parquet": load_files(d / "schema.yaml", d / "train.parquet", d / "valid.parquet",
                              d / "test.csv"),
        "stream": load_stream(d / "schema.yaml", d / "shards", d / "valid.parquet",
                              d / "test.csv", shuffle_buffer=100),
    }
    return out


def digest(loaded: dict[str, object]) -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of every tensor of every split, and of the stream's batches."""
    out = {}
    for name, s in loaded.items():
        h = hashlib.sha256()
        sets = [("valid", s.valid), ("test", s.test)]
        if name == "stream":
            batches = list(s.train.stream(batch_size=64, seed=3).epoch_batches(0))
            sets += [(f"b{i}", b) for i, b in enumerate(batches)]
        else:
            sets.append(("train", s.train))
        for _, ds in sets:
            for t in (ds.dense, ds.cat, ds.labels, ds.weight):
                h.update(str(None if t is None else (t.dtype, tuple(t.shape))).encode())
                if t is not None:
                    h.update(t.contiguous().numpy().tobytes())
        h.update(repr(s.schema.to_dict()).encode())
        if name == "stream":
            h.update(repr(s.train.label_variance()).encode())
        out[name] = h.hexdigest()[:16]
    return out


# digests of main before partial labels existed (the same tensors, bit for bit, and schema)
MAIN_DIGESTS = {"csv": "3bcf30c0fd01c3ca", "parquet": "c3034f4e46a195cd",
                "stream": "4d5547ee61dfbdba"}


def test_fully_labelled_files_give_the_tensors_they_gave_before(tmp_path):
    loaded = full_data(tmp_path)
    assert digest(loaded) == MAIN_DIGESTS
    for s in loaded.values():
        assert not s.schema.partial and s.valid.weight.dim() == 1
