"""Multi-process tests: run the ranks of a test, with a deadline.

A rank used to die now and then with SIGABRT ("terminate called without an
active exception") as its interpreter shut down: a gloo worker thread freed
the last collective's Python tensors and could not take the GIL. The
evaluation's collectives now keep their works (``adatt.train.distributed.keep``,
``tests/test_collectives.py``), so these helpers no longer rerun anything: any
failure fails the test.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import pytest


def run_ranks(cmd: list[str], env: dict[str, str],
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` (a ``torchrun`` command) with its output captured."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def spawn_ranks(worker: Callable[..., None], world: int, tmp: str,
                timeout: float = 240.0) -> str:
    """Runs ``worker(rank, world, tmp)`` in ``world`` processes (``torch.multiprocessing``);
    returns ``tmp``. A failing rank, or more than ``timeout`` seconds, fails the test."""
    import torch.multiprocessing as mp

    os.makedirs(tmp, exist_ok=True)  # the ranks' FileStore lives there
    ctx = mp.spawn(worker, args=(world, tmp), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {world} ranks did not finish in {timeout:.0f} s")
    return tmp
