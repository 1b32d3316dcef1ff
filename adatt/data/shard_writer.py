"""Simulator rows written as Parquet shards: the layout a streamed source reads.

Layout (your own data can look the same)::

    DIR/schema.yaml                 the files schema (adatt.data.files), standardize: false
    DIR/train/part-00000.parquet    training shards, read a row group at a time
    DIR/train/part-00001.parquet    ...
    DIR/train/adatt-manifest.json   size and SHA-256 of every shard (adatt.data.manifest)
    DIR/valid.parquet               validation and test: small, loaded in memory
    DIR/test.parquet
    DIR/adatt-manifest.json         size and SHA-256 of valid, test and schema.yaml

Every file is written to a temporary file and renamed into place; the
manifests are written last. A killed run leaves no partial file under a final
name, and its temporary files are removed by the next run writing into the
same directory (:mod:`adatt.data.tempfiles`). ``--out`` naming an existing
file (not a directory), a directory that cannot be written and a full disk are
one-line :class:`~adatt.data.errors.DataError`.

Example:
    >>> import tempfile
    >>> d = write_sim_shards(tempfile.mkdtemp(), "group1", rows=3_000, shard_rows=1_000,
    ...                      valid_rows=200, test_rows=200, row_group_rows=500)
    >>> sorted(p.name for p in (d / "train").iterdir())
    ['adatt-manifest.json', 'part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet']
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from adatt.data.errors import DataError
from adatt.data.manifest import MANIFEST, write_manifest
from adatt.data.schema import TaskSpec
from adatt.data.tempfiles import sweep, temp_name

__all__ = ["write_sim_shards", "label_entry"]

PathLike = str | os.PathLike[str]


def label_entry(task: TaskSpec) -> str | dict[str, str]:
    """A task as an entry of the files schema's ``labels``: the shorthand (its kind) for
    a fully-labelled task, else the long form with ``missing`` / ``condition`` / ``weight``.

    >>> label_entry(TaskSpec("click")), label_entry(TaskSpec("finish", condition="view"))
    ('binary', {'kind': 'binary', 'condition': 'view'})
    """
    if not (task.partial or task.weight):
        return task.kind
    entry = {"kind": task.kind, "missing": task.missing, "condition": task.condition,
             "weight": task.weight}
    return {k: v for k, v in entry.items() if v is not None and (k, v) != ("missing", "error")}


def write_sim_shards(
    out: PathLike,
    preset: str = "group1",
    rows: int = 1_000_000,
    *,
    seed: int = 0,
    shard_rows: int = 500_000,
    valid_rows: int | None = None,
    test_rows: int | None = None,
    row_group_rows: int = 65_536,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write simulator rows as Parquet shards, valid / test files and a schema; returns ``out``.

    The simulated data set has ``rows + valid_rows + test_rows`` rows (its
    world is sized by that total): rows ``[0, rows)`` go to
    ``out/train/part-NNNNN.parquet`` (``shard_rows`` each, row groups of
    ``row_group_rows``), the next ``valid_rows`` to ``out/valid.parquet``, the
    last ``test_rows`` to ``out/test.parquet`` (each default
    ``min(rows // 10, 100_000)``, at least 1). The rows are those of
    :func:`adatt.data.simulator.iter_chunks` with the same total, generated a
    row group at a time (memory: one row group). ``out/schema.yaml`` is a
    :mod:`adatt.data.files` schema with ``standardize: false`` (the simulator's
    dense features are already standardised). Categorical columns hold the
    simulator's integer IDs, labels float32 (NaN where a partial task is
    unlabelled; the schema gives such a task in the long form, with its
    ``missing`` and ``condition``: :func:`label_entry`), dense float32.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from tqdm import tqdm

    from adatt.data.simulator import CATEGORICAL, DENSE, PRESETS, Simulator

    if preset not in PRESETS:
        raise DataError(f"unknown simulator preset {preset!r}; known: {list(PRESETS)}")
    default = max(1, min(rows // 10, 100_000))
    valid_rows = default if valid_rows is None else valid_rows
    test_rows = default if test_rows is None else test_rows
    if rows < 1 or shard_rows < 1 or row_group_rows < 1 or valid_rows < 1 or test_rows < 1:
        raise DataError("rows, shard_rows, row_group_rows, valid_rows and test_rows must be >= 1")
    out = Path(out)
    train_dir = out / "train"
    for d in (out, train_dir):
        if d.exists() and not d.is_dir():
            raise DataError(f"{d}: exists and is not a directory; give --out a directory")
    old = sorted(train_dir.glob("part-*.parquet")) if train_dir.is_dir() else []
    if old and not overwrite:
        raise DataError(f"{out}: already holds shards ({len(old)} in {train_dir}); "
                        "pass --overwrite to replace them")
    try:
        train_dir.mkdir(parents=True, exist_ok=True)
        for d in (out, train_dir):
            sweep(d)  # temporary files of killed runs
        for p in (train_dir / MANIFEST, out / MANIFEST, *old):  # manifests first
            p.unlink(missing_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot write ({e.strerror or e})") from None
    tasks = PRESETS[preset].tasks
    fields = ([pa.field(c, pa.float32()) for c in DENSE]
              + [pa.field(c, pa.int64()) for c in CATEGORICAL]
              + [pa.field(t, pa.float32()) for t in tasks])
    arrow_schema = pa.schema(fields)
    sim = Simulator(preset, rows + valid_rows + test_rows, seed)
    bar = tqdm(total=rows + valid_rows + test_rows, unit="row", unit_scale=True,
               disable=not progress, desc="write shards")

    def write(path: Path, start: int, stop: int) -> None:
        tmp = temp_name(path)
        try:
            with pq.ParquetWriter(tmp, arrow_schema, compression="snappy") as w:
                for b in sim.chunks(row_group_rows, start, stop):
                    d, c, y = b.dense.numpy(), b.cat.numpy(), b.labels.numpy()
                    cols = ([pa.array(d[:, j]) for j in range(d.shape[1])]
                            + [pa.array(c[:, j]) for j in range(c.shape[1])]
                            + [pa.array(y[:, j]) for j in range(y.shape[1])])
                    w.write_table(pa.Table.from_arrays(cols, schema=arrow_schema))
                    bar.update(len(b))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    n_shards = math.ceil(rows / shard_rows)
    names = [f"part-{s:05d}.parquet" for s in range(n_shards)]
    header = (f"# simulator preset {preset}, seed {seed}: {rows} training rows in {n_shards} "
              f"shards, {valid_rows} valid, {test_rows} test rows\n")
    doc = {"dense": list(DENSE), "categorical": list(CATEGORICAL),
           "labels": {t.name: label_entry(t) for t in sim.schema.tasks}, "standardize": False}
    try:
        for s, name in enumerate(names):
            write(train_dir / name, s * shard_rows, min(rows, (s + 1) * shard_rows))
        write(out / "valid.parquet", rows, rows + valid_rows)
        write(out / "test.parquet", rows + valid_rows, rows + valid_rows + test_rows)
        bar.close()
        schema_tmp = temp_name(out / "schema.yaml")
        try:
            schema_tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False))
            os.replace(schema_tmp, out / "schema.yaml")
        finally:
            schema_tmp.unlink(missing_ok=True)
        write_manifest(train_dir, names)
        write_manifest(out, ["valid.parquet", "test.parquet", "schema.yaml"])
    except (OSError, pa.ArrowException) as e:  # e.g. the disk is full
        msg = getattr(e, "strerror", None) or " ".join(str(e).split())[:200]
        raise DataError(f"{out}: cannot write the shards ({msg})") from None
    return out
