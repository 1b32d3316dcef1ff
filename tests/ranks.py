"""Multi-process tests: one retry when a rank dies of gloo's intermittent abort.

Now and then (3 times in about 20 full test runs on the 2-core sandbox VM, once
in about 60 runs of the test alone) one rank of a 2-process gloo test dies
with SIGABRT and "terminate called without an active exception", an
std::terminate in C++, within a second of the ranks starting. The rerun has
always passed. These helpers rerun such a run once, from the same starting
files, and say so with a warning; any other failure, and a second abort,
fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

#: what a rank's C++ runtime prints when it aborts
GLOO_ABORT = "terminate called without an active exception"


def run_ranks(cmd: list[str], env: dict[str, str], workdir: Path,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)``, rerun once from a copy of ``workdir`` after a rank's abort."""
    before = workdir.with_name(workdir.name + ".before")
    shutil.copytree(workdir, before, dirs_exist_ok=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if p.returncode != 0 and GLOO_ABORT in p.stdout + p.stderr:
            warnings.warn(f"a rank aborted ({GLOO_ABORT!r}); rerunning once", stacklevel=2)
            shutil.rmtree(workdir)
            shutil.copytree(before, workdir)
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return p
    finally:
        shutil.rmtree(before, ignore_errors=True)
