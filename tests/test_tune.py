"""adatt tune: the search-space format, key checks, a tiny study end to end (resume,
determinism, pruning, parallel workers), the report, and the trainer's per-evaluation hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from adatt.cli import main  # noqa: E402
from adatt.config import ConfigError, load_config  # noqa: E402
from adatt.experiments.tune import check_space, load_space, run_study  # noqa: E402

TINY = ["data.source=mmoe_synthetic", "data.rows=2000", "model.name=mmoe",
        "model.expert_sizes=[[8]]", "model.num_experts=2", "train.epochs=1",
        "train.eval_every=600"]
SPACE = ("train.optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n"
         "model.tower_sizes: {choices: [[4], [8, 4]]}\n")


def _space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("train.optimizer.lr: {low: 0.1, high: 0.01}", "train.optimizer.lr: low (0.1) must be below"),
    ("train.optimizer.lr: {low: 0.0, high: 0.1, log: true}", "train.optimizer.lr: a log scale"),
    ("train.batch_size: {choices: []}", "train.batch_size: choices must be a non-empty list"),
    ("train.batch_size: {low: 1, high: 4, step: 0}", "train.batch_size: step must be > 0"),
    ("train.batch_size: {low: 1}", "train.batch_size: give low and high"),
    ("train.batch_size: {low: 1, high: 4, scale: log}", "train.batch_size: unknown field"),
    ("train.batch_size: 512", "train.batch_size: give a mapping"),
    ("- train.batch_size", "the top level must be a non-empty mapping"),
])
def test_space_format_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_space(_space(tmp_path, text))


def test_space_types(tmp_path):
    space = load_space(_space(tmp_path, SPACE + "train.batch_size: {low: 64, high: 256, "
                                        "step: 64}\ntrain.grad_clip: {low: 1, high: 2.5}\n"))
    assert space["train.batch_size"].is_int and not space["train.grad_clip"].is_int
    assert space["model.tower_sizes"].choices == [[4], [8, 4]]


@pytest.mark.parametrize("text, message", [
    ("train.optimizer.lrr: {low: 0.1, high: 1.0}", "train.optimizer.lrr: unknown key"),
    ("model.num_expert: {low: 1, high: 3}", "model.num_expert: unknown option of mmoe"),
    ("train.optimizer.lr: {low: -1.0, high: 1.0}", "train.optimizer.lr=-1.0: "),
    ("train.selection.metric: {choices: [auc, bogus]}", 'train.selection.metric="bogus"'),
])
def test_keys_checked_through_the_config(tmp_path, text, message):
    space = load_space(_space(tmp_path, text))
    with pytest.raises(ConfigError, match=message):
        check_space(space, None, TINY)


def test_cli_bad_space_is_one_line(tmp_path, capsys):
    space = _space(tmp_path, "train.optimizer.lrr: {low: 0.1, high: 1.0}\n")
    rc = main(["tune", "--space", str(space), "--study-dir", str(tmp_path / "s"), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "train.optimizer.lrr: unknown key" in err
    assert not (tmp_path / "s").exists()


def test_importing_adatt_does_not_import_optuna():
    code = ("import sys, adatt, adatt.cli, adatt.experiments.tune, adatt.train.trainer; "
            "assert 'optuna' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _trials(study: Path) -> list[dict]:
    import optuna

    s = optuna.load_study(study_name="adatt", storage=f"sqlite:///{study / 'study.db'}")
    return [{"number": t.number, "params": t.params, "state": t.state.name, "value": t.value}
            for t in s.get_trials()]


def test_study_resumes_reports_and_is_deterministic(tmp_path):
    space = _space(tmp_path, SPACE)
    a = tmp_path / "a"
    summary = run_study(None, space, a, TINY, trials=2, seed=3, prune=False)
    assert [t["state"] for t in _trials(a)] == ["COMPLETE", "COMPLETE"]
    # trials are ordinary run directories, each with its own seed from the study seed
    seeds = {json.loads((a / f"trials/trial_000{i}/results.json").read_text())["seed"]
             for i in range(2)}
    assert len(seeds) == 2
    # the same command resumes: only the missing trials are trained
    summary = run_study(None, space, a, TINY, trials=4, seed=3, prune=False)
    trials = _trials(a)
    assert len(trials) == 4 and summary["complete"] == 4
    best = summary["best"]
    values = [t["value"] for t in trials]
    assert best["value"] == min(values)  # mmoe_synthetic: regression, mse, minimized
    res = json.loads((a / f"trials/trial_{best['number']:04d}/results.json").read_text())
    assert best["test"] == res["test"]
    report = (a / "report.md").read_text()
    assert report.count("Test metrics") == 1 and report.count("| complete |") == 4
    assert "## Parameter importances" in report  # from 4 complete trials
    assert "test" not in report.split("## Best trial")[0].replace("Test is scored", "")
    assert (a / "report.png").stat().st_size > 0
    # another seed on the same study directory is refused; the same seed elsewhere repeats
    with pytest.raises(ConfigError, match="another seed"):
        run_study(None, space, a, TINY, trials=4, seed=4, prune=False)
    b = tmp_path / "b"
    run_study(None, space, b, TINY, trials=2, seed=3, prune=False)
    assert [t["params"] for t in _trials(b)] == [t["params"] for t in trials[:2]]
    assert [t["value"] for t in _trials(b)] == values[:2]


def test_pruned_trials_are_marked_and_kept(tmp_path):
    import optuna

    study = tmp_path / "s"
    # every validation mse is above 0: each trial is pruned at its first evaluation
    summary = run_study(None, _space(tmp_path, SPACE), study, TINY, trials=2,
                        prune=optuna.pruners.ThresholdPruner(upper=0.0))
    assert [t["state"] for t in _trials(study)] == ["PRUNED", "PRUNED"]
    assert summary["best"] is None
    run = study / "trials/trial_0000"
    assert (run / "metrics.jsonl").read_text().count("\n") == 1
    assert not (run / "results.json").exists()
    assert "| pruned |" in (study / "report.md").read_text()


@pytest.mark.slow  # two spawned processes: ~10 s of start-up alone
def test_parallel_workers_split_the_threads(tmp_path):
    study = tmp_path / "s"
    run_study(None, _space(tmp_path, SPACE), study, TINY, trials=2, workers=2, prune=False)
    states = [t["state"] for t in _trials(study)]
    assert states.count("COMPLETE") >= 2
    cfg = load_config(study / "trials/trial_0000/config.yaml")
    assert cfg.train.threads == max(1, (os.cpu_count() or 1) // 2)


def test_trainer_calls_on_eval_once_per_evaluation(tmp_path):
    from adatt.train.trainer import train

    records = []
    cfg = load_config(None, [*TINY, "runtime.progress=false", f"out_dir={tmp_path}"])
    train(cfg, on_eval=records.append)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert len(records) == len(lines) > 1
    assert [r["score"] for r in records] == [json.loads(x)["score"] for x in lines]
    assert all(r["higher"] is False for r in records)
    assert [r["last"] for r in records] == [False] * (len(records) - 1) + [True]
