"""train.flush_denormal: the CPU's flush-to-zero mode in every torch thread."""

from __future__ import annotations

import pytest
import torch

from adatt.train.denormal import _to_omp_threads, flush_denormals


@pytest.fixture
def flush_restored():
    yield
    flush_denormals(True)  # what every run sets by default


def test_flush_reaches_the_threads_torch_already_runs(two_threads, flush_restored):
    """The mode is per thread: set after torch's OpenMP team exists, it must still reach
    the team's threads, or the part of an operation they compute keeps its denormals
    (half of them with 2 threads) and runs in the slow path."""
    if not _to_omp_threads():
        pytest.skip("no GNU OpenMP runtime in this torch (or not Linux x86-64)")
    flush_denormals(False)
    x = torch.full((1 << 20,), 3e-39)  # denormal float32 (written as 0 with the mode on)
    assert int(x.count_nonzero()) == x.numel()
    assert int((x * 0.5).count_nonzero()) == x.numel()  # the team runs, keeping denormals
    flush_denormals(True)
    assert int((x * 0.5).count_nonzero()) == 0  # every thread's part flushed
    flush_denormals(False)
    assert int((x * 0.5).count_nonzero()) == x.numel()


def test_flush_denormals_reports_the_mode(flush_restored):
    assert flush_denormals(False) is False
    assert flush_denormals(True) is True  # x86-64 CPUs have the mode
    assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
