"""The feature encoding: how raw columns become model inputs, fitted once and saved.

Notation: N rows, Dd dense width, F categorical fields, T tasks.

One :class:`FeatureEncoding` turns a table's feature columns into
``dense [N, Dd] float32`` and ``cat [N, F] int64``. It is fitted on the
training rows (:class:`EncodingFit`: the whole training split for
:func:`adatt.data.files.load_files`, a bounded sample of the shards for
:func:`adatt.data.stream.load_stream`), saved in the run's ``data.json``
(:meth:`FeatureEncoding.to_dict`, under ``info.encoding``) and read back by
:mod:`adatt.serve.predict` and :mod:`adatt.serve.export`, so training and
serving encode alike by construction. Its kinds:

* ``vocab``: categorical values are compared as text
  (:func:`~adatt.data.tables.category_text`: ``7`` and ``"7"`` are the same
  category, a float ``1.0`` reads as ``"1"``, null is ``""``); the vocabulary
  of a field is the sorted set of fitted values, value ``vocab[i]`` is coded
  ``i + 1`` and index 0 is the unknown slot: every value not seen in fitting.
  Saved with ``kind: files`` (the name predates streamed sources).
* ``hash``: no vocabulary; a value's text is hashed (pandas' SipHash with its
  fixed key, the same in every process) into ``1..hash_buckets``; unrelated
  values may share an index, none is unknown.
* ``encoded``: the columns are already model inputs (census, sim,
  mmoe_synthetic: the loader's output, see
  :func:`adatt.serve.predict.dataset_table`); categorical indices are checked
  to be integers in ``[0, cardinality)``.

Multi-valued features (``vocab`` / ``hash``): each element of a row's list
(:func:`~adatt.data.tables.list_text`) is coded as a single category is, with
the feature's own vocabulary (fitted on every element of the fitted rows) or
hash; the row becomes ``max_length`` columns appended to ``cat`` (after the
single-valued fields, features in schema order), the codes first and -1 after
them. A list longer than ``max_length`` keeps its first elements, or is an
error when the feature's ``truncate`` is false.

Dense scaling (``vocab`` / ``hash``): with ``standardize`` the columns are
shifted and scaled by the fitted mean and standard deviation (population
standard deviation; a constant column is only shifted), then stored float32.

Example:
    >>> import numpy as np, pyarrow as pa
    >>> fit = EncodingFit(("x",), ("c",), "vocab", standardize=True)
    >>> fit.add(np.array([[1.0], [3.0]]), [pa.array(["b", "a"])])
    >>> enc = fit.encoding()
    >>> enc.vocabularies, enc.mean, enc.std, enc.cardinalities
    ((('a', 'b'),), (2.0,), (1.0,), (3,))
    >>> dense, cat = enc.encode(pa.table({"x": [0.0, 4.0], "c": ["b", "zz"]}), "in.parquet")
    >>> dense.tolist(), cat.tolist()
    ([[-2.0], [2.0]], [[2], [0]])
    >>> FeatureEncoding.from_dict(enc.to_dict()) == enc
    True
    >>> encode_categorical(["b", "zz", "a"], build_vocabulary(["b", "a", "b"]))
    array([2, 0, 1])

    A multi-valued column ``tags`` (at most 3 elements per row):

    >>> tags = MultiValuedColumn("tags", max_length=3)
    >>> fit = EncodingFit((), (), "vocab", standardize=False, multi_valued=[tags])
    >>> fit.add(np.zeros((2, 0)), [], [list_text(pa.array(["7|9", "9"]), "in.csv", tags)])
    >>> enc = fit.encoding()
    >>> enc.bag_vocabularies, enc.bag_cardinalities
    ((('7', '9'),), (3,))
    >>> enc.encode(pa.table({"tags": ["9|5|7|7", ""]}), "in.csv")[1].tolist()
    [[2, 0, 1], [-1, -1, -1]]
    >>> FeatureEncoding.from_dict(enc.to_dict()) == enc
    True
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from adatt.data.errors import DataError
from adatt.data.schema import MultiValued
from adatt.data.tables import (
    FileSchema,
    MultiValuedColumn,
    category_text,
    list_text,
    numbers,
    numeric_columns,
    shift_rows,
)

__all__ = [
    "EncodingKind",
    "Rows",
    "FeatureEncoding",
    "EncodingFit",
    "RunningMoments",
    "build_vocabulary",
    "encode_categorical",
    "pad_lists",
]

EncodingKind = Literal["encoded", "vocab", "hash"]
PathLike = str | os.PathLike[str]

# numpy arrays of one block of rows: dense [n, Dd] f32, cat [n, F] i64, labels [n, T] f32
# (NaN: unlabelled), weight [n] or [n, T] (per-task weights) f32 or None
Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]

_SAVED_KIND = {"vocab": "files", "hash": "hash", "encoded": "encoded"}  # kind -> data.json


# --------------------------------------------------------------------------- vocabularies


def build_vocabulary(values: Iterable[str] | Any) -> list[str]:
    """Sorted distinct values of a list or pyarrow array; entry ``i`` is coded ``i + 1``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(values, pa.Array | pa.ChunkedArray):
        values = pa.array(list(values), type=pa.string())
    return sorted(pc.unique(values).to_pylist())


class _Lookup:
    """Codes of one vocabulary: ``1 + position`` for a known value, 0 otherwise.

    An integer column against a vocabulary of canonical integers is a binary
    search. Text is looked up with ``pyarrow.compute.index_in`` when the column
    has at least as many values as the vocabulary (it hashes the vocabulary on
    every call), else in a pandas index built once (a large vocabulary, small
    blocks: the shard stream); both give the same codes.
    """

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = vocabulary
        self.int_keys = _integer_keys(vocabulary)
        self.value_set: Any = None
        self.index: Any = None

    def of_integers(self, col: Any) -> np.ndarray | None:
        """Codes ``int64 [n]`` of a null-free signed integer pyarrow array (None: not one)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        signed = pa.types.is_signed_integer(col.type) or col.type in (
            pa.uint8(), pa.uint16(), pa.uint32())
        if self.int_keys is None or not signed or col.null_count:
            return None
        v = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
        keys, codes = self.int_keys
        pos = np.minimum(np.searchsorted(keys, v), len(keys) - 1)
        return np.where(keys[pos] == v, codes[pos], 0)

    def of_text(self, text: Any) -> np.ndarray:
        """Codes ``int64 [n]`` of a pyarrow string array (a null is unknown)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if len(self.vocabulary) <= len(text):
            if self.value_set is None:
                self.value_set = pa.array(list(self.vocabulary), type=pa.string())
            idx = pc.index_in(text, value_set=self.value_set)
            return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        if self.index is None:
            import pandas as pd

            self.index = pd.Index(np.array(self.vocabulary, dtype=object), dtype=object)
        values = text.to_numpy(zero_copy_only=False).astype(object)  # [n] str / None
        return self.index.get_indexer(values).astype(np.int64) + 1


def _integer_keys(vocab: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(sorted int64 keys, their codes)`` when every value is a canonical integer, else None."""
    if not vocab or not all(re.fullmatch(r"-?(0|[1-9][0-9]{0,17})", v) for v in vocab):
        return None
    keys = np.array([int(v) for v in vocab], dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], (order + 1).astype(np.int64)


def encode_categorical(values: Iterable[str] | Any, vocabulary: Sequence[str]) -> np.ndarray:
    """Indices ``int64 [N]``: ``1 + position`` in ``vocabulary``, 0 for a value not in it.

    ``values``: strings (a list or a pyarrow string array).
    """
    import pyarrow as pa

    if not isinstance(values, pa.Array | pa.ChunkedArray):
        values = pa.array(list(values), type=pa.string())
    return _Lookup(vocabulary).of_text(values)


# --------------------------------------------------------------------------- the encoding


@dataclass(frozen=True)
class FeatureEncoding:
    """How the feature columns of a table become ``dense`` and ``cat`` (module docstring).

    Args:
        dense, categorical: column names, in model input order.
        cardinalities: per categorical field, the number of indices.
        kind: ``vocab``, ``hash`` or ``encoded``.
        mean, std: per dense column, the fitted scaling (None: no scaling).
        vocabularies: per categorical field the sorted fitted values (``vocab``).
        hash_buckets: indices per field besides 0 (``hash``).
        delimiter: CSV delimiter of the run's files (None: ``,``, tab for .tsv).
        multi_valued: the multi-valued columns (``vocab`` / ``hash`` only).
        bag_cardinalities: per multi-valued column, the number of indices.
        bag_vocabularies: per multi-valued column the sorted fitted elements (``vocab``).
    """

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    cardinalities: tuple[int, ...]
    kind: EncodingKind = "encoded"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    vocabularies: tuple[tuple[str, ...], ...] | None = None
    hash_buckets: int | None = None
    delimiter: str | None = None
    multi_valued: tuple[MultiValuedColumn, ...] = ()
    bag_cardinalities: tuple[int, ...] = ()
    bag_vocabularies: tuple[tuple[str, ...], ...] | None = None
    _lookups: list[_Lookup | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in _SAVED_KIND:
            raise ValueError(f"unknown encoding kind {self.kind!r}")
        if len(self.cardinalities) != len(self.categorical):
            raise ValueError("one cardinality per categorical field")
        if (self.mean is None) != (self.std is None) or (
            self.mean is not None and not len(self.mean) == len(self.std or ()) == len(self.dense)
        ):
            raise ValueError("mean and std need one value per dense column, or neither")
        if self.kind == "vocab":
            if self.vocabularies is None or len(self.vocabularies) != len(self.categorical):
                raise ValueError("a vocab encoding needs one vocabulary per categorical field")
            if any(len(v) + 1 != c for v, c in
                   zip(self.vocabularies, self.cardinalities, strict=True)):
                raise ValueError("every cardinality must be its vocabulary size + 1")
        if self.kind == "hash" and (
            self.hash_buckets is None or self.hash_buckets < 1
            or any(c != self.hash_buckets + 1 for c in self.cardinalities)
        ):
            raise ValueError("a hash encoding needs hash_buckets >= 1, cardinalities "
                             "hash_buckets + 1")
        if len(self.bag_cardinalities) != len(self.multi_valued):
            raise ValueError("one cardinality per multi-valued column")
        if self.multi_valued and self.kind == "encoded":
            raise ValueError("multi-valued columns need a vocab or hash encoding")
        if self.multi_valued and self.kind == "vocab" and (
                self.bag_vocabularies is None
                or [len(v) + 1 for v in self.bag_vocabularies] != list(self.bag_cardinalities)):
            raise ValueError("a vocab encoding needs one vocabulary per multi-valued column, "
                             "its size + 1 the cardinality")
        object.__setattr__(self, "_lookups", [None] * (len(self.categorical)
                                                       + len(self.multi_valued)))

    @property
    def raw(self) -> bool:
        """Whether the input columns are raw values (vocab / hash), not model inputs."""
        return self.kind != "encoded"

    # ---- saving ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as saved in ``data.json`` (see :meth:`from_dict`)."""
        d: dict[str, Any] = {
            "kind": _SAVED_KIND[self.kind],
            "dense": list(self.dense),
            "categorical": list(self.categorical),
            "cardinalities": list(self.cardinalities),
            "standardize": None if self.mean is None else {
                "mean": list(self.mean), "std": list(self.std or ())},
            "vocabularies": None if self.vocabularies is None else {
                c: list(v) for c, v in zip(self.categorical, self.vocabularies, strict=True)},
            "delimiter": self.delimiter,
        }
        if self.kind == "hash":
            d["hash_buckets"] = self.hash_buckets
        if self.multi_valued:  # absent without them: saved encodings keep their old form
            vocabs = self.bag_vocabularies or [None] * len(self.multi_valued)
            d["multi_valued"] = [
                {"name": m.name, "delimiter": m.delimiter, "pooling": m.pooling,
                 "max_length": m.max_length, "truncate": m.truncate, "cardinality": c,
                 "vocabulary": None if v is None else list(v)}
                for m, c, v in zip(self.multi_valued, self.bag_cardinalities, vocabs, strict=True)
            ]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoding:
        """The encoding :meth:`to_dict` saved (KeyError / TypeError / ValueError if not one)."""
        kinds = {v: k for k, v in _SAVED_KIND.items()}
        std = d.get("standardize")
        vocabs = d.get("vocabularies")
        buckets = d.get("hash_buckets")
        multi = d.get("multi_valued") or []
        return cls(
            dense=tuple(d["dense"]),
            categorical=tuple(d["categorical"]),
            cardinalities=tuple(int(c) for c in d["cardinalities"]),
            kind=kinds[d["kind"]],  # type: ignore[arg-type]
            mean=None if std is None else tuple(float(x) for x in std["mean"]),
            std=None if std is None else tuple(float(x) for x in std["std"]),
            vocabularies=None if vocabs is None else tuple(
                tuple(vocabs[c]) for c in d["categorical"]),
            hash_buckets=None if buckets is None else int(buckets),
            delimiter=d.get("delimiter"),
            multi_valued=tuple(
                MultiValuedColumn(m["name"], m["delimiter"], m["pooling"], int(m["max_length"]),
                                  bool(m["truncate"])) for m in multi),
            bag_cardinalities=tuple(int(m["cardinality"]) for m in multi),
            bag_vocabularies=None if kinds[d["kind"]] != "vocab" or not multi else tuple(
                tuple(m["vocabulary"]) for m in multi),
        )

    def schema_multi_valued(self) -> tuple[MultiValued, ...]:
        """The multi-valued features as the models' schema describes them."""
        return tuple(MultiValued(m.name, c, m.pooling, m.max_length)
                     for m, c in zip(self.multi_valued, self.bag_cardinalities, strict=True))

    # ---- encoding ----------------------------------------------------------------------
    def encode_dense(self, dense: np.ndarray) -> np.ndarray:
        """``float32 [n, Dd]`` from raw ``float64 [n, Dd]``: scaled (when fitted so), cast."""
        if self.mean is not None:
            dense = (dense - np.asarray(self.mean, dtype=np.float64)) / np.asarray(
                self.std, dtype=np.float64)  # [n, Dd] - [Dd], / [Dd]
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf (callers check)
            return dense.astype(np.float32)

    def encode_field(self, j: int, col: Any, path: PathLike = "input") -> np.ndarray:
        """Indices ``int64 [n]`` of categorical field ``j`` from a pyarrow array.

        ``path`` names the file in error messages.
        """
        import pyarrow as pa

        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        name = self.categorical[j]
        if self.kind == "encoded":
            return _indices(col, path, name, self.cardinalities[j])
        lookup = None
        if self.kind == "vocab":
            lookup = self._lookups[j]
            if lookup is None:
                assert self.vocabularies is not None
                lookup = self._lookups[j] = _Lookup(self.vocabularies[j])
            codes = lookup.of_integers(col)
            if codes is not None:
                return codes
        try:
            text = category_text(col)  # pyarrow string array, no nulls
        except pa.ArrowException:  # e.g. a list or struct column
            raise DataError(f"{path}: column {name!r} has type {col.type}, which cannot be "
                            "read as categories") from None
        if lookup is not None:
            return lookup.of_text(text)
        return self._hash(text)

    def _hash(self, text: Any) -> np.ndarray:
        """Hash codes ``int64 [n]`` in ``1..hash_buckets`` of a pyarrow string array."""
        import pandas as pd

        assert self.hash_buckets is not None
        h = pd.util.hash_array(text.to_numpy(zero_copy_only=False).astype(object))  # uint64 [n]
        return (h % np.uint64(self.hash_buckets)).astype(np.int64) + 1

    def encode_bag(self, m: int, col: Any, path: PathLike = "input") -> np.ndarray:
        """Indices ``int64 [n, max_length]`` of multi-valued column ``m`` (padded with -1)
        from a pyarrow column (module docstring; errors name ``path``, column, row)."""
        import pyarrow.compute as pc

        spec = self.multi_valued[m]
        lists = list_text(col, path, spec)  # list<string> [n]
        values = pc.list_flatten(lists)  # [total] string
        if self.kind == "vocab":
            lookup = self._lookups[len(self.categorical) + m]
            if lookup is None:
                assert self.bag_vocabularies is not None
                lookup = _Lookup(self.bag_vocabularies[m])
                self._lookups[len(self.categorical) + m] = lookup
            codes = lookup.of_text(values)
        else:
            codes = self._hash(values)
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        return pad_lists(codes, lengths, spec, path)

    def encode_bags(self, table: Any, path: PathLike = "input") -> np.ndarray:
        """Every multi-valued column of ``table``: ``int64 [n, L]`` (L the sum of the
        max lengths), -1 pads."""
        parts = [self.encode_bag(m, table[spec.name], path)
                 for m, spec in enumerate(self.multi_valued)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((table.num_rows, 0), np.int64)

    def encode(self, table: Any, path: PathLike) -> tuple[np.ndarray, np.ndarray]:
        """``dense [N, Dd] float32`` and ``cat [N, F] int64`` from a table's feature columns.

        Every value is checked: a missing column, a missing / non-number /
        infinite dense value (also after the float32 cast) is a one-line
        :class:`DataError` naming ``path``, the column and the row.
        """
        path = Path(path)
        have = table.column_names
        for c in (*self.dense, *self.categorical, *(m.name for m in self.multi_valued)):
            if c not in have:
                raise DataError(f"{path}: column {c!r} is missing; the file has columns "
                                f"[{', '.join(have[:20])}{', ...' if len(have) > 20 else ''}]")
        n = table.num_rows
        dense64 = np.zeros((n, len(self.dense)), dtype=np.float64)
        for j, c in enumerate(self.dense):
            x = numbers(table[c], path, c)  # missing values, NaN and text are errors
            _check_finite(x, path, c, "")
            dense64[:, j] = x
        dense = self.encode_dense(dense64)
        for j, c in enumerate(self.dense):  # e.g. 1e39 does not fit a float32
            _check_finite(dense[:, j], path, c, " after conversion to float32")
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            cat[:, j] = self.encode_field(j, table[c], path)
        if self.multi_valued:  # cat [n, F + L]
            cat = np.concatenate([cat, self.encode_bags(table, path)], axis=1)
        return dense, cat

    def encode_rows(self, table: Any, path: PathLike, schema: FileSchema, row0: int = 0) -> Rows:
        """A table / record batch of ``schema``'s columns as training rows: features,
        checked labels and weight (see :func:`adatt.data.tables.numeric_columns`).

        ``row0``: rows of the file before ``table`` (errors name the row in the file).
        """
        try:
            dense, labels, weight = numeric_columns(table, path, schema)
        except DataError as e:
            raise shift_rows(e, row0) from None
        cat = np.zeros((table.num_rows, len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            cat[:, j] = self.encode_field(j, table.column(c), path)
        if self.multi_valued:  # cat [n, F + L]
            try:
                bags = self.encode_bags(table, path)
            except DataError as e:
                raise shift_rows(e, row0) from None
            cat = np.concatenate([cat, bags], axis=1)
        return self.encode_dense(dense), cat, labels, weight

    def read(self, path: PathLike) -> Any:
        """The feature columns of a CSV / Parquet file as a pyarrow Table (CSV: as text)."""
        from adatt.data.tables import read_table

        fs = FileSchema(self.dense, self.categorical, (), None, self.mean is not None,
                        self.delimiter, self.multi_valued)
        return read_table(Path(path), fs)


def pad_lists(codes: np.ndarray, lengths: np.ndarray, spec: MultiValuedColumn,
              path: PathLike = "input") -> np.ndarray:
    """Flat codes ``[total]`` of lists of ``lengths [n]`` as ``int64 [n, max_length]``,
    padded with -1; a longer list keeps its first elements, or is a one-line
    :class:`DataError` when ``spec.truncate`` is false.

    >>> spec = MultiValuedColumn("tags", max_length=2)
    >>> pad_lists(np.array([5, 6, 7, 8]), np.array([3, 0, 1]), spec).tolist()
    [[5, 6], [-1, -1], [8, -1]]
    """
    n, width = len(lengths), spec.max_length
    long = lengths > width
    if not spec.truncate and long.any():
        i = int(np.flatnonzero(long)[0])
        raise DataError(f"{path}: column {spec.name!r}, row {i + 1}: {lengths[i]} elements, more "
                        f"than max_length {width} (truncate: false)")
    out = np.full((n, width), -1, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths  # [n] first element of each list
    row = np.repeat(np.arange(n), lengths)  # [total] the row of each element
    pos = np.arange(len(codes)) - np.repeat(starts, lengths)  # [total] place in its list
    keep = pos < width
    out[row[keep], pos[keep]] = codes[keep]
    return out


def _check_finite(x: np.ndarray, path: PathLike, name: str, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {name!r}, row {i + 1}: {x[i]} is not finite{what}")


def _indices(col: Any, path: PathLike, name: str, cardinality: int) -> np.ndarray:
    """Already-encoded categorical indices: integers in ``[0, cardinality)``."""
    x = numbers(col, path, name)  # float64 [N]; missing values, NaN and text are errors
    _check_finite(x, path, name, "")
    frac = x != np.floor(x)
    if frac.any():
        i = int(np.flatnonzero(frac)[0])
        raise DataError(f"{path}: column {name!r}, row {i + 1}: {x[i]:g} is not an integer "
                        "category index")
    out = (x < 0) | (x >= cardinality)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(f"{path}: column {name!r}, row {i + 1}: index {x[i]:.0f} is out of "
                        f"range [0, {cardinality})")
    return x.astype(np.int64)


# --------------------------------------------------------------------------- fitting


class RunningMoments:
    """Running count, mean and sum of squared deviations per column (Chan et al.'s merge).

    One block gives numpy's own ``mean(0)`` and ``var(0) = m2 / n`` exactly.

    >>> m = RunningMoments(1)
    >>> m.add(np.array([[1.0], [2.0]])); m.add(np.array([[3.0], [6.0]]))
    >>> m.n, m.mean.tolist(), (m.m2 / m.n).tolist()
    (4, [3.0], [3.5])
    """

    def __init__(self, width: int):
        self.n, self.mean, self.m2 = 0, np.zeros(width), np.zeros(width)

    def add(self, x: np.ndarray) -> None:  # x [n, width] float64
        k = x.shape[0]
        if k == 0:
            return
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)  # [n, width] - [width]
        if self.n == 0:
            self.n, self.mean, self.m2 = k, mean, m2
            return
        n = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * k / n)
        self.n = n


class EncodingFit:
    """Fits a ``vocab`` or ``hash`` :class:`FeatureEncoding`, a block of rows at a time.

    Memory: the distinct categorical values seen (``vocab``) and per dense
    column three numbers.

    Args:
        dense, categorical: column names, in model input order.
        kind: ``vocab`` or ``hash``.
        standardize: fit the dense mean and standard deviation.
        hash_buckets: indices per field (``hash``).
        delimiter: the CSV delimiter to save with the encoding.
        multi_valued: the multi-valued columns (their elements are fitted as one
            field each).
    """

    def __init__(self, dense: Sequence[str], categorical: Sequence[str],
                 kind: Literal["vocab", "hash"], *, standardize: bool,
                 hash_buckets: int | None = None, delimiter: str | None = None,
                 multi_valued: Sequence[MultiValuedColumn] = ()):
        if kind not in ("vocab", "hash"):
            raise ValueError(f"an encoding is fitted as vocab or hash, not {kind!r}")
        self.dense, self.categorical = tuple(dense), tuple(categorical)
        self.kind, self.standardize = kind, standardize
        self.hash_buckets, self.delimiter = hash_buckets, delimiter
        self.moments = RunningMoments(len(self.dense))
        self._values: list[list[Any]] = [[] for _ in self.categorical]
        self.multi_valued = tuple(multi_valued)
        self._bag_values: list[list[Any]] = [[] for _ in self.multi_valued]

    @property
    def rows(self) -> int:
        """Rows added so far."""
        return self.moments.n

    def add(self, dense: np.ndarray, cat: Sequence[Any], bags: Sequence[Any] = ()) -> None:
        """Add rows: raw ``dense float64 [n, Dd]``, per categorical field a pyarrow
        string array as :func:`~adatt.data.tables.category_text` gives it and per
        multi-valued column a ``list<string>`` array (:func:`~adatt.data.tables.list_text`)."""
        import pyarrow.compute as pc

        if self.kind == "vocab":
            for values, col in zip(self._values, cat, strict=True):
                values.append(pc.unique(col))  # keeps the memory to the distinct values
            for values, lists in zip(self._bag_values, bags, strict=True):
                values.append(pc.unique(pc.list_flatten(lists)))
        self.moments.add(dense)

    def encoding(self) -> FeatureEncoding:
        """The fitted encoding."""
        import pyarrow as pa

        vocabs = bag_vocabs = None
        if self.kind == "vocab":
            vocabs = tuple(tuple(build_vocabulary(pa.chunked_array(v, type=pa.string())))
                           for v in self._values)
            cards = tuple(len(v) + 1 for v in vocabs)
            bag_vocabs = tuple(tuple(build_vocabulary(pa.chunked_array(v, type=pa.string())))
                               for v in self._bag_values)
            bag_cards = tuple(len(v) + 1 for v in bag_vocabs)
        else:
            assert self.hash_buckets is not None
            cards = (self.hash_buckets + 1,) * len(self.categorical)
            bag_cards = (self.hash_buckets + 1,) * len(self.multi_valued)
        mean = std = None
        if self.standardize:
            m, s = np.zeros(0), np.ones(0)
            if self.dense:
                m, s = self.moments.mean, np.sqrt(self.moments.m2 / self.moments.n)
                s = np.where(s > 0, s, 1.0)
            mean, std = tuple(float(x) for x in m), tuple(float(x) for x in s)
        return FeatureEncoding(self.dense, self.categorical, cards, self.kind, mean, std,
                               vocabs, self.hash_buckets if self.kind == "hash" else None,
                               self.delimiter, self.multi_valued, bag_cards,
                               bag_vocabs if self.multi_valued else None)
