"""Issue 18's data features together in one file: multi-valued lists beside partial,
conditional and per-task-weighted labels (CSV, Parquet and streamed shards agree)."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from adatt.data.files import load_files
from adatt.data.stream import load_stream

SCHEMA = """\
dense: [x]
categorical: [user]
multi_valued:
  tags: {delimiter: "|", pooling: mean, max_length: 3}
labels:
  click: binary
  buy: {kind: binary, missing: mask, condition: click, weight: bw}
"""

ROWS = [  # x, user, tags, click, buy, bw
    (0.5, "a", "t1|t2", 1, 1, 2.0),
    (1.5, "b", "", 0, None, None),
    (-1.0, "a", "t3|t1|t2|t4", 1, None, None),
    (2.0, "c", "t2", 1, 0, 0.5),
]


def _table(tags_as_lists: bool) -> pa.Table:
    cols = list(zip(*ROWS, strict=True))
    tags = [t.split("|") if t else [] for t in cols[2]] if tags_as_lists else list(cols[2])
    return pa.table({"x": list(cols[0]), "user": list(cols[1]), "tags": tags,
                     "click": list(cols[3]), "buy": list(cols[4]), "bw": list(cols[5])})


def _check(ds) -> None:
    labels, weight, cat = ds.labels, ds.weight, ds.cat
    assert cat.shape == (4, 1 + 3)  # one field, then the list's 3 columns
    assert (cat[1, 1:] == -1).all()  # the empty list is all padding
    assert (cat[2, 1:] >= 0).all()  # 4 elements cut to max_length 3
    assert labels[:, 0].tolist() == [1.0, 0.0, 1.0, 1.0]
    buy = labels[:, 1].tolist()
    assert buy[0] == 1.0 and math.isnan(buy[1]) and math.isnan(buy[2]) and buy[3] == 0.0
    assert weight.shape == (4, 2)
    assert weight[:, 0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert weight[0, 1].item() == 2.0 and weight[3, 1].item() == 0.5


def test_lists_and_partial_labels_together_in_csv_parquet_and_shards(tmp_path: Path) -> None:
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    pacsv.write_csv(_table(False), tmp_path / "d.csv")
    pq.write_table(_table(True), tmp_path / "d.parquet")
    (tmp_path / "shards").mkdir()
    pq.write_table(_table(True), tmp_path / "shards" / "part-0.parquet")
    from_csv = load_files(tmp_path / "schema.yaml", tmp_path / "d.csv", tmp_path / "d.csv",
                          tmp_path / "d.csv")
    from_pq = load_files(tmp_path / "schema.yaml", tmp_path / "d.parquet",
                         tmp_path / "d.parquet", tmp_path / "d.parquet")
    for splits in (from_csv, from_pq):
        _check(splits.train)
        assert splits.schema.tasks[1].condition == "click"
        assert splits.schema.multi_valued[0].max_length == 3
    for a, b in ((from_csv.train.cat, from_pq.train.cat),
                 (from_csv.train.labels, from_pq.train.labels)):
        assert torch.equal(a, b) if a.dtype != torch.float32 else torch.allclose(
            a, b, equal_nan=True)
    streamed = load_stream(tmp_path / "schema.yaml", tmp_path / "shards",
                           tmp_path / "d.parquet", tmp_path / "d.parquet", shuffle_buffer=1)
    _check(streamed.valid)
