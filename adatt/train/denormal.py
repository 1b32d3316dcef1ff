"""Flush denormal floats to zero on CPU: training slows several-fold without it.

A float32 below 1.2e-38 in magnitude is *denormal*. x86 CPUs handle an
operation that reads or produces one in microcode, tens of times slower than a
normal one. Training drives some values there: with Adam and an L2 weight
decay, a weight whose gradient stays 0 (a dead ReLU unit, a one-hot row no
recent example holds) decays towards 0 without reaching it, and its optimizer
state with it. On census AdaTT after 10 epochs about 8% of the one-hot input
table and 6% of a level's weights were denormal, and the products that read
them ran 3.3x slower (a whole run: 13,700 against 44,700 training examples/s;
``benchmarks/denormal.py``). A fresh model has none, so a benchmark of early
steps never sees it.

:func:`flush_denormals` sets the CPU's flush-to-zero and denormals-are-zero
modes (``torch.set_flush_denormal``): denormal inputs read as 0 and results
that would be denormal are written as 0. Values change only below 1.2e-38
(a census run's selection score moved in the 7th digit); runs stay
deterministic. The recipes call it from their runtime setup with
``train.flush_denormal`` (default true); false keeps IEEE gradual underflow.

Example:
    >>> import torch
    >>> flush_denormals(True)
    True
    >>> (torch.tensor([1e-39]) * 1.0).item()
    0.0
    >>> flush_denormals(False)
    False
    >>> (torch.tensor([1e-39]) * 1.0).item() > 0
    True
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

__all__ = ["flush_denormals"]


def flush_denormals(enabled: bool) -> bool:
    """Set (or clear) flush-to-zero for CPU floats in this process; True when it is on.

    The mode is a per-thread CPU register that ``torch.set_flush_denormal`` sets for
    the calling thread only; threads started later inherit it, but torch's OpenMP
    threads may already be running (any parallel operation before the run starts
    them). So the setting is also copied into each of them (:func:`_to_omp_threads`).
    False where the CPU has no such mode (then nothing changes)."""
    if not torch.set_flush_denormal(enabled):
        return False
    _to_omp_threads()
    return enabled


def _to_omp_threads() -> bool:
    """Copy this thread's floating-point environment (MXCSR included) into every thread
    of torch's OpenMP team: one parallel region of ``torch.get_num_threads()``
    threads in torch's own libgomp whose body is glibc's ``fesetenv`` of the caller's
    environment. True when done; False (and nothing changed) off Linux x86-64 with
    glibc and GNU OpenMP (each such thread then keeps the mode it started with)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    with open("/proc/self/maps") as maps:  # the GNU OpenMP runtimes loaded in this process
        loaded = {line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]}
    # torch's own (compiled extensions, e.g. torch.compile's kernels, may load another)
    ours = [p for p in loaded if p.startswith(os.path.dirname(torch.__file__) + os.sep)]
    gomp = ours[0] if len(ours) == 1 else (next(iter(loaded)) if len(loaded) == 1 else None)
    if gomp is None:
        return False
    try:
        libm = ctypes.CDLL("libm.so.6")  # glibc's fegetenv / fesetenv
        fegetenv, fesetenv = libm.fegetenv, ctypes.cast(libm.fesetenv, ctypes.c_void_p)
        parallel = ctypes.CDLL(gomp).GOMP_parallel
    except (OSError, AttributeError):
        return False
    env = ctypes.create_string_buffer(64)  # glibc's fenv_t is 32 bytes on x86-64
    if fegetenv(env) != 0:
        return False
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    parallel(fesetenv, env, torch.get_num_threads(), 0)  # each thread: fesetenv(&env)
    return True
