"""Atomic file writes: write a temporary file next to the target, then rename it.

A kill at any moment leaves either the previous file or the new one, never a
half-written one (``os.replace`` is atomic on one file system). A write that
fails (a full disk, Ctrl-C) removes its temporary file and leaves the target as it was.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> p = Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write("hello", p)
    >>> p.read_text(), sorted(x.name for x in p.parent.iterdir())
    ('hello', ['a.txt'])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "atomic_write"]


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through ``<path>.tmp``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` through ``<path>.tmp``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
