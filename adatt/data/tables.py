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
from adatt.data.schema import TaskSpec

__all__ = [
    "SCHEMA_KEYS",
    "LABEL_KEYS",
    "PARQUET_SUFFIXES",
    "LabelSpec",
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
    "label_columns",
    "shift_rows",
]

SCHEMA_KEYS = ("dense", "categorical", "multi_valued", "labels", "weight", "standardize",
               "delimiter")
MULTI_VALUED_KEYS = ("delimiter", "pooling", "max_length", "truncate")
PARQUET_SUFFIXES = (".parquet", ".pq")

PathLike = str | os.PathLike[str]


LABEL_KINDS = ("binary", "regression")


@dataclass(frozen=True)
class LabelSpec:
    """One label column of the schema: its kind and how it is observed.

    ``missing``: ``error`` (every row needs a label) or ``mask`` (an empty /
    null / NaN value is unlabelled: NaN in ``labels``). ``condition``: another
    binary label; this one is NaN wherever that label is not 1 (a row where it
    is 1 still needs a label unless ``missing`` is ``mask``). ``weight``: a
    column of per-task sample weights (finite, >= 0 where the task is labelled).
    """

    column: str
    kind: str = "binary"
    missing: str = "error"
    condition: str | None = None
    weight: str | None = None

    @property
    def partial(self) -> bool:
        """Whether this label may hold NaN (unlabelled rows)."""
        return self.missing == "mask" or self.condition is not None

    def task(self) -> TaskSpec:
        """The model-side :class:`~adatt.data.schema.TaskSpec` of this label."""
        return TaskSpec(self.column, self.kind, self.missing,  # type: ignore[arg-type]
                        self.condition, self.weight)


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
    """The parsed YAML schema: column roles, labels (in task order), options.

    ``labels`` holds :class:`LabelSpec` (``(column, kind)`` pairs are taken too).
    """

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    labels: tuple[LabelSpec, ...]
    weight: str | None = None
    standardize: bool = True
    delimiter: str | None = None
    multi_valued: tuple[MultiValuedColumn, ...] = ()

    def __post_init__(self) -> None:
        specs = tuple(x if isinstance(x, LabelSpec) else LabelSpec(*x) for x in self.labels)
        object.__setattr__(self, "labels", specs)

    @property
    def task_weights(self) -> tuple[str, ...]:
        """The per-task weight columns, each once, in task order."""
        return tuple(dict.fromkeys(lab.weight for lab in self.labels if lab.weight))

    @property
    def partial(self) -> bool:
        """Whether any label may hold NaN."""
        return any(lab.partial for lab in self.labels)

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks of the feature schema, in label order."""
        return tuple(lab.task() for lab in self.labels)

    @property
    def columns(self) -> list[str]:
        cols = [*self.dense, *self.categorical, *(m.name for m in self.multi_valued),
                *(lab.column for lab in self.labels)]
        return cols + ([self.weight] if self.weight else []) + list(self.task_weights)


def _name(path: Path, where: str, v: Any) -> str:
    if not isinstance(v, str | int) or isinstance(v, bool):
        raise DataError(f"{path}: {where} holds {v!r}, not a column name")
    return str(v)


def _label_kind(path: Path, col: str, v: Any) -> str:
    if v not in LABEL_KINDS:
        raise DataError(f"{path}: label {col!r} has kind {v!r}; expected 'binary' or 'regression'")
    return str(v)


def _label_missing(path: Path, col: str, v: Any) -> str:
    if v not in ("error", "mask"):
        raise DataError(f"{path}: label {col!r}: 'missing' must be error or mask, got {v!r}")
    return str(v)


def _label_column(key: str) -> Any:
    def parse(path: Path, col: str, v: Any) -> str:
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise DataError(f"{path}: label {col!r}: {key!r} must be a column name, got {v!r}")
        return str(v)
    return parse


#: The keys of a label's long form -> parser ``(schema path, label column, value) -> value``;
#: a parsed value becomes the :class:`LabelSpec` field of the same name. Add a key here
#: (and the field) to extend the long form.
LABEL_KEYS: dict[str, Any] = {
    "kind": _label_kind,
    "missing": _label_missing,
    "condition": _label_column("condition"),
    "weight": _label_column("weight"),
}


def _parse_label(path: Path, col: str, raw: Any) -> LabelSpec:
    """One entry of ``labels``: the shorthand ``col: kind`` or the long form mapping."""
    if not isinstance(raw, dict):
        if isinstance(raw, str):
            return LabelSpec(col, _label_kind(path, col, raw))
        raise DataError(f"{path}: label {col!r} has kind {raw!r}; expected 'binary' or "
                        f"'regression', or a mapping with keys {', '.join(LABEL_KEYS)}")
    fields: dict[str, Any] = {}
    for key, v in raw.items():
        if key not in LABEL_KEYS:
            raise DataError(f"{path}: label {col!r}: unknown key {key!r} "
                            f"(known keys: {', '.join(LABEL_KEYS)})")
        fields[str(key)] = LABEL_KEYS[key](path, col, v)
    if "kind" not in fields:
        raise DataError(f"{path}: label {col!r}: the long form needs 'kind' (binary or regression)")
    return LabelSpec(col, **fields)


def _check_conditions(path: Path, labels: list[LabelSpec]) -> None:
    kinds = {lab.column: lab.kind for lab in labels}
    cond = {lab.column: lab.condition for lab in labels if lab.condition is not None}
    for lab in labels:
        c = lab.condition
        if c is None:
            continue
        if c == lab.column:
            raise DataError(f"{path}: label {lab.column!r}: condition {c!r} is the label itself")
        if c not in kinds:
            raise DataError(f"{path}: label {lab.column!r}: condition {c!r} is not a label "
                            f"(labels: {', '.join(kinds)})")
        if kinds[c] != "binary":
            raise DataError(f"{path}: label {lab.column!r}: condition {c!r} is a {kinds[c]} "
                            "label; a condition must be a binary label")
        seen, at = [lab.column], c
        while at in cond:
            seen.append(at)
            at = cond[at]
            if at in seen:
                raise DataError(f"{path}: label {lab.column!r}: conditions form a cycle "
                                f"({' -> '.join([*seen, at])})")


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
        return tuple(_name(path, repr(key), c) for c in v)

    dense, categorical = names("dense"), names("categorical")
    labels_raw = doc.get("labels")
    if not isinstance(labels_raw, dict) or not labels_raw:
        raise DataError(f"{path}: 'labels' must map each label column to binary or regression")
    labels = [_parse_label(path, str(col), raw) for col, raw in labels_raw.items()]
    _check_conditions(path, labels)
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
    # a per-task weight column may serve several tasks, but no other role
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
    roles |= {lab.column: "label" for lab in schema.labels}
    for lab in schema.labels:
        if lab.weight:
            roles.setdefault(lab.weight, f"weight of label {lab.column!r}")
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


def numbers(col: Any, path: PathLike, name: str, missing_ok: bool = False) -> np.ndarray:
    """float64 ``[N]`` from a string or numeric column; text is an error, and so is a
    missing value (empty, null, NaN) unless ``missing_ok``: then it is NaN.

    >>> import pyarrow as pa
    >>> numbers(pa.array(["1", " ", None, "nan"]), "in.csv", "y", missing_ok=True).tolist()
    [1.0, nan, nan, nan]
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(col)
        empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
        if empty.any():
            if not missing_ok:
                i = int(np.flatnonzero(empty)[0])
                raise DataError(f"{path}: column {name!r}, row {i + 1}: missing value")
            text = pc.if_else(pa.array(empty), pa.scalar("nan"), text)
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
        if col.null_count and not missing_ok:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: column {name!r}, row {i + 1}: missing value")
        x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        if col.null_count:  # missing_ok: null -> NaN
            x = np.where(col.is_null().to_numpy(zero_copy_only=False), np.nan, x)
    else:
        raise DataError(f"{path}: column {name!r} has type {col.type}, not numbers")
    nan = np.isnan(x)
    if nan.any() and not missing_ok:
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
    """Binary labels 0 / 1, regression labels finite; NaN (unlabelled) is passed over."""
    if kind == "binary":
        bad = (y != 0) & (y != 1) & ~np.isnan(y)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {name!r}, row {i + 1}: binary label {y[i]:g} is not 0 or 1"
            )
    else:
        bad = np.isinf(y)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: column {name!r}, row {i + 1}: label {y[i]} is not finite")


def _check_weights(w: np.ndarray, path: PathLike, name: str) -> None:
    bad = np.isinf(w) | (w < 0)  # NaN: checked by the caller
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {name!r}, row {i + 1}: weight {w[i]} is not a finite number >= 0"
        )


def _apply_conditions(labels: np.ndarray, schema: FileSchema, path: PathLike) -> None:
    """In place: a conditional label is NaN where its condition label is not 1 (NaN
    included; chains are applied condition first). A label with ``missing: error``
    must have a value wherever its condition is 1."""
    index = {lab.column: j for j, lab in enumerate(schema.labels)}
    done: set[int] = set()

    def apply(j: int) -> None:
        if j in done:
            return
        done.add(j)
        lab = schema.labels[j]
        if lab.condition is None:
            return
        k = index[lab.condition]
        apply(k)
        off = labels[:, k] != 1  # [n]; NaN != 1
        if lab.missing == "error":
            gap = ~off & np.isnan(labels[:, j])
            if gap.any():
                i = int(np.flatnonzero(gap)[0])
                raise DataError(f"{path}: column {lab.column!r}, row {i + 1}: missing value "
                                f"(its condition {lab.condition!r} is 1 here; give "
                                "'missing: mask' to allow it)")
        labels[off, j] = np.nan

    for j in range(len(schema.labels)):
        apply(j)


def label_columns(
    table: Any, path: PathLike, schema: FileSchema
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels float32 [n, T], weight)`` of a pyarrow table or record batch, checked.

    ``labels``: NaN where a partial label is unlabelled (``missing: mask`` and
    no value, or its ``condition`` is not 1). ``weight``: None without weight
    columns; ``float32 [n]`` (the per-row weight) when no label has a weight
    column; else ``float32 [n, T]``: the per-row weight (or 1) times the
    label's weight column (or 1); a label's weight may be missing only where
    the label is unlabelled (weight 0 there).

    >>> import pyarrow as pa
    >>> fs = FileSchema((), (), (LabelSpec("click"), LabelSpec("buy", condition="click",
    ...                 weight="bw")), weight="w")
    >>> t = pa.table({"click": [1, 0, 1], "buy": [1, None, 0], "bw": [2.0, None, 3.0],
    ...               "w": [1.0, 1.0, 0.5]})
    >>> y, w = label_columns(t, "in.parquet", fs)
    >>> y.tolist(), w.tolist()
    ([[1.0, 1.0], [0.0, nan], [1.0, 0.0]], [[1.0, 2.0], [1.0, 0.0], [0.5, 1.5]])
    """
    n = table.num_rows
    labels = np.zeros((n, len(schema.labels)), dtype=np.float32)
    for j, lab in enumerate(schema.labels):
        y = numbers(table.column(lab.column), path, lab.column, missing_ok=lab.partial)
        _check_labels(y, lab.kind, path, lab.column)
        labels[:, j] = y
    if schema.partial:
        _apply_conditions(labels, schema, path)
    row = None
    if schema.weight:
        row = numbers(table.column(schema.weight), path, schema.weight)
        _check_weights(row, path, schema.weight)
    if not schema.task_weights:
        return labels, None if row is None else row.astype(np.float32)
    weight = np.empty((n, len(schema.labels)), dtype=np.float32)
    columns: dict[str, np.ndarray] = {}
    for c in schema.task_weights:
        columns[c] = numbers(table.column(c), path, c, missing_ok=True)
        _check_weights(columns[c], path, c)
    for j, lab in enumerate(schema.labels):
        w = np.ones(n) if row is None else row  # float64 [n]
        if lab.weight:
            tw = columns[lab.weight]
            gap = np.isnan(tw) & ~np.isnan(labels[:, j])
            if gap.any():
                i = int(np.flatnonzero(gap)[0])
                raise DataError(f"{path}: column {lab.weight!r}, row {i + 1}: missing weight "
                                f"where label {lab.column!r} has a value")
            w = w * np.nan_to_num(tw, nan=0.0)
        weight[:, j] = w
    return labels, weight


def numeric_columns(
    table: Any, path: PathLike, schema: FileSchema
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(dense float64 [n, Dd], labels float32 [n, T], weight)`` of a pyarrow table or
    record batch, checked (finite values, valid labels, weights >= 0); ``labels`` and
    ``weight`` (None, ``[n]`` or ``[n, T]``) as :func:`label_columns` gives them."""
    n = table.num_rows
    dense = np.zeros((n, len(schema.dense)), dtype=np.float64)
    for j, c in enumerate(schema.dense):
        x = numbers(table.column(c), path, c)
        if not np.isfinite(x).all():
            i = int(np.flatnonzero(~np.isfinite(x))[0])
            raise DataError(f"{path}: column {c!r}, row {i + 1}: {x[i]} is not finite")
        dense[:, j] = x
    labels, weight = label_columns(table, path, schema)
    return dense, labels, weight


_ROW = re.compile(r", row (\d+):")


def shift_rows(e: DataError, row0: int) -> DataError:
    """The same one-line error with its 1-based row moved from a block to its file.

    >>> str(shift_rows(DataError("f.pq: column 'x', row 3: missing value"), 100))
    "f.pq: column 'x', row 103: missing value"
    """
    msg = _ROW.sub(lambda m: f", row {int(m.group(1)) + row0}:", str(e), count=1)
    return DataError(msg)
