"""Faults and bad input against training runs (docs/failures-training.md).

Resume semantics, damaged run files, non-finite losses, one-class validation
tasks, a full disk and Ctrl-C: each a one-line ``error:`` (exit 2; 130 on
Ctrl-C), never a traceback, and the last good checkpoint kept. CLI behaviours
run the real ``adatt`` command in subprocesses.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from adatt.cli import main
from adatt.config import load_config
from adatt.train.rundir import RunDir, RunError
from adatt.train.runs import load_splits_for
from adatt.train.trainer import train

BASE = ["data.source=mmoe_synthetic", "data.rows=3000", "model.name=mmoe",
        "model.expert_sizes=[[16]]", "model.num_experts=3", "model.tower_sizes=[8]",
        "train.batch_size=128", "runtime.progress=false", "train.optimizer.lr=3e-3",
        "runtime.threads=1"]
SIM = ["data.source=sim", "data.rows=3000", "model.name=mmoe", "model.expert_sizes=[[8]]",
       "model.num_experts=2", "model.tower_sizes=[4]", "train.batch_size=128",
       "runtime.progress=false", "runtime.threads=1"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``adatt ...`` in a subprocess (this checkout's package)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "adatt", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def inproc(capsys, *args: str) -> subprocess.CompletedProcess:
    """``adatt ...`` through :func:`adatt.cli.main` in this process (cheaper than a
    subprocess; the subprocess form is tested once per behaviour)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def one_line_error(p: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single ``error:`` line of a failed command (no traceback)."""
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A finished 2-epoch CLI run (copied by the tests that damage it)."""
    out = tmp_path_factory.mktemp("runs")
    p = cli("train", *BASE, f"out_dir={out}", "name=done", "train.epochs=2")
    assert p.returncode == 0, p.stderr
    return out / "done"


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ---------------------------------------------------------------- resume semantics
def test_resume_with_a_changed_config_names_the_differing_keys(done, tmp_path, capsys):
    run = copy_run(done, tmp_path / "done")
    before = (run / "config.yaml").read_text()
    err = one_line_error(cli("train", *BASE, f"out_dir={tmp_path}", "name=done",
                             "train.epochs=2", "train.optimizer.lr=1e-2", "--resume"))
    assert err.startswith("error:") and "train.optimizer.lr" in err and "--overwrite" in err
    # a changed model: the same error, never a size-mismatch traceback
    err = one_line_error(inproc(capsys, "train", *BASE, f"out_dir={tmp_path}", "name=done",
                                "train.epochs=2", "model.expert_sizes=[[32]]", "--resume"))
    assert "model.expert_sizes" in err and "size mismatch" not in err
    assert (run / "config.yaml").read_text() == before  # refused: nothing changed


def test_resume_applies_and_records_the_allowed_keys(done, tmp_path, capsys):
    run = copy_run(done, tmp_path / "done")
    p = inproc(capsys, "train", *BASE, f"out_dir={tmp_path}", "name=done", "train.epochs=3",
            "train.selection.patience=5", "--resume")
    assert p.returncode == 0, p.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 3 and saved["train"]["selection"]["patience"] == 5
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the third epoch was trained


@pytest.mark.parametrize("fault", ["truncated checkpoint", "flipped checkpoint",
                                   "missing metrics", "damaged metrics"])
def test_damaged_run_files_on_resume_are_one_line_errors(done, tmp_path, capsys, fault):
    run = copy_run(done, tmp_path / "done")
    ck = run / "checkpoint.pt"
    if fault == "truncated checkpoint":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    elif fault == "flipped checkpoint":
        data = bytearray(ck.read_bytes())
        data[len(data) // 2] ^= 0xFF
        ck.write_bytes(bytes(data))
    elif fault == "missing metrics":
        (run / "metrics.jsonl").unlink()
    else:
        (run / "metrics.jsonl").write_text('{"eval": 1}\n{"ev')
    run_cli = cli if fault == "truncated checkpoint" else partial(inproc, capsys)
    err = one_line_error(run_cli("train", *BASE, f"out_dir={tmp_path}", "name=done",
                                 "train.epochs=3", "--resume"))
    name = "checkpoint.pt" if "checkpoint" in fault else "metrics.jsonl"
    assert err.startswith("error:") and name in err, err


def test_damaged_or_unchecksummed_best_pt(done, tmp_path, capsys):
    run = copy_run(done, tmp_path / "done")
    p = inproc(capsys, "eval", "--run", str(run))
    assert p.returncode == 0, p.stderr
    data = bytearray((run / "best.pt").read_bytes())
    data[-40] ^= 0x01
    (run / "best.pt").write_bytes(bytes(data))
    err = one_line_error(cli("eval", "--run", str(run)))
    assert "best.pt is damaged" in err
    # a run made before checksums (no sidecar): a truncated file still fails to load cleanly
    (run / "best.pt.sha256").unlink()
    (run / "best.pt").write_bytes(bytes(data[:100]))
    err = one_line_error(inproc(capsys, "eval", "--run", str(run)))
    assert "best.pt is damaged or truncated" in err


def test_run_killed_before_its_first_checkpoint(tmp_path, capsys):
    cfg = load_config(None, [*BASE, f"out_dir={tmp_path}", "name=k", "train.epochs=1"])
    train(cfg)
    run = RunDir(tmp_path / "k")
    for f in ("checkpoint.pt", "checkpoint.pt.sha256", "best.pt", "best.pt.sha256",
              "results.json"):
        run.file(f).unlink()  # as left by a kill before the first evaluation
    err = one_line_error(cli("train", *BASE, f"out_dir={tmp_path}", "name=k", "train.epochs=1"))
    assert "already exists" in err and "--overwrite" in err and "--resume" in err
    p = inproc(capsys, "train", *BASE, f"out_dir={tmp_path}", "name=k", "train.epochs=1",
               "--resume")
    assert p.returncode == 0, p.stderr  # nothing to keep: trained from scratch
    assert run.file("results.json").is_file()


# ---------------------------------------------------------------- non-finite losses
def _nan_at(monkeypatch, steps: set[int]) -> None:
    """Make the training loss NaN on the given 1-based training steps."""
    from adatt.train import losses as losses_mod

    orig = losses_mod.TaskLoss.forward
    calls = {"n": 0}

    def forward(self, logits, *a, **kw):
        out = orig(self, logits, *a, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in steps:
                out = out * float("nan")
        return out

    monkeypatch.setattr(losses_mod.TaskLoss, "forward", forward)


def test_nonfinite_loss_stops_with_the_step_and_task_keeping_the_checkpoint(
        tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, {25})
    args = ["train", *BASE, f"out_dir={tmp_path}", "name=n", "train.epochs=2",
            "train.eval_every=1280"]  # a checkpoint every 10 steps
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: non-finite training loss") and "\n" not in err
    assert "step 25" in err and "task 'task1'" in err
    ck = RunDir(tmp_path / "n").load_checkpoint()
    assert 20 <= ck["state"]["step"] < 25  # the last good checkpoint (every 1280 examples)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_nonfinite_skip_counts_the_skipped_batches(tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3, 7})
    cfg = load_config(None, [*BASE, f"out_dir={tmp_path}", "name=s", "train.epochs=1",
                             "train.nonfinite=skip"])
    res = train(cfg)
    assert res["nonfinite_skipped"] == 2
    assert all(v == v for ms in res["test"].values() for v in ms.values())


def test_infinite_learning_rate_never_finishes_silently(tmp_path, capsys):
    args = ["train", *BASE, f"out_dir={tmp_path}", "name=inf", "train.epochs=1",
            "train.optimizer.name=sgd", "train.optimizer.lr=1e30"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: non-finite") and "\n" not in err


# ---------------------------------------------------------------- one-class validation tasks
def test_one_class_validation_task_warns_and_is_left_out_of_auc_selection(tmp_path):
    cfg = load_config(None, [*SIM, f"out_dir={tmp_path}", "name=o", "train.epochs=2",
                             "train.selection.metric=auc"])
    splits = load_splits_for(cfg)
    splits.valid.labels[:, 1] = 0.0  # 'like' has no positive on validation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(cfg, splits=splits)
    msgs = [str(w.message) for w in caught if "one class" in str(w.message)]
    assert msgs and "'like'" in msgs[0] and "validation" in msgs[0]
    lines = RunDir(tmp_path / "o").metrics()
    assert [x["score"] for x in lines] == [x["valid"]["view"]["auc"] for x in lines]
    assert res["selection_score"] == max(x["score"] for x in lines)
    # logloss selection keeps every task (one class has a logloss)
    cfg = load_config(None, [*SIM, f"out_dir={tmp_path}", "name=l", "train.epochs=1",
                             "train.selection.metric=logloss"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg, splits=splits)
    (line,) = RunDir(tmp_path / "l").metrics()
    v = line["valid"]
    assert line["score"] == pytest.approx((v["view"]["logloss"] + v["like"]["logloss"]) / 2)


# ---------------------------------------------------------------- a full disk
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch, capsys):
    from adatt.train import rundir

    real = os.replace
    saves = {"n": 0}

    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(rundir.os, "replace", replace)
    args = ["train", *BASE, f"out_dir={tmp_path}", "name=d", "train.epochs=3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left") and "\n" not in err
    assert "checkpoint.pt survives" in err
    run = RunDir(tmp_path / "d")
    assert run.load_checkpoint()["state"]["evals"] == 1  # the first, intact and verified
    assert not list(run.path.glob("*.tmp"))
    monkeypatch.setattr(rundir.os, "replace", real)
    args = ["train", *BASE, f"out_dir={tmp_path}", "name=d", "train.epochs=3", "--resume"]
    assert main(args) == 0


def test_disk_full_writing_the_census_cache_warns_and_goes_on(tmp_path, monkeypatch):
    from adatt.data import census
    from tests.test_data_census import TEST_ROWS, TRAIN_ROWS, write_census

    sums = write_census(tmp_path / "data", TRAIN_ROWS, TEST_ROWS)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(census, "_save_cache", full)
    with pytest.warns(UserWarning, match="census cache not written.*No space left"):
        s = census.load_census(tmp_path / "data", cache_dir=tmp_path / "cache", checksums=sums,
                               download=False)
    assert s.sizes()["train"] == 6 and s.info["cache_path"] is None


# ---------------------------------------------------------------- Ctrl-C
def test_ctrl_c_exits_130_in_one_line_keeping_the_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "adatt", "train", *BASE, f"out_dir={tmp_path}", "name=c",
            "train.epochs=200", "train.eval_every=1280"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    ck = tmp_path / "c" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ck.is_file() and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    res = subprocess.CompletedProcess(args, p.returncode, out, err)
    line = one_line_error(res, code=130)
    assert line.startswith("error:") and "interrupted" in line
    run = RunDir(tmp_path / "c")
    assert run.load_checkpoint()["state"]["evals"] >= 1
    assert not list(run.path.glob("*.tmp"))


def test_verified_load_rejects_a_checkpoint_that_is_not_listed(tmp_path):
    """A file written around the run (digest not in the sidecar) is refused."""
    run = RunDir(tmp_path / "r", writes=True)
    run.path.mkdir()
    run.save_checkpoint({"a": 1})
    run.save_checkpoint({"a": 2})
    assert run.load_checkpoint()["a"] == 2
    assert len(run.file("checkpoint.pt.sha256").read_text().split()) == 1
    torch.save({"a": 3}, run.file("checkpoint.pt"))
    with pytest.raises(RunError, match="checkpoint.pt is damaged"):
        run.load_checkpoint()


def test_ensemble_stops_on_a_nonfinite_loss_naming_the_seed(tmp_path, monkeypatch):
    from adatt.config import ConfigError
    from adatt.train import ensemble

    cfg = load_config(None, [*BASE, f"out_dir={tmp_path}", "name=e", "train.epochs=1",
                             "train.nonfinite=skip"])
    with pytest.raises(ConfigError, match="train.nonfinite=skip: not supported"):
        ensemble.check_ensemble_config(cfg)
    orig = ensemble.train_step

    def step(*a, **kw):
        losses = orig(*a, **kw)  # [S,T]
        return torch.where(torch.arange(losses.shape[0])[:, None] == 1, float("inf"), losses)

    monkeypatch.setattr(ensemble, "train_step", step)
    cfg = load_config(None, [*BASE, f"out_dir={tmp_path}", "name=e", "train.epochs=1"])
    with pytest.raises(RunError, match=r"step 1 in task 'task1' of seed 5"):
        ensemble.train_ensemble(cfg, [4, 5])
