"""The data section of a run's configuration, and the one entry point that loads it.

:class:`DataConfig` is the base of one pydantic model per source, each holding
only its own options (a key of another source, or an unknown key, is an error
naming the key and the source); ``DataConfig(source=..., ...)`` and
:meth:`DataConfig.from_dict` build the model of that source, and the run
config's ``data`` section is the discriminated union :data:`AnyDataConfig`.
:func:`load_splits` dispatches on ``source``:

* ``census``: UCI Census-Income (KDD), :func:`adatt.data.census.load_census`
  (``data_dir``, ``instance_weight``, ``split_seed``, ``cache_dir``,
  ``use_cache``, ``download``);
* ``sim``: the recommender simulator, :func:`adatt.data.simulator.load_sim`
  (``preset``, ``rows``, ``seed``, ``valid_fraction``, ``test_fraction``);
* ``mmoe_synthetic``: the MMoE paper's generator,
  :func:`adatt.data.mmoe_synthetic.load_mmoe_synthetic` (``correlation``,
  ``rows``, ``dim``, ``seed``, fractions);
* ``files``: the user's CSV / Parquet files, :func:`adatt.data.files.load_files`
  (``schema``, ``train``, ``valid``, ``test``; a missing ``valid`` / ``test``
  is cut from ``train`` with the fractions and ``split_seed``);
* ``stream``: Parquet shards streamed from disk for training, in-memory
  validation and test files, :func:`adatt.data.stream.load_stream` (``schema``,
  ``train``: a directory, glob or file of shards, ``valid``, ``test``: both
  required, ``shuffle_buffer``, ``cat_encoding``, ``fit_rows``, ``hash_buckets``,
  ``rank_shards``: read by the trainer, see :func:`adatt.train.distributed.batch_source`).

Every source also has ``standardize_labels`` (default true): regression labels
are standardised on the training split (:mod:`adatt.data.label_scaling`), metrics
and predictions reported in the original units.

:meth:`DataConfig.from_dict` turns a validation failure into a one-line
:class:`~adatt.data.errors.DataError`.

Example:
    >>> cfg = DataConfig.from_dict({"source": "mmoe_synthetic", "rows": 1000, "dim": 4})
    >>> load_splits(cfg).sizes()
    {'train': 800, 'valid': 100, 'test': 100}
    >>> DataConfig.from_dict({"source": "census", "rows": 10})
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: data config: rows: not an option of source census (census has: ...)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from adatt.data.errors import DataError
from adatt.data.splits import Splits

__all__ = ["DataConfig", "AnyDataConfig", "CensusData", "SimData", "MmoeSyntheticData",
           "FilesData", "StreamData", "SOURCES", "load_splits", "format_validation_error"]

SIM_PRESETS = ("group1", "group2", "group3", "all", "partial")  # adatt.data.simulator.PRESETS


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def __new__(cls, **values: Any) -> Any:
        # ``DataConfig(source=..., ...)`` builds the model of that source
        if cls is DataConfig:
            return _ADAPTER.validate_python({"source": "census", **values})
        return super().__new__(cls)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnyDataConfig:
        """Validate ``d`` as the config of its ``source`` (default ``census``);
        a problem is a one-line :class:`DataError`."""
        d = {"source": "census" if cls is DataConfig else cls.model_fields["source"].default,
             **d}
        try:
            return _ADAPTER.validate_python(d)
        except ValidationError as e:
            raise DataError(format_validation_error(e)) from None


class DataConfig(_Source):
    """The data section: ``DataConfig(source=..., **options)`` or :meth:`from_dict` builds
    the model of that source (:class:`CensusData`, :class:`SimData`,
    :class:`MmoeSyntheticData`, :class:`FilesData`, :class:`StreamData`); each holds
    only its own options, and every one is an instance of this class."""

    source: str = Field(description="the data source: census, sim, mmoe_synthetic, files or stream")
    standardize_labels: bool = Field(
        True, description="regression labels -> (y - mean) / std of the training split; "
                          "metrics and predictions stay in the original units (docs/data.md)")


class _Fractions(DataConfig):
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                  description="fraction of the rows cut for validation")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                 description="fraction of the rows cut for test")

    @model_validator(mode="after")
    def _check_fractions(self) -> _Fractions:
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction must be < 1, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        return self


class CensusData(DataConfig):
    """``source: census``: UCI Census-Income (KDD), :func:`adatt.data.census.load_census`."""

    source: Literal["census"] = Field("census", description="UCI Census-Income (KDD)")
    data_dir: str | None = Field(None, description="directory holding the two UCI files "
                                 "(null: $ADATT_DATA_DIR, then the download cache)")
    instance_weight: Literal["drop", "feature", "sample_weight"] = Field(
        "drop", description="the census instance weight: dropped, a dense feature or a "
                            "sample weight of the loss")
    dense_scaling: Literal["minmax", "standard"] = Field(
        "minmax", description="scaling of the dense features (minmax: the paper's protocol)")
    split_seed: int = Field(0, description="seed of the valid / test split of the UCI test file")
    cache_dir: str | None = Field(None, description="root of the caches "
                                  "(null: $ADATT_CACHE_DIR, else the user cache directory)")
    use_cache: bool = Field(True, description="read and write the processed-split cache")
    download: bool = Field(True, description="download from UCI when no directory holds "
                           "the files")


class SimData(_Fractions):
    """``source: sim``: the recommender simulator, :func:`adatt.data.simulator.load_sim`."""

    source: Literal["sim"] = Field("sim", description="the recommender simulator")
    preset: str = Field("group1", description="task group: group1, group2, group3 or all")
    rows: int = Field(100_000, ge=1, description="rows generated")
    seed: int = Field(0, description="seed of the generator and the split")

    @model_validator(mode="after")
    def _check_preset(self) -> SimData:
        if self.preset not in SIM_PRESETS:
            raise ValueError(
                f"unknown sim preset {self.preset!r}; known: {', '.join(SIM_PRESETS)}"
            )
        return self


class MmoeSyntheticData(_Fractions):
    """``source: mmoe_synthetic``: :func:`adatt.data.mmoe_synthetic.load_mmoe_synthetic`."""

    source: Literal["mmoe_synthetic"] = Field(
        "mmoe_synthetic", description="the MMoE paper's synthetic two-task generator")
    correlation: float = Field(0.5, ge=-1.0, le=1.0,
                               description="correlation of the two tasks' label functions")
    rows: int = Field(100_000, ge=1, description="rows generated")
    dim: int = Field(100, ge=2, description="input dimension")
    seed: int = Field(0, description="seed of the generator and the split")


# The files option is called ``schema`` (the YAML key users write); it shadows pydantic's
# deprecated ``BaseModel.schema()`` method, about which pydantic warns once, here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class FilesData(_Fractions):
        """``source: files``: CSV / Parquet files, :func:`adatt.data.files.load_files`."""

        source: Literal["files"] = Field("files", description="CSV / Parquet files")
        schema: str = Field(  # type: ignore[assignment]
            description="schema YAML naming the columns (docs/data.md)")
        train: str = Field(description="training file (CSV or Parquet)")
        valid: str | None = Field(None, description="validation file "
                                  "(null: cut from train with valid_fraction)")
        test: str | None = Field(None, description="test file "
                                 "(null: cut from train with test_fraction)")
        split_seed: int = Field(0, description="seed of the splits cut from train")

    class StreamData(DataConfig):
        """``source: stream``: streamed Parquet shards, :func:`adatt.data.stream.load_stream`."""

        source: Literal["stream"] = Field("stream",
                                          description="Parquet shards streamed from disk")
        schema: str = Field(  # type: ignore[assignment]
            description="schema YAML naming the columns (docs/data.md)")
        train: str = Field(description="training shards: a directory, glob or file")
        valid: str = Field(description="validation file, read into memory")
        test: str = Field(description="test file, read into memory")
        shuffle_buffer: int = Field(131_072, ge=0, description="rows of the shuffle buffer "
                                    "(at least one batch is used)")
        cat_encoding: Literal["vocab", "hash"] = Field(
            "vocab", description="categorical encoding: a vocabulary fit on a sample, or hashing")
        fit_rows: int = Field(1_000_000, ge=1,
                              description="sample rows for the vocabulary and the scaling")
        hash_buckets: int = Field(1_000_000, ge=1,
                                  description="buckets per field with cat_encoding=hash")
        rank_shards: bool = Field(False, description="under torchrun, each process streams "
                                  "only its own shard files (docs/distributed.md)")


#: The data section's type: one model per source, chosen by ``source``.
AnyDataConfig = Annotated[
    CensusData | SimData | MmoeSyntheticData | FilesData | StreamData,
    Field(discriminator="source"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyDataConfig)
SOURCES: dict[str, type[DataConfig]] = {
    "census": CensusData, "sim": SimData, "mmoe_synthetic": MmoeSyntheticData,
    "files": FilesData, "stream": StreamData,
}


def format_validation_error(e: ValidationError, prefix: str = "data config") -> str:
    """One line: ``prefix: field: message (got value); field2: ...``.

    A key that the chosen source does not have is named with the source and its options.
    """
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        source = loc.pop(0) if loc and loc[0] in SOURCES else None
        key = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] == "extra_forbidden" and source is not None:
            common = ("source", *DataConfig.model_fields)  # every source's options: last
            options = ", ".join([*(k for k in SOURCES[source].model_fields if k not in common),
                                 *(k for k in DataConfig.model_fields if k != "source")])
            msg = f"not an option of source {source} ({source} has: {options})"
        elif err["type"] == "union_tag_invalid":
            key = "source"
            msg = "Input should be " + ", ".join(repr(s) for s in SOURCES)
            got = f" (got {err['ctx']['tag']!r})"
        elif err["type"] not in ("extra_forbidden", "missing", "value_error"):
            got = f" (got {err.get('input')!r})"
        if source is not None and err["type"] == "missing":
            msg = f"required by source {source}"
        parts.append(f"{key + ': ' if key else ''}{msg}{got}")
    return f"{prefix}: " + "; ".join(parts)


def load_splits(cfg: DataConfig | Mapping[str, Any]) -> Splits:
    """Load the train / valid / test splits that ``cfg`` describes, regression labels
    standardised on the training split unless ``standardize_labels`` is false
    (:mod:`adatt.data.label_scaling`)."""
    from adatt.data.label_scaling import standardize_labels, warn_unscaled_labels

    if not isinstance(cfg, (CensusData, SimData, MmoeSyntheticData, FilesData, StreamData)):
        cfg = DataConfig.from_dict(cfg)
    splits = _load_source(cfg)
    fit_rows = getattr(cfg, "fit_rows", None)  # stream: the statistics' sample
    if cfg.standardize_labels:
        return standardize_labels(splits, fit_rows)
    warn_unscaled_labels(splits, fit_rows)
    return splits


def _load_source(cfg: Any) -> Splits:
    """The splits of ``cfg``'s source, labels as read."""
    if cfg.source == "census":
        from adatt.data.census import load_census

        return load_census(
            cfg.data_dir,
            instance_weight=cfg.instance_weight,
            split_seed=cfg.split_seed,
            dense_scaling=cfg.dense_scaling,
            cache_dir=cfg.cache_dir,
            use_cache=cfg.use_cache,
            download=cfg.download,
        )
    if cfg.source == "sim":
        from adatt.data.simulator import load_sim

        return load_sim(cfg.preset, cfg.rows, cfg.seed, cfg.valid_fraction, cfg.test_fraction)
    if cfg.source == "mmoe_synthetic":
        from adatt.data.mmoe_synthetic import load_mmoe_synthetic

        return load_mmoe_synthetic(
            cfg.correlation, cfg.rows, cfg.dim, cfg.seed, cfg.valid_fraction, cfg.test_fraction
        )
    if cfg.source == "stream":
        from adatt.data.stream import load_stream

        return load_stream(
            cfg.schema,
            cfg.train,
            cfg.valid,
            cfg.test,
            shuffle_buffer=cfg.shuffle_buffer,
            cat_encoding=cfg.cat_encoding,
            fit_rows=cfg.fit_rows,
            hash_buckets=cfg.hash_buckets,
        )
    from adatt.data.files import load_files

    return load_files(
        cfg.schema,
        cfg.train,
        cfg.valid,
        cfg.test,
        valid_fraction=cfg.valid_fraction,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
    )
