"""Data for adatt: batches and schemas, the data sources, and the loader the trainer calls.

Sources: UCI Census-Income (KDD) (:mod:`adatt.data.census`), a short-video
recommender simulator (:mod:`adatt.data.simulator`), the MMoE paper's
synthetic generator (:mod:`adatt.data.mmoe_synthetic`) and the user's own
CSV / Parquet files (:mod:`adatt.data.files`), also streamed from Parquet
shards (:mod:`adatt.data.stream`). Raw columns are encoded by one
:class:`FeatureEncoding` (:mod:`adatt.data.encoding`); the trainer reads
training batches through a :class:`BatchSource` (:mod:`adatt.data.sources`).
:func:`load_splits` takes a :class:`DataConfig` and returns :class:`Splits`;
:func:`describe` summarises them.

Importing this package is cheap: the names below load their module on first use.

Example:
    >>> import adatt.data as data
    >>> data.DataConfig(source="sim", rows=10_000).preset
    'group1'
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Batch",
    "TensorDataset",
    "FeatureSchema",
    "TaskSpec",
    "MultiValued",
    "Splits",
    "DataError",
    "DataConfig",
    "load_splits",
    "load_census",
    "load_sim",
    "iter_chunks",
    "load_mmoe_synthetic",
    "load_files",
    "load_stream",
    "FeatureEncoding",
    "BatchSource",
    "describe",
]

_WHERE = {
    "Batch": "batch",
    "TensorDataset": "batch",
    "FeatureSchema": "schema",
    "TaskSpec": "schema",
    "MultiValued": "schema",
    "Splits": "splits",
    "DataError": "errors",
    "DataConfig": "config",
    "load_splits": "config",
    "load_census": "census",
    "load_sim": "simulator",
    "iter_chunks": "simulator",
    "load_mmoe_synthetic": "mmoe_synthetic",
    "load_files": "files",
    "load_stream": "stream",
    "FeatureEncoding": "encoding",
    "BatchSource": "sources",
    "describe": "info",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"adatt.data.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adatt.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
