"""Streaming training data from Parquet shards larger than memory (``data.source: stream``).

Notation: B batch size, Dd dense width, F categorical fields, T tasks.

:func:`load_stream` returns :class:`~adatt.data.splits.Splits` whose
``train`` is a :class:`~adatt.data.shard_stream.ParquetShards` (streamed,
shuffled, resumable: :mod:`adatt.data.shard_stream`) and whose ``valid`` /
``test`` are small files loaded in memory. The parts live in modules of their
own: finding and checking the shards (:mod:`adatt.data.shards`), the encoding
(:mod:`adatt.data.encoding`), the stream (:mod:`adatt.data.shard_stream`), the
trainer's batch sources (:mod:`adatt.data.sources`) and the simulator shard
writer (:mod:`adatt.data.shard_writer`); their names are importable from here.

``data.train`` names the shards (:func:`~adatt.data.shards.find_shards`); only
their footers are read up front, so row counts are known before the first
pass: ``train.epochs`` and ``train.max_examples`` mean what they mean in
memory and the progress bar has its total.

Encoding (the same for the training stream and the in-memory valid / test)
    Fitted (:class:`~adatt.data.encoding.EncodingFit`) on a bounded sample: the
    first ``ceil(fit_rows / shards)`` rows of every training shard (all shards,
    whatever the rank, so every rank of a data-parallel run encodes alike).

    * categorical, ``cat_encoding: vocab`` (default): values compared as text,
      as :mod:`adatt.data.files` does; the vocabulary is the sorted set of
      values in the sample, coded ``1..V``; any other value is 0 (unknown).
      High-cardinality IDs absent from the sample all share index 0, so raise
      ``fit_rows`` until the sample covers the IDs that matter (memory: the
      sample's rows plus the vocabulary).
    * ``cat_encoding: hash``: no vocabulary; a value's text is hashed
      (pandas' SipHash with its fixed key, the same in every process) into
      ``1..hash_buckets``; unrelated values may share an index (collisions),
      none is unknown. Cardinality ``hash_buckets + 1`` for every field.
    * dense: with ``standardize`` (schema, default true) shifted and scaled by
      the sample's mean and standard deviation.
    * label variance (for ``train.selection.metric=loss``): the sample's (of a
      partial label: over its labelled rows).

    The encoding is saved in ``info["encoding"]`` (the run's ``data.json``), so
    that ``adatt predict`` and ``adatt export`` encode raw columns as training did.

Integrity: shards written by ``adatt data write-shards`` carry an
``adatt-manifest.json`` (size and SHA-256 per file); sizes are checked when
the shards are inspected, each shard's SHA-256 when the stream first reads it
in a process, valid / test when they are loaded (:mod:`adatt.data.manifest`).
Shards written by other tools have no manifest and are read unverified.

Errors: a missing shard, an empty pattern, a file that is not Parquet, a
missing column, a shard whose column types differ from the first shard's, a
bad value (with the row within its file) are one-line
:class:`~adatt.data.errors.DataError` naming the file.

Example:
    >>> import tempfile
    >>> d = write_sim_shards(tempfile.mkdtemp(), "group1", rows=3_000, shard_rows=1_000,
    ...                      valid_rows=200, test_rows=200, row_group_rows=500)
    >>> s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet")
    >>> s.sizes()
    {'train': 3000, 'valid': 200, 'test': 200}
    >>> s.schema.cardinalities == s.train.encoder.cardinalities
    True
"""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adatt.data.batch import TensorDataset
from adatt.data.encoding import EncodingFit, FeatureEncoding, RunningMoments
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema
from adatt.data.shard_stream import ParquetShards, ShardStream
from adatt.data.shard_writer import write_sim_shards
from adatt.data.shards import (
    READ_ROWS,
    Shard,
    find_shards,
    inspect_shards,
    next_batch,
    open_shard,
)
from adatt.data.sources import InMemorySource, batch_source
from adatt.data.splits import Splits
from adatt.data.tables import (
    FileSchema,
    category_text,
    label_columns,
    list_text,
    numbers,
    read_file_schema,
    read_table,
    shift_rows,
)

__all__ = [
    "load_stream",
    "fit_sample",
    # re-exported from the modules that hold them
    "Shard",
    "ParquetShards",
    "ShardStream",
    "InMemorySource",
    "batch_source",
    "find_shards",
    "write_sim_shards",
]

PathLike = str | os.PathLike[str]
CatEncoding = Literal["vocab", "hash"]


def fit_sample(shards: list[Shard], fs: FileSchema, cat_encoding: CatEncoding, fit_rows: int,
               hash_buckets: int) -> tuple[FeatureEncoding, dict[str, float], int]:
    """The encoding, the label variance per regression task and the sample's row count,
    from the first ``ceil(fit_rows / len(shards))`` rows of every shard.

    Memory: the vocabularies (distinct values) and one record batch; the dense and
    label moments are accumulated batch by batch.
    """
    per_shard = math.ceil(fit_rows / len(shards))
    fit = EncodingFit(fs.dense, fs.categorical, cat_encoding, standardize=fs.standardize,
                      hash_buckets=hash_buckets, delimiter=fs.delimiter,
                      multi_valued=fs.multi_valued)
    labels = RunningMoments(len(fs.labels))
    # partial labels: moments per regression label over its labelled rows
    partial = {j: RunningMoments(1) for j, lab in enumerate(fs.labels)
               if fs.partial and lab.kind == "regression"}
    for shard in shards:
        got = 0
        pf = open_shard(shard.path)
        batches = pf.iter_batches(batch_size=min(per_shard, READ_ROWS), columns=fs.columns,
                                  use_threads=False)
        while (rb := next_batch(batches, shard.path)) is not None:
            rb = rb.slice(0, per_shard - got)
            try:
                cat = ([category_text(rb.column(c)) for c in fs.categorical]
                       if cat_encoding == "vocab" else [])
                bags = ([list_text(rb.column(m.name), shard.path, m) for m in fs.multi_valued]
                        if cat_encoding == "vocab" else [])
                d = np.zeros((rb.num_rows, len(fs.dense)))
                for j, c in enumerate(fs.dense):
                    d[:, j] = numbers(rb.column(c), shard.path, c)
                if fs.partial:
                    y = label_columns(rb, shard.path, fs)[0].astype(np.float64)
                else:
                    y = np.zeros((rb.num_rows, len(fs.labels)))
                    for j, lab in enumerate(fs.labels):
                        y[:, j] = numbers(rb.column(lab.column), shard.path, lab.column)
            except DataError as e:
                raise shift_rows(e, got) from None
            fit.add(d, cat, bags)
            if fs.partial:
                for j, m in partial.items():
                    m.add(y[~np.isnan(y[:, j]), j : j + 1])  # [labelled, 1]
            else:
                labels.add(y)
            got += rb.num_rows
            if got >= per_shard:
                break
    n = fit.rows
    if fs.partial:
        var = {fs.labels[j].column: float(m.m2[0] / (m.n - 1)) if m.n > 1 else 1.0
               for j, m in partial.items()}
    else:
        var = {lab.column: float(labels.m2[j] / (n - 1)) if n > 1 else 1.0
               for j, lab in enumerate(fs.labels) if lab.kind == "regression"}
    return fit.encoding(), var, n


def _encode_file(enc: FeatureEncoding, fs: FileSchema, path: Path) -> TensorDataset:
    """A whole (small) file, read as :func:`adatt.data.files.load_files` reads it, encoded."""
    table = read_table(path, fs)
    d, c, y, w = enc.encode_rows(table, path, fs)
    return TensorDataset(torch.from_numpy(d), torch.from_numpy(c), torch.from_numpy(y),
                         None if w is None else torch.from_numpy(w))


def load_stream(
    schema: PathLike,
    train: PathLike,
    valid: PathLike,
    test: PathLike,
    *,
    shuffle_buffer: int = 131_072,
    cat_encoding: CatEncoding = "vocab",
    fit_rows: int = 1_000_000,
    hash_buckets: int = 1_000_000,
) -> Splits:
    """Training shards streamed from disk, validation and test in memory.

    Args:
        schema: the YAML files schema (:mod:`adatt.data.files`).
        train: a directory, glob pattern or file of Parquet shards.
        valid, test: CSV or Parquet files, loaded whole.
        shuffle_buffer: default buffer rows of the training stream.
        cat_encoding, fit_rows, hash_buckets: see the module docstring.

    Returns:
        :class:`Splits` whose ``train`` is a :class:`ParquetShards` (``len()``
        its rows) and whose ``valid`` / ``test`` are ``TensorDataset``.
    """
    if cat_encoding not in ("vocab", "hash"):
        raise DataError(f"cat_encoding must be vocab or hash, got {cat_encoding!r}")
    if fit_rows < 1 or hash_buckets < 1 or shuffle_buffer < 0:
        raise DataError("fit_rows and hash_buckets must be >= 1, shuffle_buffer >= 0")
    fs = read_file_schema(schema)
    shards = inspect_shards(find_shards(train), fs)
    enc, label_var, n_fit = fit_sample(shards, fs, cat_encoding, fit_rows, hash_buckets)
    sets = {k: _encode_file(enc, fs, Path(p)) for k, p in (("valid", valid), ("test", test))}
    feature_schema = FeatureSchema(
        dense=fs.dense,
        categorical=fs.categorical,
        cardinalities=enc.cardinalities,
        tasks=fs.tasks,
        multi_valued=enc.schema_multi_valued(),
    )
    data = ParquetShards(shards, fs, enc, feature_schema, label_var, shuffle_buffer)
    info: dict[str, Any] = {
        "source": "stream",
        "schema_file": str(schema),
        "train": str(train),
        "shards": len(shards),
        "train_rows": len(data),
        "files": {"valid": str(valid), "test": str(test)},
        "cat_encoding": cat_encoding,
        "fit_rows": n_fit,
        "shuffle_buffer": shuffle_buffer,
    }
    if cat_encoding == "hash":
        info["hash_buckets"] = hash_buckets
    else:
        info["vocabulary_sizes"] = dict(zip(fs.categorical,
                                            (c - 1 for c in enc.cardinalities), strict=True))
        info["unseen_categories"] = {
            split: dict(zip(fs.categorical,
                            (int(x) for x in (ds.cat[:, :len(fs.categorical)] == 0).sum(0)),
                            strict=True))
            for split, ds in sets.items()
        }
    info["encoding"] = enc.to_dict()  # what adatt.serve.predict reads back
    if fs.standardize:
        info["standardize"] = {
            "mean": dict(zip(fs.dense, enc.mean or (), strict=True)),
            "std": dict(zip(fs.dense, enc.std or (), strict=True)),
        }
    p = Path(train)
    name = p.name if p.is_dir() else p.parent.name if glob.has_magic(str(train)) else p.stem
    return Splits(f"stream:{name}", feature_schema, data, sets["valid"], sets["test"],  # type: ignore[arg-type]
                  info)

