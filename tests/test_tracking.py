"""Experiment tracking (adatt.train.tracking) and the progress output (adatt.train.progress).

MLflow runs are read back through MLflow's own client from a local ``sqlite:``
store; TensorBoard event files through TensorBoard's reader. The backends'
tests skip, with the reason, where the ``mlflow`` / ``tensorboard`` extra is
not installed (``make setup`` installs both).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from adatt.config import ConfigError, load_config
from adatt.train import tracking
from adatt.train.ensemble import train_ensemble
from adatt.train.progress import Progress, ProgressLog
from adatt.train.trainer import train
from tests.ranks import run_ranks

TINY = ["data.source=mmoe_synthetic", "data.rows=1500", "model.name=mmoe",
        "model.expert_sizes=[[8]]", "model.num_experts=2", "train.batch_size=100",
        "train.epochs=1", "runtime.threads=1"]


def cfg_for(tmp_path, *extra: str):
    return load_config(None, [*TINY, f"out_dir={tmp_path}", *extra])


def evals_of(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- off


def test_off_by_default_and_no_backend_imported():
    cfg = load_config(None, [])
    assert cfg.tracking.backend == "none"
    assert isinstance(tracking.open_tracker(cfg, "r"), tracking.NoTracker)
    code = ("import sys, adatt, adatt.cli, adatt.train.trainer, adatt.train.ensemble, "
            "adatt.train.tracking; "
            "print([m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard') "
            "or m == 'torch.utils.tensorboard'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout
    assert out.strip() == "[]"


def test_not_main_rank_tracks_nothing(tmp_path):
    cfg = cfg_for(tmp_path, "tracking.backend=mlflow", "tracking.uri=bogus://nowhere")
    assert isinstance(tracking.open_tracker(cfg, tmp_path / "r", main=False),
                      tracking.NoTracker)  # no connection tried: not even a bad URI fails


def test_tracking_keys_are_checked():
    with pytest.raises(ConfigError, match="tracking.backend"):
        load_config(None, ["tracking.backend=wandb"])
    with pytest.raises(ConfigError, match="tracking.experment: unknown key"):
        load_config(None, ["tracking.experment=x"])


def test_flatten_and_eval_metrics():
    assert tracking.flatten({"a": {"b": {"c": 1}}, "d": [1, 2], "e": {}}) == {
        "a.b.c": 1, "d": [1, 2], "e": {}}
    assert tracking.numeric({"x": 1, "y": True, "z": "s", "w": {"v": 2.5, "n": None},
                             "inf": float("inf")}) == {"x": 1.0, "w/v": 2.5}


# ----------------------------------------------------------------------------- failed starts


@pytest.mark.parametrize("backend,module,match", [
    ("mlflow", "mlflow", r"pip install 'adatt\[mlflow\]'"),
    ("tensorboard", "torch.utils.tensorboard", r"pip install 'adatt\[tensorboard\]'"),
])
def test_missing_package_is_an_error_before_the_run_directory(tmp_path, monkeypatch, backend,
                                                              module, match):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    cfg = cfg_for(tmp_path, "name=r", f"tracking.backend={backend}")
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "r").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="tensorboard"):  # the old flag, the same backend
        train(cfg_for(tmp_path, "name=r", "runtime.tensorboard=true"))
    assert not (tmp_path / "r").exists()


def test_bad_uri_is_one_line_error_and_no_directory(tmp_path, capsys):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from adatt.cli import main

    args = [*TINY, f"out_dir={tmp_path}", "name=r", "tracking.backend=mlflow",
            "tracking.uri=bogus://nowhere"]
    assert main(["train", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tracking.uri=bogus://nowhere"), lines
    assert not (tmp_path / "r").exists()
    cfg = cfg_for(tmp_path, "name=e", "tracking.backend=mlflow", "tracking.uri=bogus://x")
    with pytest.raises(ConfigError, match="tracking.uri=bogus://x"):
        train_ensemble(cfg, seeds=[0, 1])
    assert not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local sqlite tracking store and MLflow's client on it (made once: about 10 s)."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables
    return uri, MlflowClient(tracking_uri=uri)


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp is not None else []


def test_mlflow_run_read_back(tmp_path, store):
    uri, client = store
    cfg = cfg_for(tmp_path, "name=one", "train.eval_every=500", "train.optimizer.lr=0.02",
                  "tracking.backend=mlflow", f"tracking.uri={uri}", "tracking.experiment=single")
    res = train(cfg)
    (run,) = runs_of(client, "single")
    assert run.info.run_name == "one" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.optimizer.lr"] == "0.02" and params["model.name"] == "mmoe"
    assert params["tracking.backend"] == "mlflow"
    lines = evals_of(tmp_path / "one")
    assert len(lines) == 3  # 1200 training rows, an evaluation every 500 and at the end
    for task in ("task1", "task2"):
        hist = client.get_metric_history(run.info.run_id, f"valid/{task}/mse")
        assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [
            (x["examples"], pytest.approx(x["valid"][task]["mse"])) for x in lines]
    score = client.get_metric_history(run.info.run_id, "score")
    assert [m.value for m in sorted(score, key=lambda m: m.step)] == [
        pytest.approx(x["score"]) for x in lines]
    m = run.data.metrics
    assert m["results/test/task1/mse"] == pytest.approx(res["test"]["task1"]["mse"])
    assert m["results/selection_score"] == pytest.approx(res["selection_score"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "results.json", "config.yaml"} <= names
    local = client.download_artifacts(run.info.run_id, "best.pt", str(tmp_path))
    saved = torch.load(local, weights_only=True)
    best = torch.load(tmp_path / "one" / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], best[k]) for k in best)
    back = json.loads(open(client.download_artifacts(run.info.run_id, "results.json",
                                                     str(tmp_path / "dl"))).read())
    assert back["test"] == res["test"]


def test_mlflow_ensemble_one_run_per_copy(tmp_path, store):
    uri, client = store
    cfg = cfg_for(tmp_path, "name=ens", "tracking.backend=mlflow", f"tracking.uri={uri}",
                  "tracking.experiment=ensemble")
    res = train_ensemble(cfg, seeds=[3, 4])
    runs = {r.info.run_name: r for r in runs_of(client, "ensemble")}
    assert set(runs) == {"ens/seed_3", "ens/seed_4"}
    for r, s in zip(res, (3, 4), strict=True):
        run = runs[f"ens/seed_{s}"]
        assert run.info.status == "FINISHED" and run.data.tags["ensemble"] == "ens"
        assert run.data.params["train.seed"] == str(s)
        want = r["test"]["task1"]["mse"]
        assert run.data.metrics["results/test/task1/mse"] == pytest.approx(want)
        hist = client.get_metric_history(run.info.run_id, "valid/task2/mse")
        assert [m.value for m in hist] == [pytest.approx(x["valid"]["task2"]["mse"])
                                           for x in evals_of(tmp_path / "ens" / f"seed_{s}")]
        assert "best.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow  # about 25 s: two processes under torchrun
def test_mlflow_distributed_logs_from_rank_0_only(tmp_path, store):
    uri, client = store
    args = [*TINY, "runtime.threads=1", "runtime.progress=false", f"out_dir={tmp_path}", "name=ddp",
            "tracking.backend=mlflow", f"tracking.uri={uri}", "tracking.experiment=ddp"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adatt", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    p = run_ranks(cmd, env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = runs_of(client, "ddp")
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "score")) == len(
        evals_of(tmp_path / "ddp"))


# ----------------------------------------------------------------------------- TensorBoard


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.mark.parametrize("how", ["runtime.tensorboard=true", "tracking.backend=tensorboard"])
def test_tensorboard_scalars(tmp_path, how):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    res = train(cfg_for(tmp_path, "name=tb", "train.eval_every=600", how))
    got = scalars(tmp_path / "tb" / "tb")
    lines = evals_of(tmp_path / "tb")
    assert got["valid/task1/mse"] == [(x["examples"], pytest.approx(x["valid"]["task1"]["mse"]))
                                      for x in lines]
    assert [v for _, v in got["results/test/task2/mse"]] == [
        pytest.approx(res["test"]["task2"]["mse"])]


def test_tensorboard_ensemble_and_log_root(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    train_ensemble(cfg_for(tmp_path, "name=e", "runtime.tensorboard=true"), seeds=[0, 1])
    for s in (0, 1):
        assert len(scalars(tmp_path / "e" / f"seed_{s}" / "tb")["score"]) == len(
            evals_of(tmp_path / "e" / f"seed_{s}"))
    train(cfg_for(tmp_path, "name=r", "tracking.backend=tensorboard",
                  f"tracking.uri={tmp_path / 'logs'}"))
    assert "score" in scalars(tmp_path / "logs" / "r")


# ----------------------------------------------------------------------------- progress output


def test_log_outside_a_terminal_is_one_line_per_evaluation(tmp_path, capfd):
    train(cfg_for(tmp_path, "name=p", "train.eval_every=300"))
    err = capfd.readouterr().err
    lines = evals_of(tmp_path / "p")
    assert "\r" not in err
    out = [x for x in err.splitlines() if x.startswith("p eval ")]
    assert len(out) == len(lines) == 4 and len(err.splitlines()) == 4, err
    for text, line in zip(out, lines, strict=True):
        assert f"{line['examples']:,}/1,200 examples" in text
        assert f"loss {sum(line['train_loss']):.4f}" in text
        assert f"valid score {line['score']:.4f}" in text and "ex/s" in text
    train_ensemble(cfg_for(tmp_path, "name=q", "train.eval_every=600"), seeds=[0, 1])
    err = capfd.readouterr().err
    assert "\r" not in err and len(err.splitlines()) == 2 and err.startswith("q x2 eval 1: ")
    train(cfg_for(tmp_path, "name=quiet", "runtime.progress=false"))
    assert capfd.readouterr().err == ""


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_postfix_is_refreshed_at_least_once_a_second(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("adatt.train.progress.time.perf_counter", lambda: clock[0])
    out = FakeTerminal()
    log = ProgressLog("t", total=1000, stream=out)
    assert log.tty and log.bar is not None
    loss = torch.tensor([0.5, 0.25])
    log.update(100, loss)  # the first step sets the postfix
    assert "loss=0.7500" in log.bar.postfix
    log.update(100, torch.tensor([0.1, 0.1]))  # within the second: unchanged, no host sync
    assert "loss=0.7500" in log.bar.postfix
    clock[0] = 1.0  # a second later the next step refreshes it
    log.update(100, torch.tensor([0.1, 0.1]))
    assert "loss=0.7500" not in log.bar.postfix and "ex_s=300" in log.bar.postfix
    p = Progress(examples=300, evals=1, train_time=1.0)
    log.evaluation(p, loss=0.2, score=0.5)  # in a terminal the bar says it all
    log.close()
    assert "eval" not in out.getvalue() and "\r" in out.getvalue()


def test_mlflow_torchrec_recipe(tmp_path, store):
    pytest.importorskip("torchrec", reason="the torchrec extra is not installed")
    from adatt.integrations.torchrec import train_torchrec

    uri, client = store
    cfg = load_config(None, ["data.source=sim", "data.rows=3000", "model.name=mmoe",
                             "model.embedding_dim=4", "model.expert_sizes=[[8]]",
                             "model.num_experts=2", "train.batch_size=200", "train.epochs=1",
                             "runtime.threads=1", "runtime.progress=false", f"out_dir={tmp_path}",
                             "name=tr", "tracking.backend=mlflow", f"tracking.uri={uri}",
                             "tracking.experiment=torchrec"])
    res = train_torchrec(cfg)
    (run,) = runs_of(client, "torchrec")
    assert run.info.status == "FINISHED" and run.info.run_name == "tr"
    assert run.data.params["model.embedding_dim"] == "4"
    assert len(client.get_metric_history(run.info.run_id, "score")) == len(
        evals_of(tmp_path / "tr"))
    assert run.data.metrics["results/selection_score"] == pytest.approx(res["selection_score"])
    assert "best.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}
