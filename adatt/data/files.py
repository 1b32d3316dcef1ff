"""Users' own data: CSV or Parquet files described by a small YAML schema.

The schema file names the columns and their roles::

    # my_data.yaml
    dense: [age, price]            # numeric features (optional)
    categorical: [user, item]      # categorical features, strings or integers (optional)
    multi_valued:                  # list-valued categorical features (optional)
      tags: {delimiter: "|", pooling: mean, max_length: 50, truncate: true}
    labels:                        # required, in task order: column -> binary | regression
      click: binary                # shorthand: every row needs a label
      watch_time: regression
      buy: {kind: binary, missing: mask, condition: click, weight: buy_weight}  # long form
    weight: sample_weight          # optional per-row loss weight (finite, >= 0)
    standardize: true              # optional, default true: dense columns -> (x - mean) / std
    delimiter: ","                 # optional, CSV only

Any other key is an error. Columns not named are ignored.

A label's long form (keys: :data:`~adatt.data.tables.LABEL_KEYS`): ``kind``
(required); ``missing``: ``error`` (default) or ``mask`` (an empty / null /
NaN value is unlabelled: NaN in ``labels``); ``condition``: another binary
label, this one is NaN wherever that one is not 1 (and needs a value where it
is 1, unless masked); ``weight``: a per-task weight column. With any per-task
weight, ``weight`` is ``[N, T]``: the row weight (or 1) times the task's
weight (or 1); else ``[N]`` or None as before (see :mod:`adatt.data.batch`).

Files
    ``.csv`` / ``.tsv`` (optionally ``.gz`` / ``.bz2``; first line is the
    header; ``.tsv`` defaults to a tab delimiter) or ``.parquet`` / ``.pq``.
    Train, validation and test files may use different formats. When the
    validation or test file is not given, that split is cut at random from the
    training file (``valid_fraction`` / ``test_fraction`` of its rows, numpy
    Generator seeded with ``split_seed``) before anything is fitted.

Encoding (:mod:`adatt.data.encoding`, kind ``vocab``, fitted on the training split only)
    * categorical: values are compared as text (``7`` and ``"7"`` are the same
      category; a Parquet float ``1.0`` reads as ``"1"``); an empty or null
      value is a category of its own (``""``); the vocabulary is the sorted set
      of training values, coded ``1..V``; index 0 is every value not seen in
      training.
    * dense: parsed as float64; with ``standardize`` (default) shifted and
      scaled by the training mean and standard deviation (a constant column is
      only shifted); stored float32.
    * labels: binary labels must be 0 or 1; regression labels any finite number
      (where present: a masked label may be missing).
    * weight: used as given.
    * multi_valued: a CSV cell is a delimited string (``"12|7|99"``, the
      feature's ``delimiter``, default ``|``; an empty cell is the empty list), a
      Parquet cell a list (null: the empty list; a string column is split as in
      CSV). Each element is a category of the feature's own vocabulary, coded
      as categorical values are; a row keeps its first ``max_length`` (default
      50) elements, or a longer list is an error with ``truncate: false``
      (default true). ``pooling`` (``sum`` or ``mean``, default ``mean``) is how
      the model's embedding bag pools the list; an empty list pools to zeros.
      The lists ride in ``cat`` after the single-valued fields, ``max_length``
      columns each, padded with -1 (:class:`~adatt.data.schema.MultiValued`).

Errors
    Every problem is a one-line :class:`~adatt.data.errors.DataError` naming
    the file, the column and the row (1-based data row; the CSV line is row + 1
    because of the header): unknown or malformed schema key, unreadable or
    empty file, a row with the wrong number of fields, missing column, missing
    value or non-number in a dense / label / weight column, a binary label
    other than 0 / 1, a non-finite regression label, a negative or infinite
    weight; in the long form an unknown key, a ``condition`` that is not
    another binary label (or makes a cycle), a missing per-task weight where
    the task is labelled; an empty or null element of a multi-valued list, a
    list longer than its ``max_length`` when ``truncate`` is false.

Example:
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "s.yaml").write_text("dense: [x]\\ncategorical: [c]\\nlabels: {y: binary}\\n")
    >>> _ = (d / "train.csv").write_text("x,c,y\\n1,a,0\\n3,b,1\\n")
    >>> _ = (d / "test.csv").write_text("x,c,y\\n2,zz,1\\n")
    >>> s = load_files(d / "s.yaml", d / "train.csv", d / "test.csv", d / "test.csv")
    >>> s.train.dense[:, 0].tolist(), s.test.cat[:, 0].tolist(), s.schema.cardinalities
    ([-1.0, 1.0], [0], (3,))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adatt.data.batch import TensorDataset
from adatt.data.encoding import EncodingFit, FeatureEncoding, pad_lists
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema
from adatt.data.splits import Splits
from adatt.data.tables import (
    SCHEMA_KEYS,
    FileSchema,
    category_text,
    list_text,
    numeric_columns,
    read_file_schema,
    read_table,
)

__all__ = [
    "FileSchema",
    "read_file_schema",
    "load_files",
    "SCHEMA_KEYS",
    "RawRows",
    "read_raw",
    "split_raw",
    "fit_files_encoding",
]

PathLike = str | os.PathLike[str]


@dataclass
class RawRows:
    """One file's rows before encoding: checked numbers, categories as text.

    ``dense float64 [N, Dd]``, ``cat`` F pyarrow string arrays
    (:func:`~adatt.data.tables.category_text`), ``labels float32 [N, T]`` (NaN:
    unlabelled), ``weight float32 [N]``, ``[N, T]`` (per-task weights) or None,
    ``bags`` per multi-valued column a pyarrow ``list<string>`` array
    (:func:`~adatt.data.tables.list_text`).
    """

    path: Path
    dense: np.ndarray
    cat: list[Any]
    labels: np.ndarray
    weight: np.ndarray | None
    bags: list[Any] = field(default_factory=list)

    def take(self, idx: np.ndarray) -> RawRows:
        """The rows ``idx`` (int64 ``[n]``), in that order."""
        import pyarrow as pa

        w = None if self.weight is None else self.weight[idx]
        take = pa.array(idx)
        return RawRows(
            self.path,
            self.dense[idx],
            [c.take(take) for c in self.cat],
            self.labels[idx],
            w,
            [b.take(take) for b in self.bags],
        )


def read_raw(path: Path, schema: FileSchema) -> RawRows:
    """A whole file's rows, checked (one-line :class:`DataError` naming file, column, row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_table(path, schema)
    dense, labels, weight = numeric_columns(table, path, schema)
    cat = []
    for c in schema.categorical:
        try:
            cat.append(category_text(table[c]))
        except pa.ArrowException:  # e.g. a list or struct column
            raise DataError(f"{path}: column {c!r} has type {table[c].type}, which cannot be "
                            "read as categories (one string or number per row)") from None
    bags = []
    for m in schema.multi_valued:
        lists = list_text(table[m.name], path, m)
        if not m.truncate:  # checked here, where rows are the file's
            pad_lists(np.zeros(0, np.int64), pc.list_value_length(lists).to_numpy(
                zero_copy_only=False).astype(np.int64), m, path)
        bags.append(lists)
    return RawRows(path, dense, cat, labels, weight, bags)


def split_raw(
    rows: RawRows,
    carve_valid: bool,
    carve_test: bool,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> dict[str, RawRows]:
    """The training file's rows as ``train`` plus the carved ``valid`` / ``test``.

    A permutation of the rows (numpy Generator seeded with ``split_seed``) gives
    the first ``round(N * valid_fraction)`` to valid, the next
    ``round(N * test_fraction)`` to test and the rest to train, each in file
    order; a split that is not carved takes no rows.
    """
    if not (carve_valid or carve_test):
        return {"train": rows}
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1):
        raise DataError("valid_fraction and test_fraction must be in [0, 1)")
    n = len(rows.labels)
    perm = np.random.default_rng(split_seed).permutation(n)
    n_valid = round(n * valid_fraction) if carve_valid else 0
    n_test = round(n * test_fraction) if carve_test else 0
    if n - n_valid - n_test < 1:
        raise DataError(f"{rows.path}: {n} rows leave no training rows after the split")
    out = {}
    if carve_valid:
        out["valid"] = rows.take(np.sort(perm[:n_valid]))
    if carve_test:
        out["test"] = rows.take(np.sort(perm[n_valid : n_valid + n_test]))
    out["train"] = rows.take(np.sort(perm[n_valid + n_test :]))
    return out


def fit_files_encoding(schema: FileSchema, train: RawRows) -> FeatureEncoding:
    """The ``vocab`` encoding fitted on the whole training split (module docstring)."""
    fit = EncodingFit(schema.dense, schema.categorical, "vocab",
                      standardize=schema.standardize, delimiter=schema.delimiter,
                      multi_valued=schema.multi_valued)
    fit.add(train.dense, train.cat, train.bags)
    return fit.encoding()


def load_files(
    schema: PathLike,
    train: PathLike,
    valid: PathLike | None = None,
    test: PathLike | None = None,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> Splits:
    """Load user files described by a YAML schema as train / valid / test.

    Args:
        schema: the YAML schema file.
        train, valid, test: CSV or Parquet files; a missing ``valid`` / ``test``
            is cut at random from ``train`` (``valid_fraction`` /
            ``test_fraction`` of its rows, seed ``split_seed``).

    Returns:
        :class:`Splits` with ``dense [N, Dd]``, ``cat [N, F]``, ``labels [N, T]``
        (NaN: unlabelled) and ``weight [N]`` when the schema names a weight
        column (``[N, T]`` when a label has a per-task weight); ``info["encoding"]``
        is the fitted :class:`~adatt.data.encoding.FeatureEncoding` (``to_dict()``).
    """
    import pyarrow.compute as pc

    fs = read_file_schema(schema)
    raws = split_raw(read_raw(Path(train), fs), valid is None, test is None,
                     valid_fraction=valid_fraction, test_fraction=test_fraction,
                     split_seed=split_seed)
    carved: dict[str, float] = {}
    if valid is None:
        carved["valid_fraction"] = valid_fraction
    if test is None:
        carved["test_fraction"] = test_fraction
    if valid is not None:
        raws["valid"] = read_raw(Path(valid), fs)
    if test is not None:
        raws["test"] = read_raw(Path(test), fs)

    enc = fit_files_encoding(fs, raws["train"])

    def encode(r: RawRows) -> TensorDataset:
        n = len(r.labels)
        cat = np.zeros((n, len(fs.categorical)), dtype=np.int64)
        for j, col in enumerate(r.cat):
            cat[:, j] = enc.encode_field(j, col, r.path)
        if r.bags:  # cat [n, F + L]: the padded lists after the single-valued fields
            cat = np.concatenate([cat, *(enc.encode_bag(m, b, r.path)
                                         for m, b in enumerate(r.bags))], axis=1)
        w = None if r.weight is None else torch.from_numpy(r.weight)
        return TensorDataset(torch.from_numpy(enc.encode_dense(r.dense)), torch.from_numpy(cat),
                             torch.from_numpy(r.labels), w)

    sets = {k: encode(raws[k]) for k in ("train", "valid", "test")}
    feature_schema = FeatureSchema(
        dense=fs.dense,
        categorical=fs.categorical,
        cardinalities=enc.cardinalities,
        tasks=fs.tasks,
        multi_valued=enc.schema_multi_valued(),
    )
    vocabs = enc.vocabularies or ()
    unseen = {
        split: {
            c: int(pc.sum(pc.invert(pc.is_in(col, value_set=_as_array(v)))).as_py() or 0)
            for c, col, v in zip(fs.categorical, raws[split].cat, vocabs, strict=True)
        }
        for split in ("valid", "test")
    }
    info: dict[str, Any] = {
        "source": "files",
        "schema_file": str(schema),
        "files": {k: str(v) for k, v in (("train", train), ("valid", valid), ("test", test)) if v},
        "split_seed": split_seed if carved else None,
        **carved,
        "standardize": (
            {
                "mean": dict(zip(fs.dense, enc.mean or (), strict=True)),
                "std": dict(zip(fs.dense, enc.std or (), strict=True)),
            }
            if fs.standardize
            else None
        ),  # fmt: skip
        "unseen_categories": unseen,
        # the fitted encoding, as adatt.serve.predict reads it back
        "encoding": enc.to_dict(),
    }
    name = Path(train).name
    for suffix in Path(name).suffixes:
        name = name.removesuffix(suffix)
    return Splits(f"files:{name}", feature_schema, sets["train"], sets["valid"], sets["test"], info)


def _as_array(values: tuple[str, ...]) -> Any:
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())
