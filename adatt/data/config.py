"""The data section of a run's configuration, and the one entry point that loads it.

:class:`DataConfig` is a pydantic model (unknown keys are errors) holding the
options of every source; :func:`load_splits` dispatches on ``source``:

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

Options of other sources are ignored. :meth:`DataConfig.from_dict` turns a
validation failure into a one-line :class:`~adatt.data.errors.DataError`.

Example:
    >>> cfg = DataConfig.from_dict({"source": "mmoe_synthetic", "rows": 1000, "dim": 4})
    >>> load_splits(cfg).sizes()
    {'train': 800, 'valid': 100, 'test': 100}
    >>> DataConfig.from_dict({"source": "sim", "rowz": 10})
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: data config: rowz: Extra inputs are not permitted
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adatt.data.errors import DataError
from adatt.data.splits import Splits

__all__ = ["DataConfig", "load_splits", "format_validation_error"]

SIM_PRESETS = ("group1", "group2", "group3", "all")  # adatt.data.simulator.PRESETS


# The files option is called ``schema`` (the YAML key users write); it shadows pydantic's
# deprecated ``BaseModel.schema()`` method, about which pydantic warns once, here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class DataConfig(BaseModel):
        """Which data to load and how; the module docstring says which field serves which source."""

        model_config = ConfigDict(extra="forbid")

        source: Literal["census", "sim", "mmoe_synthetic", "files", "stream"] = "census"
        # census
        data_dir: str | None = None
        instance_weight: Literal["drop", "feature", "sample_weight"] = "drop"
        dense_scaling: Literal["minmax", "standard"] = "minmax"
        split_seed: int = 0
        cache_dir: str | None = None
        use_cache: bool = True
        download: bool = True
        # sim (rows, seed and fractions also serve mmoe_synthetic)
        preset: str = "group1"
        rows: int = Field(100_000, ge=1)
        seed: int = 0
        valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
        test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
        # mmoe_synthetic
        correlation: float = Field(0.5, ge=-1.0, le=1.0)
        dim: int = Field(100, ge=2)
        # files
        schema: str | None = None  # type: ignore[assignment]
        train: str | None = None
        valid: str | None = None
        test: str | None = None
        # stream (also schema, train, valid, test)
        shuffle_buffer: int = Field(131_072, ge=0)  # rows; at least one batch is used
        cat_encoding: Literal["vocab", "hash"] = "vocab"
        fit_rows: int = Field(1_000_000, ge=1)  # sample rows for vocabulary and scaling
        hash_buckets: int = Field(1_000_000, ge=1)  # per field, cat_encoding=hash
        # under torchrun: each process streams only its shard files (docs/distributed.md)
        rank_shards: bool = False

        @model_validator(mode="after")
        def _check(self) -> DataConfig:
            if self.valid_fraction + self.test_fraction >= 1.0:
                raise ValueError(
                    f"valid_fraction + test_fraction must be < 1, got "
                    f"{self.valid_fraction} + {self.test_fraction}"
                )
            if self.source == "sim" and self.preset not in SIM_PRESETS:
                raise ValueError(
                    f"unknown sim preset {self.preset!r}; known: {', '.join(SIM_PRESETS)}"
                )
            if self.source == "files":
                missing = [k for k in ("schema", "train") if getattr(self, k) is None]
                if missing:
                    raise ValueError(f"source 'files' needs {' and '.join(missing)}")
            if self.source == "stream":
                missing = [k for k in ("schema", "train", "valid", "test")
                           if getattr(self, k) is None]
                if missing:
                    raise ValueError(f"source 'stream' needs {', '.join(missing)}")
            return self

        @classmethod
        def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
            """Validate ``d``; a problem is a one-line :class:`DataError`."""
            try:
                return cls.model_validate(dict(d))
            except ValidationError as e:
                raise DataError(format_validation_error(e)) from None


def format_validation_error(e: ValidationError, prefix: str = "data config") -> str:
    """One line: ``prefix: field: message (got value); field2: ...``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] not in ("extra_forbidden", "missing", "value_error"):
            got = f" (got {err.get('input')!r})"
        parts.append(f"{loc + ': ' if loc else ''}{msg}{got}")
    return f"{prefix}: " + "; ".join(parts)


def load_splits(cfg: DataConfig | Mapping[str, Any]) -> Splits:
    """Load the train / valid / test splits that ``cfg`` describes."""
    if not isinstance(cfg, DataConfig):
        cfg = DataConfig.from_dict(cfg)
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

        assert None not in (cfg.schema, cfg.train, cfg.valid, cfg.test)  # checked above
        return load_stream(
            cfg.schema,  # type: ignore[arg-type]
            cfg.train,  # type: ignore[arg-type]
            cfg.valid,  # type: ignore[arg-type]
            cfg.test,  # type: ignore[arg-type]
            shuffle_buffer=cfg.shuffle_buffer,
            cat_encoding=cfg.cat_encoding,
            fit_rows=cfg.fit_rows,
            hash_buckets=cfg.hash_buckets,
        )
    from adatt.data.files import load_files

    assert cfg.schema is not None and cfg.train is not None  # checked by the validator
    return load_files(
        cfg.schema,
        cfg.train,
        cfg.valid,
        cfg.test,
        valid_fraction=cfg.valid_fraction,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
    )
