"""Data-parallel training: 2 CPU processes under torchrun equal one process, both ways of resuming.

The data exercises every path of the loss shares: a binary and a regression
task, categorical fields, per-row weights, and a last batch of one
row (rank 1 then runs a stand-in row). SGD is used because Adam is nearly
invariant to the gradient's scale (a missed factor of 2 would go unseen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from adatt.config import ConfigError, load_config
from adatt.train import distributed as ddp
from adatt.train.trainer import train

N_TRAIN = 601  # batch 100: the last batch of each epoch has 1 row
SCHEMA = """dense: [x1, x2, x3]
categorical: [c1, c2]
labels: {click: binary, time: regression}
weight: w
"""


def _write_data(d) -> list[str]:
    rng = np.random.default_rng(0)
    for name, n in (("train", N_TRAIN), ("valid", 200), ("test", 200)):
        x = rng.normal(size=(n, 3))
        c1, c2 = rng.integers(0, 5, n), rng.integers(0, 3, n)
        z = x[:, 0] - x[:, 1] + 0.5 * (c1 == 2)
        click = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
        time = x[:, 2] + 0.3 * c2 + 0.1 * rng.normal(size=n)
        w = rng.choice([0.5, 1.0, 2.0], n)  # no 0: a 1-row batch of weight 0 is NaN
        rows = ["x1,x2,x3,c1,c2,click,time,w"] + [
            f"{a:.5f},{b:.5f},{c:.5f},{u},{v},{y},{t:.5f},{ww}"
            for (a, b, c), u, v, y, t, ww in zip(x, c1, c2, click, time, w, strict=True)]
        (d / f"{name}.csv").write_text("\n".join(rows) + "\n")
    (d / "schema.yaml").write_text(SCHEMA)
    return ["data.source=files", f"data.schema={d / 'schema.yaml'}",
            f"data.train={d / 'train.csv'}", f"data.valid={d / 'valid.csv'}",
            f"data.test={d / 'test.csv'}"]


def _overrides(tmp_path, name: str, *extra: str) -> list[str]:
    return [*_write_data(tmp_path), "model.name=adatt_sp", "model.expert_sizes=[8, 8]",
            "model.experts_per_task=1", "model.tower_sizes=[4]", "model.embedding_dim=4",
            "train.batch_size=100", "train.epochs=3", "train.weighting=uncertainty",
            "train.optimizer.name=sgd", "train.optimizer.lr=0.1", "train.optimizer.momentum=0.9",
            "train.grad_clip=5.0", "train.threads=1", "train.progress=false",
            f"out_dir={tmp_path}", f"name={name}", *extra]


def _torchrun(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adatt", "train", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("selected:") == 1  # rank 0 prints the results, rank 1 nothing


def _same_run(a, b, evals: int | None = None) -> None:
    """Equal metrics lines (the first ``evals``), results and best weights, to 1e-5."""
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()][:evals]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()][:evals]
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        assert x["examples"] == y["examples"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
        for task in x["valid"]:
            for k, v in x["valid"][task].items():
                assert y["valid"][task][k] == pytest.approx(v, abs=1e-5), (task, k)
    if evals is not None:
        return
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["selected"] == rb["selected"]
    for split in ("valid", "test"):
        for task, ms in ra[split].items():
            for k, v in ms.items():
                assert rb[split][task][k] == pytest.approx(v, abs=1e-5), (split, task, k)
    wa, wb = (torch.load(d / "best.pt", weights_only=True) for d in (a, b))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_two_processes_equal_one_then_resume_on_one(tmp_path):
    """2 processes stop after 2 epochs: the same evaluations as 1 process; 1 process resumes
    their checkpoint to the same final numbers."""
    train(load_config(None, _overrides(tmp_path, "one")))
    _torchrun(_overrides(tmp_path, "two", f"train.max_examples={2 * N_TRAIN}"))
    _same_run(tmp_path / "one", tmp_path / "two", evals=2)
    train(load_config(None, _overrides(tmp_path, "two")), resume=True)
    _same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_one_process_resumed_on_two(tmp_path):
    train(load_config(None, _overrides(tmp_path, "one")))
    train(load_config(None, _overrides(tmp_path, "two", f"train.max_examples={2 * N_TRAIN}")))
    _torchrun([*_overrides(tmp_path, "two"), "--resume"])
    _same_run(tmp_path / "one", tmp_path / "two")


def test_row_ranges_split_any_batch():
    for n in (0, 1, 5, 100, 101):
        for w in (1, 2, 3):
            parts = [ddp.row_range(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_config_errors(monkeypatch):
    tc = load_config(None, ["train.distributed=true"]).train
    with pytest.raises(ConfigError, match="launch with torchrun"):
        ddp.init(tc)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for over, msg in (("train.weighting=gradnorm", "not supported with distributed"),
                      ("train.weighting=pcgrad", "not supported with distributed"),
                      ("train.distributed=false", "launched as 2 processes"),
                      ("train.device=cuda:0", "each process takes the GPU")):
        with pytest.raises(ConfigError, match=msg):
            ddp.init(load_config(None, [over]).train)
    assert not ddp.is_active()
