"""adatt.experiments.engine: ensemble or worker processes, chosen from measured rates."""

import json

import pytest
import torch

from adatt.config import load_config
from adatt.experiments import engine
from adatt.experiments.engine import EngineChoice, choose_engine, pick_engine


@pytest.mark.parametrize("ens, work, workers, expect", [
    (90_000.0, 60_000.0, 2, ("ensemble", 1)),
    (50_000.0, 60_000.0, 2, ("workers", 2)),
    (50_000.0, 50_000.0, 2, ("ensemble", 1)),  # a tie: one process
    (10.0, 99.0, 1, ("ensemble", 1)),  # one worker is no alternative
])
def test_choose_engine_takes_the_higher_rate(ens, work, workers, expect):
    c = choose_engine(ens, work, workers)
    assert (c.engine, c.workers) == expect
    assert (c.ensemble_rate, c.workers_rate) == (ens, work)


def test_choose_engine_rejects_bad_rates():
    with pytest.raises(ValueError, match="positive rates"):
        choose_engine(0.0, 1.0, 2)


def _cfg(tmp_path):
    return load_config(None, ["data.source=mmoe_synthetic", "data.rows=600", "model.name=mmoe",
                              "model.expert_sizes=[[8]]", "model.num_experts=2",
                              f"out_dir={tmp_path}"])


def test_pick_engine_probes_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    calls = []

    def probe(cfg, splits, seeds, workers):
        calls.append((seeds, workers))
        return 40_000.0, 70_000.0

    cache = tmp_path / "engine.json"
    first = pick_engine(_cfg(tmp_path), None, seeds=10, cache=cache, probe=probe)
    assert first == EngineChoice("workers", 2, 40_000.0, 70_000.0, "measured")
    assert calls == [(10, 2)]
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["workers"] == 2 and entry["ensemble_rate"] == 40_000.0
    again = pick_engine(_cfg(tmp_path), None, seeds=10, cache=cache, probe=probe)
    assert (again.engine, again.source) == ("workers", "cached") and len(calls) == 1
    # another seed count (or host, model, batch) is another key: measured again
    pick_engine(_cfg(tmp_path), None, seeds=20, cache=cache, probe=probe)
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2
    # so is other data under the same model config (here more rows; another preset too)
    other = _cfg(tmp_path)
    other.data.rows = 900
    pick_engine(other, None, seeds=20, cache=cache, probe=probe)
    assert len(calls) == 3 and len(json.loads(cache.read_text())) == 3


def test_seeds_trained_alone_count_the_workers_idle_in_a_last_round(tmp_path, monkeypatch):
    """3 seeds on 2 workers: the third runs while the other worker waits, so 2 workers at
    1.3x the ensemble's rate reach 3/4 of it over the 3 seeds: the ensemble is faster."""
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)

    def probe(cfg, splits, seeds, workers):
        return 10_000.0, 13_000.0

    cache = tmp_path / "engine.json"
    many = pick_engine(_cfg(tmp_path), None, seeds=3, cache=cache, probe=probe)
    assert many.engine == "workers"  # other configurations' jobs fill the last round
    for source in ("measured", "cached"):
        alone = pick_engine(_cfg(tmp_path), None, seeds=3, cache=cache if source == "cached"
                            else tmp_path / "other.json", probe=probe, alone=True)
        assert (alone.engine, alone.source) == ("ensemble", source)
        assert alone.workers_rate == 13_000.0 * 3 / 4
    assert pick_engine(_cfg(tmp_path), None, seeds=4, probe=probe, alone=True).engine == \
        "workers"  # whole rounds


def test_one_seed_or_one_core_needs_no_probe(tmp_path, monkeypatch):
    def probe(*a):
        raise AssertionError("no probe expected")

    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    assert pick_engine(_cfg(tmp_path), None, seeds=1, probe=probe).engine == "ensemble"
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 1)
    assert pick_engine(_cfg(tmp_path), None, seeds=8, probe=probe).engine == "ensemble"


def test_probe_rates_measures_both_and_restores_threads(tmp_path):
    from adatt.data.config import load_splits

    cfg = _cfg(tmp_path)
    before = torch.get_num_threads()
    ens, work = engine.probe_rates(cfg, load_splits(cfg.data), seeds=3, workers=2, steps=1,
                                   warmup=1)
    assert ens > 0 and work > 0
    assert torch.get_num_threads() == before
