"""The machine a benchmark ran on: CPU model, the instruction sets that decide its
speed, core count, torch version and threads, printed at the top of every table.

Hosts differ from session to session (an AVX2-only AMD EPYC, an Intel Xeon with
AVX-512 and AMX, ...): compare only ratios measured side by side in one run, and
say which host gave them.

    >>> line = describe()
    >>> line.startswith("host: ") and "torch " in line and "threads" in line
    True
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["cpu_model", "cpu_flags", "describe"]

#: the flags that decide fp32 / bf16 product speed on x86 CPUs, in the order printed
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
         "amx_int8")


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())  # the first processor's entry
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's word elsewhere)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`FLAGS` this CPU has (empty where ``/proc/cpuinfo`` is absent)."""
    have = set(_cpuinfo().get("flags", "").split())
    return [f for f in FLAGS if f in have]


def describe() -> str:
    """One line: CPU model, its speed-relevant flags, cores, torch version and threads."""
    flags = " ".join(cpu_flags()) or "none of " + "/".join(FLAGS)
    return (f"host: {cpu_model()} | flags: {flags} | {os.cpu_count()} cores | "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")
