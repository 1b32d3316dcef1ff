"""Raw tables: the YAML files schema, reading CSV / Parquet files, converting columns.

The one place where a user's file becomes numpy arrays and pyarrow text
columns, before any encoding: :mod:`adatt.data.files` (whole files),
:mod:`adatt.data.stream` (Parquet shards, a record batch at a time) and
:mod:`adatt.serve.predict` (files to score) all read through it. The schema's
keys are documented in :mod:`adatt.data.files`.

Notation: N rows, Dd dense columns, T labels.

Every problem is a one-line :class:`~adatt.data.errors.DataError` naming the
file, the column and the 1-based data row.

Example:
    >>> import pyarrow as pa
    >>> fs = FileSchema(dense=("x",), categorical=("c",), labels=(("y", "binary"),))
    >>> t = pa.table({"x": ["1.5", "2"], "c": [7, None], "y": ["0", "1"]})
    >>> dense, labels, weight = numeric_columns(t, "in.csv", fs)
    >>> dense.tolist(), labels.tolist(), weight
    ([[1.5], [2.0]], [[0.0], [1.0]], None)
    >>> category_text(t["c"]).to_pylist()
    ['7', '']
    >>> numbers(pa.array(["3", "x"]), "in.csv", "x")
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: in.csv: column 'x', row 2: 'x' is not a number
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adatt.data.errors import DataError
from adatt.data.manifest import verify

__all__ = [
    "SCHEMA_KEYS",
    "PARQUET_SUFFIXES",
    "FileSchema",
    "MultiValuedColumn",
    "MULTI_VALUED_KEYS",
    "read_file_schema",
    "file_suffix",
    "read_table",
    "read_header",
    "check_unique",
    "check_columns",
    "numbers",
    "category_text",
    "list_text",
    "numeric_columns",
    "shift_rows",
]

SCHEMA_KEYS = ("dense", "categorical", "multi_valued", "labels", "weight", "standardize",
               "delimiter")
MULTI_VALUED_KEYS = ("delimiter", "pooling", "max_length", "truncate")
PARQUET_SUFFIXES = (".parquet", ".pq")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class MultiValuedColumn:
    """One multi-valued categorical column of the YAML schema (``multi_valued:``).

    Args:
        name: the column.
        delimiter: separates the elements of a CSV (or Parquet string) cell.
        pooling: ``sum`` or ``mean`` (the model's embedding bag).
        max_length: elements kept per row.
        truncate: a longer list keeps its first ``max_length`` elements (true)
            or is an error naming the file, column and row (false).
    """

    name: str
    delimiter: str = "|"
    pooling: str = "mean"
    max_length: int = 50
    truncate: bool = True


@dataclass(frozen=True)
class FileSchema:
    """The parsed YAML schema: column roles, label kinds, options."""

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]  # (column, kind) in task order
    weight: str | None = None
    standardize: bool = True
    delimiter: str | None = None
    multi_valued: tuple[MultiValuedColumn, ...] = ()

    @property
    def columns(self) -> list[str]:
        cols = [*self.dense, *self.categorical, *(m.name for m in self.multi_valued),
                *(c for c, _ in self.labels)]
        return cols + ([self.weight] if self.weight else [])


def read_file_schema(path: PathLike) -> FileSchema:
    """Parse and check a YAML schema file (see :mod:`adatt.data.files`)."""
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
    multi = _multi_valued(path, doc.get("multi_valued"), delimiter)
    schema = FileSchema(dense, categorical, tuple(labels), weight, standardize, delimiter, multi)
    seen: set[str] = set()
    for c in schema.columns:
        if c in seen:
            raise DataError(f"{path}: column {c!r} is given more than one role")
        seen.add(c)
    if not dense and not categorical and not multi:
        raise DataError(f"{path}: no feature columns (give 'dense', 'categorical' and/or "
                        "'multi_valued')")
    return schema


def _multi_valued(path: Path, raw: Any, csv_delimiter: str | None
                  ) -> tuple[MultiValuedColumn, ...]:
    """The ``multi_valued:`` section: column -> options (or null: every default)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise DataError(f"{path}: 'multi_valued' must map each list column to its options, "
                        "e.g. {tags: {delimiter: '|', pooling: mean, max_length: 50}}")
    out = []
    for col, opts in raw.items():
        where = f"{path}: multi_valued {col!r}"
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise DataError(f"{where}: options must be a mapping (keys: "
                            f"{', '.join(MULTI_VALUED_KEYS)})")
        for key in opts:
            if key not in MULTI_VALUED_KEYS:
                raise DataError(f"{where}: unknown key {key!r} (known keys: "
                                f"{', '.join(MULTI_VALUED_KEYS)})")
        m = MultiValuedColumn(str(col), **opts)
        if not isinstance(m.delimiter, str) or len(m.delimiter) != 1:
            raise DataError(f"{where}: delimiter must be one character, got {m.delimiter!r}")
        if m.delimiter == (csv_delimiter or ","):
            raise DataError(f"{where}: delimiter {m.delimiter!r} is the CSV field delimiter")
        if m.pooling not in ("sum", "mean"):
            raise DataError(f"{where}: pooling must be sum or mean, got {m.pooling!r}")
        if not isinstance(m.max_length, int) or isinstance(m.max_length, bool) or (
                m.max_length < 1):
            raise DataError(f"{where}: max_length must be an integer >= 1, got "
                            f"{m.max_length!r}")
        if not isinstance(m.truncate, bool):
            raise DataError(f"{where}: truncate must be true or false, got {m.truncate!r}")
        out.append(m)
    return tuple(out)


# --------------------------------------------------------------------------- reading


def file_suffix(path: Path) -> str:
    """The suffix that names the format (``.csv``, ``.parquet``, ...), ignoring ``.gz`` /
    ``.bz2``, lower case; ``""`` when there is none.

    >>> file_suffix(Path("a/train.CSV.gz")), file_suffix(Path("data"))
    ('.csv', '')
    """
    s = [x.lower() for x in path.suffixes]
    if s and s[-1] in (".gz", ".bz2"):
        s = s[:-1]
    return s[-1] if s else ""


def read_table(path: Path, schema: FileSchema) -> Any:
    """The schema's columns of one file as a pyarrow Table (CSV columns as strings)."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read (permission denied)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    verify(path)  # when an adatt-manifest.json beside it lists it (adatt.data.manifest)
    suffix = file_suffix(path)
    try:
        if suffix in PARQUET_SUFFIXES:
            table = _read_parquet(path, schema)
        else:
            table = _read_csv(path, schema, tab=suffix == ".tsv")
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        kind = "Parquet" if suffix in PARQUET_SUFFIXES else "CSV"
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read as {kind} ({msg})") from e
    if table.num_rows == 0:
        raise DataError(f"{path}: file has no rows")
    return table


def check_columns(path: Path, schema: FileSchema, have: list[str]) -> None:
    """A :class:`DataError` naming the first of the schema's columns not in ``have``."""
    roles = {c: "dense" for c in schema.dense} | {c: "categorical" for c in schema.categorical}
    roles |= {m.name: "multi-valued" for m in schema.multi_valued}
    roles |= {c: "label" for c, _ in schema.labels}
    if schema.weight:
        roles[schema.weight] = "weight"
    for c in schema.columns:
        if c not in have:
            shown = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "")
            raise DataError(
                f"{path}: column {c!r} ({roles[c]}) is missing; the file has columns [{shown}]"
            )


def check_unique(path: PathLike, have: list[str]) -> None:
    """A :class:`DataError` naming the first column name that appears twice in ``have``.

    >>> check_unique("in.csv", ["a", "b", "a"])
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: in.csv: column 'a' appears twice in the header (columns 1 and 3)...
    """
    first: dict[str, int] = {}
    for i, c in enumerate(have):
        if c in first:
            raise DataError(f"{path}: column {c!r} appears twice in the header (columns "
                            f"{first[c] + 1} and {i + 1}): ambiguous, rename one")
        first[c] = i


def _read_parquet(path: Path, schema: FileSchema) -> Any:
    import pyarrow.parquet as pq

    have = pq.read_schema(path).names
    check_unique(path, have)
    check_columns(path, schema, have)
    return pq.read_table(path, columns=schema.columns)


def _read_csv(path: Path, schema: FileSchema, tab: bool) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    delimiter = schema.delimiter or ("\t" if tab else ",")
    have = read_header(path, delimiter)
    if not have:
        raise DataError(f"{path}: file is empty (no header line)")
    check_columns(path, schema, have)
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


def read_header(path: Path, delimiter: str) -> list[str]:
    """Column names of a CSV file's first line (handles quoting; compressed files via
    pyarrow); a name that appears twice is a :class:`DataError` (:func:`check_unique`)."""
    import csv
    import io

    import pyarrow as pa

    with pa.input_stream(str(path), compression="detect") as f:
        first = f.read(1 << 16).decode("utf-8", "replace")
    line = first.splitlines()[0] if first else ""
    names = next(csv.reader(io.StringIO(line), delimiter=delimiter), [])
    check_unique(path, names)
    return names


# --------------------------------------------------------------------------- converting


def numbers(col: Any, path: PathLike, name: str) -> np.ndarray:
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


def category_text(col: Any) -> Any:
    """A categorical column as a pyarrow string array: values compared as text (a float
    ``1.0`` reads as ``"1"``, as an integer read from CSV); null -> ``""``."""
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


def list_text(col: Any, path: PathLike, spec: MultiValuedColumn) -> Any:
    """A multi-valued column as a pyarrow ``list<string>`` array, one list per row.

    A string cell is split at ``spec.delimiter`` (``"12|7|99"``; an empty
    string is the empty list); a Parquet list cell's elements are compared as
    text like single categories (:func:`category_text`); a null cell is the
    empty list. Elements are trimmed of spaces. An empty or null element
    (``"12||7"``), a nested list, or a column of another type is a one-line
    :class:`DataError` naming ``path``, the column and the row.

    >>> import pyarrow as pa
    >>> spec = MultiValuedColumn("tags")
    >>> list_text(pa.array(["12|7", "", None]), "in.csv", spec).to_pylist()
    [['12', '7'], [], []]
    >>> list_text(pa.array([[1, 2], None, []]), "in.pq", spec).to_pylist()
    [['1', '2'], [], []]
    >>> list_text(pa.array(["1||2"]), "in.csv", spec)
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: in.csv: column 'tags', row 1: empty element in '1||2'
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    name = spec.name
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(pc.fill_null(col.cast(pa.string()), ""))
        lists = pc.split_pattern(text, spec.delimiter)  # "" -> [""]
        lists = pc.if_else(pc.equal(text, ""), pa.scalar([], pa.list_(pa.string())), lists)
        values = pc.utf8_trim_whitespace(pc.list_flatten(lists))
        bad = pc.equal(values, "")
        source = text
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        inner = col.type.value_type
        if pa.types.is_nested(inner) or not (
                pa.types.is_string(inner) or pa.types.is_large_string(inner)
                or pa.types.is_integer(inner) or pa.types.is_floating(inner)
                or pa.types.is_boolean(inner)):
            raise DataError(f"{path}: column {name!r} has type {col.type}; a multi-valued column "
                            "holds lists of strings or integers")
        col = pc.fill_null(col, pa.scalar([], col.type))
        flat = pc.list_flatten(col)
        bad = flat.is_null()
        if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
            flat = pc.utf8_trim_whitespace(flat.cast(pa.string()))
            bad = pc.or_(bad, pc.equal(flat, ""))
        values = category_text(flat)
        lengths = pc.list_value_length(col)
        offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))])
        lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
        source = None
    else:
        raise DataError(f"{path}: column {name!r} has type {col.type}; a multi-valued column "
                        f"holds delimited strings or lists")
    bad_np = pc.fill_null(bad, True).to_numpy(zero_copy_only=False)
    if bad_np.any():
        k = int(np.flatnonzero(bad_np)[0])
        row = int(np.searchsorted(_offsets(lists), k, side="right")) - 1
        cell = "" if source is None else f" in {source[row].as_py()!r}"
        what = "empty" if source is not None else "null or empty"
        raise DataError(f"{path}: column {name!r}, row {row + 1}: {what} element{cell}")
    if source is not None:
        lists = pa.ListArray.from_arrays(pa.array(_offsets(lists), pa.int32()), values)
    return lists


def _offsets(lists: Any) -> np.ndarray:
    """Start of every list in the flattened values, and the end: ``int64 [n + 1]``."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _check_labels(y: np.ndarray, kind: str, path: PathLike, name: str) -> None:
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


def numeric_columns(
    table: Any, path: PathLike, schema: FileSchema
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(dense float64 [n, Dd], labels float32 [n, T], weight float32 [n] | None)`` of a
    pyarrow table or record batch, checked (finite values, valid labels, weights >= 0)."""
    n = table.num_rows
    dense = np.zeros((n, len(schema.dense)), dtype=np.float64)
    for j, c in enumerate(schema.dense):
        x = numbers(table.column(c), path, c)
        if not np.isfinite(x).all():
            i = int(np.flatnonzero(~np.isfinite(x))[0])
            raise DataError(f"{path}: column {c!r}, row {i + 1}: {x[i]} is not finite")
        dense[:, j] = x
    labels = np.zeros((n, len(schema.labels)), dtype=np.float32)
    for j, (c, kind) in enumerate(schema.labels):
        y = numbers(table.column(c), path, c)
        _check_labels(y, kind, path, c)
        labels[:, j] = y
    weight = None
    if schema.weight:
        w = numbers(table.column(schema.weight), path, schema.weight)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {schema.weight!r}, row {i + 1}: weight {w[i]} is not a "
                "finite number >= 0"
            )
        weight = w.astype(np.float32)
    return dense, labels, weight


_ROW = re.compile(r", row (\d+):")


def shift_rows(e: DataError, row0: int) -> DataError:
    """The same one-line error with its 1-based row moved from a block to its file.

    >>> str(shift_rows(DataError("f.pq: column 'x', row 3: missing value"), 100))
    "f.pq: column 'x', row 103: missing value"
    """
    msg = _ROW.sub(lambda m: f", row {int(m.group(1)) + row0}:", str(e), count=1)
    return DataError(msg)
