"""Temporary files of atomic writes, and the rule that removes those a killed process left.

Every file ``adatt`` writes for the user (``predict`` outputs, exported models
and their sidecars, ``data write-shards`` shards, manifest and schema) is first
written to a temporary file in the same directory, then renamed into place
(``os.replace``: the old file or the new one, never half of one). The
temporary file is named after its target and the writing process::

    .<target name>.adatt-<pid>.tmp<target suffix>

A process killed mid-write (``kill -9``, power loss) cannot remove its own
temporary file; the next ``adatt`` command that writes into the same directory
does: :func:`sweep` removes every ``*.adatt-<pid>.tmp*`` file there whose
process ``<pid>`` is no longer running on this machine. Temporary files of
running processes (two commands writing side by side) are left alone.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> temp_name(d / "out.parquet").name == f".out.parquet.adatt-{os.getpid()}.tmp.parquet"
    True
    >>> dead = d / ".out.parquet.adatt-999999999.tmp.parquet"
    >>> _ = dead.write_text("left by a killed process")
    >>> [p.name for p in sweep(d)], dead.exists()
    (['.out.parquet.adatt-999999999.tmp.parquet'], False)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["temp_name", "sweep", "pid_alive"]

_PATTERN = re.compile(r"^\..+\.adatt-(\d+)\.tmp(\.[^/]*)?$")


def temp_name(target: Path) -> Path:
    """The temporary file this process writes ``target`` through (same directory)."""
    return target.with_name(f".{target.name}.adatt-{os.getpid()}.tmp{target.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # not a pid at all
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def sweep(directory: Path) -> list[Path]:
    """Remove the temporary files of dead ``adatt`` processes in ``directory``; returns them.

    A directory that does not exist or cannot be listed has nothing to sweep.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _PATTERN.match(p.name)
        if m is None or pid_alive(int(m.group(1))) or not p.is_file():
            continue
        try:
            p.unlink()
        except OSError:
            continue
        removed.append(p)
    return sorted(removed)
