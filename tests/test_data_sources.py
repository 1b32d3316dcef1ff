"""Batch sources: the in-memory source, the shard stream and the per-rank shards all
satisfy :class:`adatt.data.sources.BatchSource`, as the trainer uses them."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from adatt.data.batch import TensorDataset
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.shard_stream import ShardStream
from adatt.data.sources import BatchSource, InMemorySource, batch_source
from adatt.data.stream import load_stream
from adatt.train.distributed import RankShards

METHODS = ("indexed_batches", "label_variance", "state_dict", "load_state_dict")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("src")
    (d / "schema.yaml").write_text("dense: [x]\ncategorical: [c]\n"
                                   "labels: {y: binary, r: regression}\n")
    (d / "train").mkdir()
    rng = np.random.default_rng(0)
    for s, n in enumerate((120, 80, 100, 60)):
        pq.write_table(pa.table({"x": rng.normal(size=n), "c": rng.integers(0, 5, n),
                                 "y": rng.integers(0, 2, n), "r": rng.normal(size=n)}),
                       d / "train" / f"part-{s:05d}.parquet", row_group_size=50)
    for f in ("valid", "test"):
        pq.write_table(pa.table({"x": [0.0], "c": [1], "y": [1], "r": [0.5]}), d / f"{f}.parquet")
    return d


def sources(d: Path) -> dict[str, object]:
    s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet")
    g = torch.Generator().manual_seed(0)
    mem = TensorDataset(torch.randn(10, 1, generator=g), torch.zeros(10, 1, dtype=torch.long),
                        torch.rand(10, 2, generator=g).round())
    return {
        "memory": batch_source(mem, 4, seed=0),
        "stream": batch_source(s.train, 32, seed=0),
        "rank_shards": RankShards(s.train, 32, seed=0, rank=1, world=2),  # one process
    }, s.schema


def test_every_source_satisfies_the_protocol(shards):
    srcs, _ = sources(shards)
    assert isinstance(srcs["memory"], InMemorySource)
    assert isinstance(srcs["stream"], ShardStream)
    want = {m: list(inspect.signature(getattr(BatchSource, m)).parameters.items())
            for m in METHODS}
    for name, src in srcs.items():
        assert isinstance(src, BatchSource), name
        assert isinstance(src.rows, int) and src.rows > 0, name
        for m in METHODS:  # the protocol's parameters by name, its defaults kept
            got = list(inspect.signature(getattr(type(src), m)).parameters.items())
            assert [k for k, _ in got] == [k for k, _ in want[m]], (name, m)
            for (_, p), (_, q) in zip(got, want[m], strict=True):
                assert q.default is inspect.Parameter.empty or p.default == q.default, (name, m)
    assert not isinstance(object(), BatchSource)


@pytest.mark.parametrize("name", ["memory", "stream", "rank_shards"])
def test_sources_yield_as_the_trainer_reads_them(shards, name):
    """``(index, rows)`` with the batch ``rows.batch(index)``; ``limit`` caps the rows; the
    saved position continues the epoch exactly where it stopped."""
    srcs, schema = sources(shards)
    src = srcs[name]
    assert isinstance(src, BatchSource)
    full = [rows.batch(idx) for idx, rows in src.indexed_batches(0)]
    assert all(isinstance(b.labels, torch.Tensor) and b.labels.shape[1] == 2 for b in full)
    # rank 1 of 2 streams files 1 and 3 (80 + 60 rows); rows counts both ranks' steps
    assert sum(len(b) for b in full) == (140 if name == "rank_shards" else src.rows)
    capped = sum(idx.numel() for idx, _ in src.indexed_batches(1, limit=5))
    assert capped == (1 if name == "rank_shards" else 5)  # rank 1: one stand-in row
    variance = src.label_variance(schema)
    assert set(variance) == {"r"} and variance["r"] > 0
    # stop after two batches of epoch 2, save, continue in a new source: the same batches
    it = src.indexed_batches(2)
    first = [rows.batch(idx) for idx, rows in (next(it), next(it))]
    again = sources(shards)[0][name]
    again.load_state_dict(src.state_dict())
    rest = [rows.batch(idx) for idx, rows in again.indexed_batches(2, start_batch=2)]
    whole = [rows.batch(idx) for idx, rows in sources(shards)[0][name].indexed_batches(2)]
    assert len(first) + len(rest) == len(whole)
    for a, b in zip(first + rest, whole, strict=True):
        assert torch.equal(a.dense, b.dense) and torch.equal(a.cat, b.cat)


def test_in_memory_source_refuses_ranks():
    ds = TensorDataset(torch.zeros(2, 1), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="split between ranks by its caller"):
        batch_source(ds, 1, seed=0, rank=1, world=2)
    schema = FeatureSchema(("x",), (), (), (TaskSpec("t", "regression"),))
    ds.labels[1] = 2.0
    assert InMemorySource(ds, 1, 0, "cpu").label_variance(schema) == {"t": 2.0}
