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


def test_a_run_saved_before_the_option_reads_as_made_without_flushing(tmp_path):
    """Runs made before train.flush_denormal existed were trained without it: a resumed
    experiment must train them again, not take them as runs of today's defaults."""
    import yaml

    from adatt.config import load_config, load_saved_config
    from adatt.train.runs import finished_results

    cfg = load_config(None, ["data.source=mmoe_synthetic", "data.rows=1000"])
    assert cfg.train.flush_denormal is True
    saved = cfg.model_dump(mode="json")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "results.json").write_text("{}")
    assert load_saved_config(tmp_path / "config.yaml").train.flush_denormal is True
    assert finished_results(tmp_path, cfg) == {}
    del saved["train"]["flush_denormal"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_config(tmp_path / "config.yaml").train.flush_denormal is False
    assert finished_results(tmp_path, cfg) is None
