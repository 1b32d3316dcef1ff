"""Users' own data: CSV or Parquet files described by a small YAML schema.

The schema file names the columns and their roles::

    # my_data.yaml
    dense: [age, price]            # numeric features (optional)
    categorical: [user, item]      # categorical features, strings or integers (optional)
    labels:                        # required, in task order: column -> binary | regression
      click: binary
      watch_time: regression
    weight: sample_weight          # optional per-row loss weight (finite, >= 0)
    standardize: true              # optional, default true: dense columns -> (x - mean) / std
    delimiter: ","                 # optional, CSV only

Any other key is an error. Columns not named are ignored.

Files
    ``.csv`` / ``.tsv`` (optionally ``.gz`` / ``.bz2``; first line is the
    header; ``.tsv`` defaults to a tab delimiter) or ``.parquet`` / ``.pq``.
    Train, validation and test files may use different formats. When the
    validation or test file is not given, that split is cut at random from the
    training file (``valid_fraction`` / ``test_fraction`` of its rows, numpy
    Generator seeded with ``split_seed``) before anything is fitted.

Encoding (fitted on the training split only)
    * categorical: values are compared as text (``7`` and ``"7"`` are the same
      category; a Parquet float ``1.0`` reads as ``"1"``); an empty or null
      value is a category of its own (``""``); the vocabulary is the sorted set
      of training values, coded ``1..V``; index 0 is every value not seen in
      training.
    * dense: parsed as float64; with ``standardize`` (default) shifted and
      scaled by the training mean and standard deviation (a constant column is
      only shifted); stored float32.
    * labels: binary labels must be 0 or 1; regression labels any finite number.
    * weight: used as given.

Errors
    Every problem is a one-line :class:`~adatt.data.errors.DataError` naming
    the file, the column and the row (1-based data row; the CSV line is row + 1
    because of the header): unknown or malformed schema key, unreadable or
    empty file, a row with the wrong number of fields, missing column, missing
    value or non-number in a dense / label / weight column, a binary label
    other than 0 / 1, a non-finite regression label, a negative weight.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adatt.data.batch import TensorDataset
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits

__all__ = ["FileSchema", "read_file_schema", "load_files", "SCHEMA_KEYS"]

SCHEMA_KEYS = ("dense", "categorical", "labels", "weight", "standardize", "delimiter")
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".tsv", ".txt")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class FileSchema:
    """The parsed YAML schema: column roles, label kinds, options."""

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]  # (column, kind) in task order
    weight: str | None = None
    standardize: bool = True
    delimiter: str | None = None

    @property
    def columns(self) -> list[str]:
        cols = [*self.dense, *self.categorical, *(c for c, _ in self.labels)]
        return cols + ([self.weight] if self.weight else [])


def read_file_schema(path: PathLike) -> FileSchema:
    """Parse and check a YAML schema file (see the module docstring)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read schema ({e.strerror or e})") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise DataError(f"{path}: not valid YAML ({msg})") from e
    if not isinstance(doc, dict):
        raise DataError(f"{path}: the schema must be a mapping with keys {list(SCHEMA_KEYS)}")
    for key in doc:
        if key not in SCHEMA_KEYS:
            raise DataError(f"{path}: unknown key {key!r} (known keys: {', '.join(SCHEMA_KEYS)})")

    def names(key: str) -> tuple[str, ...]:
        v = doc.get(key) or []
        if isinstance(v, str) or not isinstance(v, list):
            raise DataError(f"{path}: {key!r} must be a list of column names")
        for c in v:
            if not isinstance(c, str | int) or isinstance(c, bool):
                raise DataError(f"{path}: {key!r} holds {c!r}, not a column name")
        return tuple(str(c) for c in v)

    dense, categorical = names("dense"), names("categorical")
    labels_raw = doc.get("labels")
    if not isinstance(labels_raw, dict) or not labels_raw:
        raise DataError(f"{path}: 'labels' must map each label column to binary or regression")
    labels = []
    for col, kind in labels_raw.items():
        if kind not in ("binary", "regression"):
            raise DataError(
                f"{path}: label {col!r} has kind {kind!r}; expected 'binary' or 'regression'"
            )
        labels.append((str(col), kind))
    weight = doc.get("weight")
    if weight is not None and not isinstance(weight, str):
        raise DataError(f"{path}: 'weight' must be one column name")
    standardize = doc.get("standardize", True)
    if not isinstance(standardize, bool):
        raise DataError(f"{path}: 'standardize' must be true or false, got {standardize!r}")
    delimiter = doc.get("delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise DataError(f"{path}: 'delimiter' must be one character, got {delimiter!r}")
    schema = FileSchema(dense, categorical, tuple(labels), weight, standardize, delimiter)
    seen: set[str] = set()
    for c in schema.columns:
        if c in seen:
            raise DataError(f"{path}: column {c!r} is given more than one role")
        seen.add(c)
    if not dense and not categorical:
        raise DataError(f"{path}: no feature columns (give 'dense' and/or 'categorical')")
    return schema


# --------------------------------------------------------------------------- reading


def _suffixes(path: Path) -> list[str]:
    s = [x.lower() for x in path.suffixes]
    if s and s[-1] in (".gz", ".bz2"):
        s = s[:-1]
    return s


def _read_table(path: Path, schema: FileSchema) -> Any:
    """The schema's columns of one file as a pyarrow Table (CSV columns as strings)."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read (permission denied)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = (_suffixes(path) or [""])[-1]
    try:
        if suffix in _PARQUET:
            table = _read_parquet(path, schema)
        else:
            table = _read_csv(path, schema, tab=suffix == ".tsv")
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        kind = "Parquet" if suffix in _PARQUET else "CSV"
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read as {kind} ({msg})") from e
    if table.num_rows == 0:
        raise DataError(f"{path}: file has no rows")
    return table


def _missing(path: Path, schema: FileSchema, have: list[str]) -> None:
    roles = {c: "dense" for c in schema.dense} | {c: "categorical" for c in schema.categorical}
    roles |= {c: "label" for c, _ in schema.labels}
    if schema.weight:
        roles[schema.weight] = "weight"
    for c in schema.columns:
        if c not in have:
            shown = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "")
            raise DataError(
                f"{path}: column {c!r} ({roles[c]}) is missing; the file has columns [{shown}]"
            )


def _read_parquet(path: Path, schema: FileSchema) -> Any:
    import pyarrow.parquet as pq

    have = pq.read_schema(path).names
    _missing(path, schema, have)
    return pq.read_table(path, columns=schema.columns)


def _read_csv(path: Path, schema: FileSchema, tab: bool) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    delimiter = schema.delimiter or ("\t" if tab else ",")
    have = _header(path, delimiter)
    if not have:
        raise DataError(f"{path}: file is empty (no header line)")
    _missing(path, schema, have)
    bad: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad.append(row)
        return "skip"

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            include_columns=schema.columns,
            column_types={c: pa.string() for c in schema.columns},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            null_values=[],
        ),
    )
    if bad:
        row = min(bad, key=lambda r: r.number or 0)
        line = f"line {row.number} (row {row.number - 1})" if row.number else repr(row.text[:60])
        raise DataError(
            f"{path}: {line} has {row.actual_columns} fields, the header has {row.expected_columns}"
        )
    return table


def _header(path: Path, delimiter: str) -> list[str]:
    """Column names of the first line (handles quoting; compressed files via pyarrow)."""
    import csv
    import io

    import pyarrow as pa

    with pa.input_stream(str(path), compression="detect") as f:
        first = f.read(1 << 16).decode("utf-8", "replace")
    line = first.splitlines()[0] if first else ""
    return next(csv.reader(io.StringIO(line), delimiter=delimiter), [])


# --------------------------------------------------------------------------- converting


def _numbers(col: Any, path: Path, name: str) -> np.ndarray:
    """float64 ``[N]`` from a string or numeric column; a missing value or text is an error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(col)
        empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise DataError(f"{path}: column {name!r}, row {i + 1}: missing value")
        try:
            x = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            for i, v in enumerate(text.to_pylist()):
                try:
                    float(v)
                except ValueError:
                    raise DataError(
                        f"{path}: column {name!r}, row {i + 1}: {v!r} is not a number"
                    ) from None
            raise DataError(f"{path}: column {name!r} cannot be read as numbers") from None
    elif (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_boolean(col.type)
    ):
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: column {name!r}, row {i + 1}: missing value")
        x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise DataError(f"{path}: column {name!r} has type {col.type}, not numbers")
    nan = np.isnan(x)
    if nan.any():
        i = int(np.flatnonzero(nan)[0])
        raise DataError(f"{path}: column {name!r}, row {i + 1}: missing value (NaN)")
    return x


def _text(col: Any) -> Any:
    """A categorical column as strings; null -> ``""``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        if pa.types.is_floating(col.type):  # 1.0 -> "1", as integers read from CSV
            as_int = pc.cast(col, pa.int64(), safe=False)
            whole = pc.fill_null(pc.equal(pc.cast(as_int, col.type), col), False)
            col = pc.if_else(whole, pc.cast(as_int, pa.string()), pc.cast(col, pa.string()))
        else:
            col = pc.cast(col, pa.string())
    return pc.fill_null(col.cast(pa.string()), "")


def _check_labels(y: np.ndarray, kind: str, path: Path, name: str) -> None:
    if kind == "binary":
        bad = (y != 0) & (y != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {name!r}, row {i + 1}: binary label {y[i]:g} is not 0 or 1"
            )
    else:
        bad = ~np.isfinite(y)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: column {name!r}, row {i + 1}: label {y[i]} is not finite")


@dataclass
class _Raw:
    path: Path
    dense: np.ndarray  # float64 [N, Dd]
    cat: list[Any]  # F pyarrow string arrays
    labels: np.ndarray  # float32 [N, T]
    weight: np.ndarray | None

    def take(self, idx: np.ndarray) -> _Raw:
        import pyarrow as pa

        w = None if self.weight is None else self.weight[idx]
        take = pa.array(idx)
        return _Raw(
            self.path,
            self.dense[idx],
            [c.take(take) for c in self.cat],
            self.labels[idx],
            w,
        )


def _numeric_columns(
    table: Any, path: Path, schema: FileSchema
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(dense float64 [n, Dd], labels float32 [n, T], weight float32 [n] | None)`` of a
    pyarrow table or record batch, checked (finite values, valid labels, weights >= 0)."""
    n = table.num_rows
    dense = np.zeros((n, len(schema.dense)), dtype=np.float64)
    for j, c in enumerate(schema.dense):
        x = _numbers(table.column(c), path, c)
        if not np.isfinite(x).all():
            i = int(np.flatnonzero(~np.isfinite(x))[0])
            raise DataError(f"{path}: column {c!r}, row {i + 1}: {x[i]} is not finite")
        dense[:, j] = x
    labels = np.zeros((n, len(schema.labels)), dtype=np.float32)
    for j, (c, kind) in enumerate(schema.labels):
        y = _numbers(table.column(c), path, c)
        _check_labels(y, kind, path, c)
        labels[:, j] = y
    weight = None
    if schema.weight:
        w = _numbers(table.column(schema.weight), path, schema.weight)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {schema.weight!r}, row {i + 1}: weight {w[i]} is not a "
                "finite number >= 0"
            )
        weight = w.astype(np.float32)
    return dense, labels, weight


def _load_raw(path: Path, schema: FileSchema) -> _Raw:
    import pyarrow as pa

    table = _read_table(path, schema)
    dense, labels, weight = _numeric_columns(table, path, schema)
    cat = []
    for c in schema.categorical:
        try:
            cat.append(_text(table[c]))
        except pa.ArrowException:  # e.g. a list or struct column
            raise DataError(f"{path}: column {c!r} has type {table[c].type}, which cannot be "
                            "read as categories (one string or number per row)") from None
    return _Raw(path, dense, cat, labels, weight)


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
        and ``weight [N]`` when the schema names a weight column.
    """
    import pyarrow.compute as pc

    from adatt.data.census import build_vocabulary, encode_categorical

    fs = read_file_schema(schema)
    raw_train = _load_raw(Path(train), fs)
    raws: dict[str, _Raw] = {}
    carved: dict[str, float] = {}
    if valid is None or test is None:
        if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1):
            raise DataError("valid_fraction and test_fraction must be in [0, 1)")
        n = len(raw_train.labels)
        perm = np.random.default_rng(split_seed).permutation(n)
        n_valid = round(n * valid_fraction) if valid is None else 0
        n_test = round(n * test_fraction) if test is None else 0
        if n - n_valid - n_test < 1:
            raise DataError(f"{train}: {n} rows leave no training rows after the split")
        if valid is None:
            raws["valid"] = raw_train.take(np.sort(perm[:n_valid]))
            carved["valid_fraction"] = valid_fraction
        if test is None:
            raws["test"] = raw_train.take(np.sort(perm[n_valid : n_valid + n_test]))
            carved["test_fraction"] = test_fraction
        raw_train = raw_train.take(np.sort(perm[n_valid + n_test :]))
    raws["train"] = raw_train
    if valid is not None:
        raws["valid"] = _load_raw(Path(valid), fs)
    if test is not None:
        raws["test"] = _load_raw(Path(test), fs)

    vocabs = [build_vocabulary(c) for c in raw_train.cat]
    if fs.standardize and fs.dense:
        mean = raw_train.dense.mean(0)
        std = raw_train.dense.std(0)
        std = np.where(std > 0, std, 1.0)
    else:
        mean = np.zeros(len(fs.dense))
        std = np.ones(len(fs.dense))

    def encode(r: _Raw) -> TensorDataset:
        n = len(r.labels)
        cat = np.zeros((n, len(fs.categorical)), dtype=np.int64)
        for j, (col, vocab) in enumerate(zip(r.cat, vocabs, strict=True)):
            cat[:, j] = encode_categorical(col, vocab)
        dense = ((r.dense - mean) / std).astype(np.float32)
        w = None if r.weight is None else torch.from_numpy(r.weight)
        return TensorDataset(
            torch.from_numpy(dense), torch.from_numpy(cat), torch.from_numpy(r.labels), w
        )

    sets = {k: encode(raws[k]) for k in ("train", "valid", "test")}
    feature_schema = FeatureSchema(
        dense=fs.dense,
        categorical=fs.categorical,
        cardinalities=tuple(len(v) + 1 for v in vocabs),
        tasks=tuple(TaskSpec(c, k) for c, k in fs.labels),  # type: ignore[arg-type]
    )
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
                "mean": dict(zip(fs.dense, map(float, mean), strict=True)),
                "std": dict(zip(fs.dense, map(float, std), strict=True)),
            }
            if fs.standardize
            else None
        ),  # fmt: skip
        "unseen_categories": unseen,
        # the fitted encoding, in the form adatt.serve.predict.FeatureEncoding reads
        "encoding": {
            "kind": "files",
            "dense": list(fs.dense),
            "categorical": list(fs.categorical),
            "cardinalities": [len(v) + 1 for v in vocabs],
            "standardize": ({"mean": [float(x) for x in mean], "std": [float(x) for x in std]}
                            if fs.standardize else None),
            "vocabularies": {c: list(v) for c, v in zip(fs.categorical, vocabs, strict=True)},
            "delimiter": fs.delimiter,
        },
    }
    name = Path(train).name
    for suffix in Path(name).suffixes:
        name = name.removesuffix(suffix)
    return Splits(f"files:{name}", feature_schema, sets["train"], sets["valid"], sets["test"], info)


def _as_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.string())
