"""Multi-process tests: reruns when a rank dies of gloo's intermittent abort.

Now and then (3 times in about 20 full test runs on the 2-core sandbox VM, once
in about 60 runs of the test alone) one rank of a 2-process gloo test dies
with SIGABRT and "terminate called without an active exception", an
std::terminate in C++, within a second of the ranks starting. The rerun has
always passed. These helpers rerun such a run up to twice (``run_ranks`` from the
same starting files, ``spawn_ranks`` each in a new folder) and
say so with a warning; any other failure, and a last abort, fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

#: what a rank's C++ runtime prints when it aborts
GLOO_ABORT = "terminate called without an active exception"


def run_ranks(cmd: list[str], env: dict[str, str], workdir: Path,
              timeout: float = 300, tries: int = 3) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)``, rerun from a copy of ``workdir`` after a rank's abort (up to
    ``tries`` runs in all, as :func:`spawn_ranks`)."""
    before = workdir.with_name(workdir.name + ".before")
    shutil.copytree(workdir, before, dirs_exist_ok=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        for _ in range(tries - 1):
            if p.returncode == 0 or GLOO_ABORT not in p.stdout + p.stderr:
                break
            warnings.warn(f"a rank aborted ({GLOO_ABORT!r}); rerunning", stacklevel=2)
            shutil.rmtree(workdir)
            shutil.copytree(before, workdir)
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return p
    finally:
        shutil.rmtree(before, ignore_errors=True)


def spawn_ranks(worker: Callable[..., None], world: int, tmp: str, timeout: float = 240.0,
                tries: int = 3) -> str:
    """Runs ``worker(rank, world, out)`` in ``world`` processes (``torch.multiprocessing``)
    with ``out = tmp``, or ``tmp/retry<k>`` for each rerun after gloo's abort (SIGABRT; up
    to ``tries`` runs in all); returns the ``out`` the finished run wrote. Any other
    failure, a last abort, or more than ``timeout`` seconds fails the test."""
    import torch.multiprocessing as mp

    outs = [tmp, *(os.path.join(tmp, f"retry{k}") for k in range(1, tries))]
    for attempt, out in enumerate(outs):
        os.makedirs(out, exist_ok=True)
        ctx = mp.spawn(worker, args=(world, out), nprocs=world, join=False)
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        if p.is_alive():
                            p.kill()
                    pytest.fail(f"the {world} ranks did not finish in {timeout:.0f} s")
            return out
        except mp.ProcessExitedException as e:
            if attempt == len(outs) - 1 or e.signal_name != "SIGABRT":
                raise
            warnings.warn(f"rank {e.error_index} aborted (SIGABRT); rerunning", stacklevel=2)
    raise AssertionError("unreachable")
