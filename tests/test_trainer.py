"""The trainer: run directory contents, selection on validation, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adatt.config import ConfigError, load_config
from adatt.train.trainer import RunError, train

BASE = ["data.source=mmoe_synthetic", "data.rows=3000", "model.name=mmoe",
        "model.expert_sizes=[[16]]", "model.num_experts=3", "model.tower_sizes=[8]",
        "train.batch_size=128", "runtime.progress=false", "train.optimizer.lr=3e-3"]


def cfg_for(tmp_path, *extra):
    return load_config(None, [*BASE, f"out_dir={tmp_path}", *extra])


def test_run_directory_and_results(tmp_path):
    cfg = cfg_for(tmp_path, "train.epochs=3", "name=r")
    res = train(cfg)
    run = tmp_path / "r"
    for f in ("config.yaml", "metrics.jsonl", "results.json", "best.pt", "checkpoint.pt"):
        assert (run / f).is_file(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    saved = json.loads((run / "results.json").read_text())
    assert saved["test"] == res["test"]
    assert set(res["test"]["task1"]) >= {"mse", "mae", "count"}
    # selected = the evaluation with the best validation score (regression: lowest mse)
    best = min(lines, key=lambda x: x["score"])
    assert res["selected"]["eval"] == best["eval"]
    assert res["valid"]["task1"]["mse"] == pytest.approx(best["valid"]["task1"]["mse"], rel=1e-6)
    assert res["num_parameters"] > 0 and res["train_examples_per_s"] > 0
    assert res["train_examples"] == 3 * 2400  # 3 epochs over the 80% training split


def test_same_seed_same_numbers(tmp_path):
    a = train(cfg_for(tmp_path, "train.epochs=1", "name=a"))
    b = train(cfg_for(tmp_path, "train.epochs=1", "name=b"))
    c = train(cfg_for(tmp_path, "train.epochs=1", "name=c", "train.seed=1"))
    assert a["test"] == b["test"]
    assert a["test"] != c["test"]


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    cfg = cfg_for(tmp_path, "train.epochs=1", "name=x")
    train(cfg)
    with pytest.raises(RunError, match="already exists"):
        train(cfg)
    train(cfg, overwrite=True)


def train_killed_after(overrides: list[str], evals: int = 2) -> None:
    """Run ``adatt train`` with ``overrides`` in a subprocess killed (exit 9) right
    after its ``evals``-th evaluation and checkpoint."""
    code = (
        "import os\n"
        "import adatt.train.rundir as rd\n"
        "import adatt.train.trainer as t\n"
        "orig = rd.RunDir.save_checkpoint\n"
        "def kill(self, checkpoint):\n"
        "    orig(self, checkpoint)\n"
        f"    if checkpoint['state']['evals'] == {evals}: os._exit(9)\n"
        "rd.RunDir.save_checkpoint = kill\n"
        "from adatt.config import load_config\n"
        f"t.train(load_config(None, {overrides!r}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 9, p.stderr


def test_resume_after_kill_reaches_same_numbers(tmp_path):
    """Kill a run in a subprocess after its first checkpoint; resume; compare."""
    full = train(cfg_for(tmp_path, "train.epochs=4", "name=full"))
    over = [*BASE, f"out_dir={tmp_path}", "train.epochs=4", "name=killed"]
    train_killed_after(over)
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = train(load_config(None, over), resume=True)
    for task in full["test"]:
        for k, v in full["test"][task].items():
            assert resumed["test"][task][k] == pytest.approx(v, rel=1e-6, abs=1e-9)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_max_examples_budget_and_eval_every(tmp_path):
    res = train(cfg_for(tmp_path, "train.epochs=10", "train.max_examples=1000",
                        "train.eval_every=500", "name=b"))
    assert res["train_examples"] == 1000
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_early_stopping(tmp_path):
    res = train(cfg_for(tmp_path, "train.epochs=50", "train.optimizer.lr=0.5",
                        "train.selection.patience=2", "name=es"))
    lines = (tmp_path / "es" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) < 50
    assert len(lines) - res["selected"]["eval"] == 2


@pytest.mark.parametrize("weighting", ["equal", "uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_every_weighting_trains(tmp_path, weighting):
    res = train(cfg_for(tmp_path, "train.epochs=2", f"train.weighting={weighting}", "name=w"))
    assert all(v["mse"] == v["mse"] for v in res["test"].values())  # not NaN


@pytest.mark.parametrize("opt,sched", [("adamw", "cosine"), ("sgd", "step"),
                                       ("adagrad", "constant")])
def test_optimizers_and_schedules(tmp_path, opt, sched):
    res = train(cfg_for(tmp_path, "train.epochs=1", f"train.optimizer.name={opt}",
                        f"train.schedule.name={sched}", "train.schedule.warmup_steps=3",
                        "train.grad_clip=1.0", "name=o"))
    assert res["test"]["task1"]["mse"] > 0


def test_bad_task_weights_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="task_weights has 3 entries for 2 tasks"):
        train(cfg_for(tmp_path, "train.task_weights=[1,1,1]", "name=t"))


def test_cli_train_eval_and_errors(tmp_path):
    exe = [sys.executable, "-m", "adatt"]
    p = subprocess.run([*exe, "train", *BASE, f"out_dir={tmp_path}", "train.epochs=1", "name=c"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "test:" in p.stdout
    p = subprocess.run([*exe, "eval", "--run", str(tmp_path / "c")], capture_output=True,
                       text=True)
    assert p.returncode == 0 and "task1" in p.stdout
    p = subprocess.run([*exe, "eval", "--run", str(tmp_path / "c"), "--baseline",
                        str(tmp_path / "c")], capture_output=True, text=True)
    assert p.returncode == 0 and "task1=+0.000%" in p.stdout, p.stderr
    p = subprocess.run([*exe, "train", "train.epoch=1"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert "train.epoch: unknown key" in p.stderr
    p = subprocess.run([*exe, "eval", "--run", str(tmp_path / "nope")], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "not a finished run" in p.stderr


# every source's data options, as a run's config.yaml held them before one model per source
OLD_DATA = {"source": "census", "data_dir": None, "instance_weight": "drop",
            "dense_scaling": "minmax", "split_seed": 0, "cache_dir": None, "use_cache": True,
            "download": True, "preset": "group1", "rows": 100000, "seed": 0,
            "valid_fraction": 0.1, "test_fraction": 0.1, "correlation": 0.5, "dim": 100,
            "schema": None, "train": None, "valid": None, "test": None,
            "shuffle_buffer": 131072, "cat_encoding": "vocab", "fit_rows": 1000000,
            "hash_buckets": 1000000, "rank_shards": False}


def write_old_layout(run_dir) -> None:
    """Rewrite a run's config.yaml in the layout saved before the runtime section."""
    import yaml

    path = run_dir / "config.yaml"
    d = yaml.safe_load(path.read_text())
    d["train"].update(d.pop("runtime", {}))
    d["data"] = {**OLD_DATA, **d["data"]}
    path.write_text(yaml.safe_dump(d, sort_keys=False))


def test_resume_and_eval_of_a_run_saved_in_the_old_layout(tmp_path):
    full = train(cfg_for(tmp_path, "train.epochs=3", "name=full"))
    # old-style overrides: the execution keys under train
    old = [o.replace("runtime.", "train.") for o in BASE]
    over = [*old, f"out_dir={tmp_path}", "train.epochs=3", "name=old", "train.threads=1"]
    train_killed_after(over, evals=1)
    write_old_layout(tmp_path / "old")
    exe = [sys.executable, "-m", "adatt"]
    p = subprocess.run([*exe, "train", *over, "--resume"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    warned = [x for x in p.stderr.splitlines() if "deprecated" in x]
    assert warned == ["warning: train.progress is deprecated, use runtime.progress (moved to "
                      "the runtime section)",
                      "warning: train.threads is deprecated, use runtime.threads (moved to "
                      "the runtime section)"]
    resumed = json.loads((tmp_path / "old" / "results.json").read_text())
    for task in full["test"]:
        for k, v in full["test"][task].items():
            assert resumed["test"][task][k] == pytest.approx(v, rel=1e-6, abs=1e-9)
    write_old_layout(tmp_path / "old")
    p = subprocess.run([*exe, "eval", "--run", str(tmp_path / "old")], capture_output=True,
                       text=True)
    assert p.returncode == 0 and "task1" in p.stdout, p.stderr
    assert "deprecated" not in p.stderr  # a saved config is read silently


def _flushes() -> bool:
    import torch

    return (torch.tensor([1e-39]) * 1.0).item() == 0.0  # a denormal read as 0


@pytest.mark.parametrize("flush", [False, True])
def test_flush_denormal_is_set_by_the_run(tmp_path, flush):
    """train.flush_denormal reaches the CPU mode (every recipe sets up through
    setup_runtime); the run's numbers stay deterministic either way."""
    from adatt.train.denormal import flush_denormals

    flush_denormals(not flush)  # the opposite state before the run
    try:
        a = train(cfg_for(tmp_path, "train.epochs=1", "name=a",
                          f"train.flush_denormal={str(flush).lower()}"))
        assert _flushes() is flush
        b = train(cfg_for(tmp_path, "train.epochs=1", "name=b",
                          f"train.flush_denormal={str(flush).lower()}"))
        assert a["test"] == b["test"]
    finally:
        flush_denormals(True)  # the default every run sets
