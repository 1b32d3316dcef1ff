"""Batch scoring of a CSV / Parquet file with a trained run.

Notation: N rows, B batch, Dd dense width, F categorical fields, T tasks.

``predict_file(run_dir, input, output)`` reads the feature columns of
``input`` (named as in the run's schema), turns them into ``dense [N, Dd]``
and ``cat [N, F]`` as the run's training data was encoded, runs the model in
batches and writes one column per task -- ``<task>_prob`` (binary,
``sigmoid(logit)``) or ``<task>_pred`` (regression, in the labels' original
units: ``center + scale * output`` when they were standardised) -- plus an
optional id column passed through, to a Parquet or CSV file (written to a
temporary file and renamed: no partial output; an output naming the input
file, also through a link or another relative path, is refused).

How input columns are encoded (:class:`~adatt.data.encoding.FeatureEncoding`)
    * A run on raw columns (``data.source: files`` or ``stream``): the columns
      as in the training files, encoded by the encoding fitted in training and
      saved in the run's ``data.json`` (:mod:`adatt.data.encoding`):
      categorical values compared as text and coded ``1 + position`` in the
      sorted training vocabulary (0 for a value not seen in training; an empty
      / null value is the category ``""``) or hashed (``cat_encoding: hash``),
      dense values shifted and scaled by the training mean and standard
      deviation (when the schema's ``standardize`` is on); a multi-valued
      column is read as in training (a delimited string in CSV, a list in
      Parquet), its elements coded with its own vocabulary or hash and its list
      cut to (or, with ``truncate: false``, checked against) its
      ``max_length``. A run made before
      ``data.json`` held the encoding loads its data again, which fits it again.
    * Any other run (census, sim, mmoe_synthetic): the already-encoded columns,
      as the data loader returns them: dense columns (already scaled) as
      numbers, categorical columns as integer indices in ``[0, cardinality)``.
      :func:`dataset_table` writes a loaded split in this form.

The run's model, its encoding and the output transform are loaded by
:func:`adatt.serve.serving.load_for_serving` (shared with
:mod:`adatt.serve.export`); the names it holds are importable from here too.

Errors
    A missing column, a non-number in a dense column, a missing value / NaN /
    infinity, a categorical index that is not an integer or out of range, a
    missing id column: a one-line :class:`~adatt.data.errors.DataError` naming the
    file, the column and the (1-based data) row; nothing is written.

Example:
    >>> import pyarrow as pa
    >>> enc = FeatureEncoding(dense=("x",), categorical=("c",), cardinalities=(3,), kind="vocab",
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

from adatt.data.encoding import FeatureEncoding
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema
from adatt.data.tables import PARQUET_SUFFIXES, file_suffix, read_header
from adatt.serve.serving import (
    ServeError,
    ServingModel,
    atomic_target,
    encoding_for_run,
    encoding_from_meta,
    load_for_serving,
    output_columns,
)

__all__ = [
    "FeatureEncoding",
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
        self.serving = ServingModel.of_schema(self.model, self.schema).eval()
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

    suffix = file_suffix(path)
    if suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        have = pq.read_schema(path).names
        if name not in have:
            raise DataError(f"{path}: id column {name!r} is missing; the file has columns "
                            f"[{', '.join(have[:20])}{', ...' if len(have) > 20 else ''}]")
        return pq.read_table(path, columns=[name])[name]
    import pyarrow.csv as pacsv

    delim = delimiter or ("\t" if suffix == ".tsv" else ",")
    have = read_header(path, delim)
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

    with atomic_target(output) as tmp:
        try:
            if output.suffix.lower() == ".csv":
                pacsv.write_csv(table, tmp)
            else:
                pq.write_table(table, tmp)
        except OSError as e:  # e.g. the disk is full
            raise ServeError(f"{output}: cannot write ({e.strerror or e})") from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (relative paths, symbolic and hard links)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


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
    if _same_file(input, output):
        raise ServeError(f"{output}: is the input file ({input}); write the predictions to "
                         "another file")
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
