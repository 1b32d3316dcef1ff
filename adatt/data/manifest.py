"""Checksums of data files: the manifest ``adatt data write-shards`` writes beside its files.

A directory of files written by :func:`adatt.data.shard_writer.write_sim_shards`
holds ``adatt-manifest.json``: per file (by name) its size in bytes and its
SHA-256::

    {"format": "adatt-manifest", "version": 1, "algorithm": "sha256",
     "files": {"part-00000.parquet": {"bytes": 1234, "sha256": "9f86..."}, ...}}

(``DIR/train/adatt-manifest.json`` for the training shards,
``DIR/adatt-manifest.json`` for ``valid.parquet``, ``test.parquet`` and
``schema.yaml``.)

Verification, when a file has an entry in the manifest beside it:

* its size, when the shards are inspected (:func:`check_size`: a stat, before
  any training);
* its SHA-256, once per file per process (:func:`verify`): the stream verifies
  a shard before it first reads it (:mod:`adatt.data.shard_stream`), the
  in-memory files (valid, test) when they are read. While the stream reads a
  shard, the next one in its order is hashed in a background thread
  (:func:`prefetch`; hashing releases the GIL), so only a run's first shard is
  hashed on the reading thread; hashing also brings the file into the page
  cache for the Parquet reader. Later epochs do not hash again.

A mismatch is a one-line :class:`~adatt.data.errors.DataError` naming the
file. Files without a manifest beside them (written by other tools), or not
listed in it, are read unverified; a file named ``adatt-manifest.json`` that is
not such a manifest is ignored, a damaged one is an error.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.parquet").write_bytes(b"some bytes")
    >>> write_manifest(d, ["a.parquet"])
    >>> verify(d / "a.parquet")
    True
    >>> _ = (d / "a.parquet").write_bytes(b"Some bytes")
    >>> forget(d / "a.parquet")
    >>> verify(d / "a.parquet")
    Traceback (most recent call last):
    ...
    adatt.data.errors.DataError: .../a.parquet: damaged: its SHA-256 differs from ...
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adatt.data.errors import DataError
from adatt.data.tempfiles import sweep, temp_name

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["MANIFEST", "file_digest", "write_manifest", "read_manifest", "entry", "check_size",
           "verify", "prefetch", "forget"]

MANIFEST = "adatt-manifest.json"
FORMAT = "adatt-manifest"
CHUNK = 1 << 20  # bytes hashed per read

_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) verified in this process
_MANIFESTS: dict[str, tuple[tuple[int, int], dict[str, Any] | None]] = {}
_PENDING: dict[str, Future[bool]] = {}  # background checks (prefetch) by resolved path
_POOL: ThreadPoolExecutor | None = None


def file_digest(path: Path) -> tuple[int, str]:
    """``(size in bytes, SHA-256 hex)`` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def write_manifest(directory: Path, names: Iterable[str]) -> None:
    """Hash the files ``names`` of ``directory`` and write its manifest (atomically)."""
    directory = Path(directory)
    files = {}
    for name in sorted(names):
        size, digest = file_digest(directory / name)
        files[name] = {"bytes": size, "sha256": digest}
    doc = {"format": FORMAT, "version": 1, "algorithm": "sha256", "files": files}
    target = directory / MANIFEST
    tmp = temp_name(target)
    sweep(directory)
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _MANIFESTS.pop(str(target), None)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The ``files`` of the manifest in ``directory`` (None: no manifest, or not ours)."""
    target = Path(directory) / MANIFEST
    try:
        st = target.stat()
    except OSError:
        return None
    key = (st.st_size, st.st_mtime_ns)
    cached = _MANIFESTS.get(str(target))
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        doc = json.loads(target.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{target}: damaged manifest, not readable as JSON "
                        f"({' '.join(str(e).split())[:120]}); write the files again") from None
    files: dict[str, Any] | None = None
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        files = doc.get("files")
        ok = isinstance(files, dict) and all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int)
            and isinstance(v.get("sha256"), str) for v in files.values())
        if doc.get("algorithm") != "sha256" or not ok:
            raise DataError(f"{target}: damaged manifest (unexpected content); write the files "
                            "again")
    _MANIFESTS[str(target)] = (key, files)
    return files


def entry(path: Path) -> dict[str, Any] | None:
    """The manifest entry of ``path`` (``{"bytes", "sha256"}``) or None."""
    files = read_manifest(Path(path).parent)
    return None if files is None else files.get(Path(path).name)


def check_size(path: Path) -> None:
    """A :class:`DataError` when ``path``'s size differs from its manifest entry."""
    e = entry(path)
    if e is None:
        return
    size = Path(path).stat().st_size
    if size != e["bytes"]:
        raise DataError(f"{path}: damaged: {size:,} bytes, but {MANIFEST} (written with the "
                        f"file) says {e['bytes']:,}; restore the file or write it again")


def verify(path: Path) -> bool:
    """Check ``path`` against its manifest entry, once per process; False: no entry."""
    path = Path(path)
    pending = _PENDING.pop(str(path.resolve()), None)
    if pending is not None:
        pending.result()  # raises the background check's DataError
    return _check(path)


def _check(path: Path) -> bool:
    e = entry(path)
    if e is None:
        return False
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return True
    check_size(path)
    _, digest = file_digest(path)
    if digest != e["sha256"]:
        raise DataError(f"{path}: damaged: its SHA-256 differs from {MANIFEST} (written with "
                        "the file); restore the file or write it again")
    _VERIFIED.add(key)
    return True


def prefetch(path: Path) -> None:
    """Start verifying ``path`` in a background thread (hashing releases the GIL), so that
    :func:`verify` finds it done: the stream prefetches the shard it will read next."""
    global _POOL
    path = Path(path)
    try:
        e = entry(path)
        st = path.stat()
    except (OSError, DataError):
        return  # verify() reports it, when the file is read
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if e is None or key in _VERIFIED or key[0] in _PENDING:
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(1, thread_name_prefix="adatt-verify")
    _PENDING[key[0]] = _POOL.submit(_check, path)


def forget(path: Path) -> None:
    """Verify ``path`` again on its next :func:`verify` (tests; a file rewritten in place)."""
    p = str(Path(path).resolve())
    for key in [k for k in _VERIFIED if k[0] == p]:
        _VERIFIED.discard(key)
