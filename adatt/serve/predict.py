"""Batch scoring of a CSV / Parquet file with a trained run.

Notation: N rows, B batch, Dd dense width, F categorical fields, T tasks.

``predict_file(run_dir, input, output)`` reads the feature columns of
``input`` (named as in the run's schema), turns them into ``dense [N, Dd]``
and ``cat [N, F]`` as the run's training data was encoded, runs the model in
batches and writes one column per task -- ``<task>_prob`` (binary,
``sigmoid(logit)``) or ``<task>_pred`` (regression, the raw output) -- plus an
optional id column passed through, to a Parquet or CSV file (written to a
temporary file and renamed: no partial output).

How input columns are encoded (:class:`FeatureEncoding`)
    * A run on the user's files (``data.source: files``): the raw columns, as
      in the training file. The encoding fitted on the training split is
      reproduced: categorical values are compared as text and coded
      ``1 + position`` in the sorted training vocabulary (0 for a value not seen
      in training; an empty / null value is the category ``""``), dense values
      are shifted and scaled by the training mean and standard deviation
      (when the schema's ``standardize`` is on). The run directory does not store
      this encoding, so it is fitted again from the training file named in the
      run's ``config.yaml`` (that file must be unchanged), and checked to
      reproduce the run's training split exactly.
    * Any other run (census, sim, mmoe_synthetic): the already-encoded columns,
      as the data loader returns them: dense columns (already scaled) as
      numbers, categorical columns as integer indices in ``[0, cardinality)``.
      :func:`dataset_table` writes a loaded split in this form.

Errors
    A missing column, a non-number in a dense column, a missing value / NaN /
    infinity, a categorical index that is not an integer or out of range, a
    missing id column: a one-line :class:`~adatt.data.errors.DataError` naming the
    file, the column and the (1-based data) row; nothing is written.

Example:
    >>> import pyarrow as pa
    >>> enc = FeatureEncoding(dense=("x",), categorical=("c",), cardinalities=(3,), raw=True,
    ...                       mean=(2.0,), std=(2.0,), vocabularies=(("a", "b"),))
    >>> dense, cat = enc.encode(pa.table({"x": [0.0, 4.0], "c": ["b", "zz"]}), "in.parquet")
    >>> dense.tolist(), cat.tolist()
    ([[-1.0], [1.0]], [[2], [0]])
    >>> enc = FeatureEncoding(dense=("x",), categorical=("c",), cardinalities=(3,))
    >>> enc.encode(pa.table({"x": [1.5], "c": [7]}), "in.parquet")
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: in.parquet: column 'c', row 1: index 7 is out of range [0, 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema
from adatt.serve.export import ServeError, ServingModel, _atomic_target, output_columns

__all__ = [
    "FeatureEncoding",
    "fit_file_encoding",
    "encoding_for_run",
    "encoding_from_meta",
    "load_for_serving",
    "Predictor",
    "PredictResult",
    "predict_file",
    "dataset_table",
    "OUTPUT_SUFFIXES",
]

OUTPUT_SUFFIXES = (".parquet", ".pq", ".csv")
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class FeatureEncoding:
    """How the feature columns of an input table become ``dense`` and ``cat``.

    Args:
        dense, categorical: column names, in model input order.
        cardinalities: per categorical field, the number of indices.
        raw: True for a run on the user's files (raw values, the fitted
            encoding below); False for already-encoded columns.
        mean, std: per dense column, the training scaling (raw only; None:
            no scaling).
        vocabularies: per categorical field, the sorted training values
            (raw only); value ``vocab[i]`` is coded ``i + 1``.
        delimiter: CSV delimiter of the run's files (None: ``,``, tab for .tsv).
    """

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    cardinalities: tuple[int, ...]
    raw: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    vocabularies: tuple[tuple[str, ...], ...] | None = None
    delimiter: str | None = None

    def __post_init__(self) -> None:
        if self.raw and (self.vocabularies is None
                         or len(self.vocabularies) != len(self.categorical)):
            raise ValueError("a raw encoding needs one vocabulary per categorical field")
        if self.raw and self.vocabularies is not None and any(
            len(v) + 1 != c for v, c in zip(self.vocabularies, self.cardinalities, strict=True)
        ):
            raise ValueError("every cardinality must be its vocabulary size + 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (see :meth:`from_dict`)."""
        return {
            "kind": "files" if self.raw else "encoded",
            "dense": list(self.dense),
            "categorical": list(self.categorical),
            "cardinalities": list(self.cardinalities),
            "standardize": None if self.mean is None else {
                "mean": list(self.mean), "std": list(self.std or ())},
            "vocabularies": None if self.vocabularies is None else {
                c: list(v) for c, v in zip(self.categorical, self.vocabularies, strict=True)},
            "delimiter": self.delimiter,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoding:
        std = d.get("standardize")
        vocabs = d.get("vocabularies")
        return cls(
            dense=tuple(d["dense"]),
            categorical=tuple(d["categorical"]),
            cardinalities=tuple(int(c) for c in d["cardinalities"]),
            raw=d["kind"] == "files",
            mean=None if std is None else tuple(float(x) for x in std["mean"]),
            std=None if std is None else tuple(float(x) for x in std["std"]),
            vocabularies=None if vocabs is None else tuple(
                tuple(vocabs[c]) for c in d["categorical"]),
            delimiter=d.get("delimiter"),
        )

    def read(self, path: PathLike) -> Any:
        """The feature columns of a CSV / Parquet file as a pyarrow Table (CSV: as text)."""
        from adatt.data.files import FileSchema, _read_table

        fs = FileSchema(self.dense, self.categorical, (), None, self.mean is not None,
                        self.delimiter)
        return _read_table(Path(path), fs)

    def encode(self, table: Any, path: PathLike) -> tuple[np.ndarray, np.ndarray]:
        """``dense [N, Dd] float32`` and ``cat [N, F] int64`` from a table's columns.

        ``path`` only names the file in error messages.
        """
        import pyarrow as pa

        from adatt.data.census import encode_categorical
        from adatt.data.files import _numbers, _text

        path = Path(path)
        have = table.column_names
        for c in (*self.dense, *self.categorical):
            if c not in have:
                raise DataError(f"{path}: column {c!r} is missing; the file has columns "
                                f"[{', '.join(have[:20])}{', ...' if len(have) > 20 else ''}]")
        n = table.num_rows
        dense64 = np.zeros((n, len(self.dense)), dtype=np.float64)
        for j, c in enumerate(self.dense):
            x = _numbers(table[c], path, c)  # missing values, NaN and text are errors
            _check_finite(x, path, c, "")
            dense64[:, j] = x
        if self.mean is not None:
            std = np.asarray(self.std, dtype=np.float64)
            dense64 = (dense64 - np.asarray(self.mean, dtype=np.float64)) / std  # [N,Dd]
        with np.errstate(over="ignore"):  # reported below, naming the row
            dense = dense64.astype(np.float32)
        for j, c in enumerate(self.dense):  # e.g. 1e39 does not fit a float32
            _check_finite(dense[:, j], path, c, " after conversion to float32")
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            if self.raw:
                assert self.vocabularies is not None
                try:
                    text = _text(table[c])
                except pa.ArrowException:
                    raise DataError(f"{path}: column {c!r} has type {table[c].type}, which "
                                    "cannot be read as categories") from None
                cat[:, j] = encode_categorical(text, self.vocabularies[j])
            else:
                cat[:, j] = _indices(table[c], path, c, self.cardinalities[j])
        return dense, cat


def _check_finite(x: np.ndarray, path: Path, name: str, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {name!r}, row {i + 1}: {x[i]} is not finite{what}")


def _indices(col: Any, path: Path, name: str, cardinality: int) -> np.ndarray:
    """Already-encoded categorical indices: integers in ``[0, cardinality)``."""
    from adatt.data.files import _numbers

    x = _numbers(col, path, name)  # float64 [N]; missing values, NaN and text are errors
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


def fit_file_encoding(data_cfg: Any) -> tuple[FeatureEncoding, Any]:
    """Fit the encoding of a ``files`` data config again, as training did.

    Reads the training file, cuts the validation / test rows out of it exactly
    as :func:`adatt.data.files.load_files` does when they are not given, and
    fits the vocabularies and dense scaling on the remaining training rows.

    Returns:
        the encoding and the raw training rows it was fitted on (to check it).
    """
    from adatt.data.census import build_vocabulary
    from adatt.data.files import _load_raw, read_file_schema

    fs = read_file_schema(data_cfg.schema)
    raw = _load_raw(Path(data_cfg.train), fs)
    if data_cfg.valid is None or data_cfg.test is None:  # as load_files carves them
        n = len(raw.labels)
        perm = np.random.default_rng(data_cfg.split_seed).permutation(n)
        n_valid = round(n * data_cfg.valid_fraction) if data_cfg.valid is None else 0
        n_test = round(n * data_cfg.test_fraction) if data_cfg.test is None else 0
        raw = raw.take(np.sort(perm[n_valid + n_test :]))
    vocabs = tuple(tuple(build_vocabulary(c)) for c in raw.cat)
    mean = std = None
    if fs.standardize:
        if fs.dense:
            m = raw.dense.mean(0)
            s = raw.dense.std(0)
            s = np.where(s > 0, s, 1.0)
        else:
            m, s = np.zeros(0), np.ones(0)
        mean, std = tuple(float(v) for v in m), tuple(float(v) for v in s)
    enc = FeatureEncoding(
        dense=fs.dense,
        categorical=fs.categorical,
        cardinalities=tuple(len(v) + 1 for v in vocabs),
        raw=True,
        mean=mean,
        std=std,
        vocabularies=vocabs,
        delimiter=fs.delimiter,
    )
    return enc, raw


def encoding_from_meta(cfg: Any, schema: FeatureSchema,
                       meta: dict[str, Any] | None) -> FeatureEncoding | None:
    """The input encoding saved with a run (its ``data.json``), or None when the
    run predates it and the encoding has to be fitted again."""
    if cfg.data.source not in ("files", "stream"):  # stream: raw values, as for files
        return FeatureEncoding(schema.dense, schema.categorical, schema.cardinalities)
    saved = (meta or {}).get("info", {}).get("encoding")
    if saved is None and cfg.data.source == "stream":
        raise ServeError("a run on streamed shards is served with its saved vocabularies; "
                         "data.cat_encoding=hash runs have none (not supported yet)")
    if saved is None:
        return None
    try:
        enc = FeatureEncoding.from_dict(saved)
    except (KeyError, TypeError, ValueError) as e:
        raise ServeError(f"the run's data.json has an unreadable encoding ({e})") from None
    if (enc.dense, enc.categorical, enc.cardinalities) != (
        schema.dense, schema.categorical, schema.cardinalities
    ):
        raise ServeError("the encoding saved in the run's data.json does not match its schema")
    return enc


def load_for_serving(run_dir: PathLike) -> tuple[Any, nn.Module, FeatureSchema, str,
                                                 FeatureEncoding]:
    """``(config, model, schema, data name, encoding)`` of a finished run.

    Runs with ``data.json`` need neither their data nor their training file;
    older ``files`` runs fit the encoding again (:func:`encoding_for_run`).
    """
    from adatt.train.trainer import load_run, load_run_model

    cfg, model, schema, meta = load_run_model(run_dir)
    enc = encoding_from_meta(cfg, schema, meta)
    if enc is not None:
        return cfg, model, schema, (meta or {}).get("name", cfg.data.source), enc
    cfg, model, splits = load_run(run_dir)
    return cfg, model, splits.schema, splits.name, encoding_for_run(cfg, splits)


def encoding_for_run(cfg: Any, splits: Any) -> FeatureEncoding:
    """The input encoding of a run (its config and loaded splits).

    For a ``files`` run the encoding is fitted again (:func:`fit_file_encoding`)
    and must reproduce the training split that :func:`adatt.data.files.load_files`
    made (``splits.train``) bit for bit; otherwise a
    :class:`~adatt.serve.export.ServeError`. Both read the training file as it is
    now: a training file changed since training is only noticed when its
    vocabulary sizes changed (the checkpoint then does not fit the model).
    """
    schema: FeatureSchema = splits.schema
    if cfg.data.source != "files":
        return FeatureEncoding(schema.dense, schema.categorical, schema.cardinalities)
    enc, raw = fit_file_encoding(cfg.data)
    if (enc.dense, enc.categorical, enc.cardinalities) != (
        schema.dense, schema.categorical, schema.cardinalities
    ):
        raise ServeError(f"the encoding fitted again on {cfg.data.train} does not match the "
                         "run's schema: adatt.serve.predict and adatt.data.files have diverged")
    cat = np.zeros((len(raw.labels), len(enc.categorical)), dtype=np.int64)
    from adatt.data.census import encode_categorical

    for j, col in enumerate(raw.cat):
        cat[:, j] = encode_categorical(col, enc.vocabularies[j])  # type: ignore[index]
    dense = raw.dense
    if enc.mean is not None:
        dense = (dense - np.asarray(enc.mean)) / np.asarray(enc.std)  # [N, Dd]
    same = np.array_equal(cat, splits.train.cat.numpy()) and np.array_equal(
        dense.astype(np.float32), splits.train.dense.numpy()
    )
    if not same:
        raise ServeError(f"the encoding fitted again on {cfg.data.train} does not reproduce "
                         "the training split as adatt.data.files encodes it: adatt.serve.predict "
                         "and adatt.data.files have diverged")
    return enc


@dataclass
class Predictor:
    """A run's model, its input encoding and its output columns.

    Args:
        model: raw features -> logits ``[B, T]``.
        schema: the run's feature schema.
        encoding: how input columns become model inputs.
        batch_size: rows per forward pass.
    """

    model: nn.Module
    schema: FeatureSchema
    encoding: FeatureEncoding
    batch_size: int = 8192

    def __post_init__(self) -> None:
        self.serving = ServingModel(self.model, self.schema.task_kinds).eval()
        self.columns = output_columns(self.schema)

    @classmethod
    def from_run(cls, run_dir: PathLike, batch_size: int | None = None) -> Predictor:
        """Load ``runs/<name>`` (its selected weights) and its input encoding."""
        cfg, model, schema, _, encoding = load_for_serving(run_dir)
        bs = batch_size or cfg.train.eval_batch_size
        return cls(model, schema, encoding, bs)

    def predict_arrays(
        self, dense: np.ndarray, cat: np.ndarray, progress: bool = False
    ) -> np.ndarray:
        """``float32 [N, T]``: probabilities (binary) / predictions (regression)."""
        from tqdm import tqdm

        if self.batch_size < 1:
            raise ServeError(f"batch size must be >= 1, got {self.batch_size}")
        n = dense.shape[0]
        out = np.empty((n, self.schema.num_tasks), dtype=np.float32)
        d_all, c_all = torch.from_numpy(dense), torch.from_numpy(cat)
        with torch.inference_mode(), tqdm(total=n, unit="row",
                                          disable=not progress, desc="predict",
                                          dynamic_ncols=True) as bar:
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                probs = self.serving(d_all[start:stop], c_all[start:stop])  # [b, T]
                out[start:stop] = probs.float().numpy()
                bar.update(stop - start)
        return out


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict_file` wrote."""

    output: Path
    rows: int
    columns: list[str]


def _read_id_column(path: Path, name: str, delimiter: str | None) -> Any:
    """The id column of the input as read (Parquet: its own type; CSV: text)."""
    import pyarrow as pa

    from adatt.data.files import _header, _suffixes

    suffix = (_suffixes(path) or [""])[-1]
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        have = pq.read_schema(path).names
        if name not in have:
            raise DataError(f"{path}: id column {name!r} is missing; the file has columns "
                            f"[{', '.join(have[:20])}{', ...' if len(have) > 20 else ''}]")
        return pq.read_table(path, columns=[name])[name]
    import pyarrow.csv as pacsv

    delim = delimiter or ("\t" if suffix == ".tsv" else ",")
    have = _header(path, delim)
    if name not in have:
        raise DataError(f"{path}: id column {name!r} is missing; the file has columns "
                        f"[{', '.join(have[:20])}{', ...' if len(have) > 20 else ''}]")
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delim),
        convert_options=pacsv.ConvertOptions(
            include_columns=[name], column_types={name: pa.string()},
            strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[],
        ),
    )
    return table[name]


def _write_table(table: Any, output: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with _atomic_target(output) as tmp:
        try:
            if output.suffix.lower() == ".csv":
                pacsv.write_csv(table, tmp)
            else:
                pq.write_table(table, tmp)
        except OSError as e:  # e.g. the disk is full
            raise ServeError(f"{output}: cannot write ({e.strerror or e})") from None


def predict_file(
    run_dir: PathLike,
    input: PathLike,
    output: PathLike,
    batch_size: int | None = None,
    id_column: str | None = None,
    progress: bool = True,
    predictor: Predictor | None = None,
) -> PredictResult:
    """Score ``input`` (CSV / Parquet) with the run's model; write ``output``.

    Args:
        run_dir: a finished run (``runs/<name>``).
        input: the feature columns, encoded as the module docstring says.
        output: ``.parquet`` / ``.pq`` or ``.csv``; written atomically.
        batch_size: rows per forward pass (default: the run's eval batch size).
        id_column: an input column copied to the output (first column).
        progress: a tqdm progress bar on stderr.
        predictor: an already loaded :class:`Predictor` of ``run_dir`` (skips loading).
    """
    input, output = Path(input), Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ServeError(f"{output}: the output must end in {', '.join(OUTPUT_SUFFIXES)}")
    if batch_size is not None and batch_size < 1:
        raise ServeError(f"--batch-size must be >= 1, got {batch_size}")
    if predictor is None:
        predictor = Predictor.from_run(run_dir, batch_size)
    elif batch_size is not None:
        predictor.batch_size = batch_size
    if id_column is not None and id_column in predictor.columns:
        raise DataError(f"{input}: id column {id_column!r} has the name of an output column")
    import pyarrow as pa

    enc = predictor.encoding
    table = enc.read(input)
    dense, cat = enc.encode(table, input)
    ids = _read_id_column(input, id_column, enc.delimiter) if id_column is not None else None
    preds = predictor.predict_arrays(dense, cat, progress=progress)  # [N, T]
    cols: dict[str, Any] = {} if ids is None else {id_column: ids}
    for j, name in enumerate(predictor.columns):
        cols[name] = pa.array(preds[:, j])
    _write_table(pa.table(cols), output)
    return PredictResult(output, int(preds.shape[0]), list(cols))


def dataset_table(data: Any, schema: FeatureSchema) -> Any:
    """A loaded split's features as a pyarrow Table in the encoded input form.

    Dense columns (float32) and categorical indices (int64) by schema name: what
    :func:`predict_file` reads for a census / sim / mmoe_synthetic run.

    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema(("x",), ("c",), (4,), (TaskSpec("t"),))
    >>> ds = TensorDataset(torch.ones(2, 1), torch.tensor([[3], [0]]), torch.zeros(2, 1))
    >>> dataset_table(ds, s).to_pydict()
    {'x': [1.0, 1.0], 'c': [3, 0]}
    """
    import pyarrow as pa

    cols: dict[str, Any] = {}
    for j, c in enumerate(schema.dense):
        cols[c] = pa.array(data.dense[:, j].numpy())
    for j, c in enumerate(schema.categorical):
        cols[c] = pa.array(data.cat[:, j].numpy())
    return pa.table(cols)
