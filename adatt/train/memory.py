"""Process memory setting that makes CPU training steps cheaper: keep freed memory.

glibc's ``malloc`` serves large blocks with fresh ``mmap`` pages (above a
threshold that starts at 128 KiB) and hands freed memory at the top of the heap
back to the system. A training step frees and re-allocates the same
multi-megabyte activations and gradients every step, so every page is
faulted in again each step: several hundred minor page faults per step of the
census-size AdaTT-sp (batch 512), each a few microseconds on a virtual machine.
:func:`keep_freed_memory` raises both thresholds with ``mallopt`` so freed
blocks are reused instead (the same effect as the ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` environment variables). The cost is that memory
freed late in a run is not returned to the system before the process exits.

``adatt train`` and the experiments call it unless ``runtime.keep_freed_memory``
is false. It does nothing off glibc (macOS, Windows, musl) or when the
environment already sets either variable.

Example:
    >>> isinstance(keep_freed_memory(), bool)
    True
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_MAX = 32 << 20  # glibc's largest accepted mmap threshold on 64-bit (32 MiB)
_TRIM = 1 << 30  # keep up to 1 GiB of freed memory at the heap top
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks up to 32 MiB; True when it is (or already was) set."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (AttributeError on musl)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                          _TRIM))
    return _applied
