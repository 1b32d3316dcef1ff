"""Data-parallel training: 2 CPU processes under torchrun equal one process, both ways of resuming.

The data exercises every path of the loss shares: a binary and a regression
task, categorical fields, per-row weights, and a last batch of one
row (rank 1 then runs a stand-in row). SGD is used because Adam is nearly
invariant to the gradient's scale (a missed factor of 2 would go unseen).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from adatt.config import ConfigError, load_config
from adatt.train import distributed as ddp
from adatt.train.trainer import train
from tests.ranks import run_ranks

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
            "train.grad_clip=5.0", "runtime.threads=1", "runtime.progress=false",
            f"out_dir={tmp_path}", f"name={name}", *extra]


def _torchrun(tmp_path, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adatt", "train", *args]
    p = run_ranks(cmd, {**os.environ, "OMP_NUM_THREADS": "1"})
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
    _torchrun(tmp_path, _overrides(tmp_path, "two", f"train.max_examples={2 * N_TRAIN}"))
    _same_run(tmp_path / "one", tmp_path / "two", evals=2)
    train(load_config(None, _overrides(tmp_path, "two")), resume=True)
    _same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_one_process_resumed_on_two(tmp_path):
    train(load_config(None, _overrides(tmp_path, "one")))
    train(load_config(None, _overrides(tmp_path, "two", f"train.max_examples={2 * N_TRAIN}")))
    _torchrun(tmp_path, [*_overrides(tmp_path, "two"), "--resume"])
    _same_run(tmp_path / "one", tmp_path / "two")


def test_row_ranges_split_any_batch():
    for n in (0, 1, 5, 100, 101):
        for w in (1, 2, 3):
            parts = [ddp.row_range(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_config_errors(monkeypatch):
    cfg = load_config(None, ["runtime.distributed=true"])
    with pytest.raises(ConfigError, match="launch with torchrun"):
        ddp.init(cfg)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for over, msg in (("train.weighting=gradnorm", "not supported with distributed"),
                      ("train.weighting=pcgrad", "not supported with distributed"),
                      ("runtime.distributed=false", "launched as 2 processes"),
                      ("runtime.device=cuda:0", "each process takes the GPU")):
        with pytest.raises(ConfigError, match=msg):
            ddp.init(load_config(None, [over]))
    assert not ddp.is_active()


# --------------------------------------------------------------------------- data.rank_shards

SHARD_ROWS = (200, 170, 180, 160)  # 2 ranks: files 0, 2 -> 380 rows, files 1, 3 -> 330 rows
LOCAL, STEPS, EPOCH_ROWS = 50, 7, 680  # batch 100 -> 50 per rank; min(8, 7) steps; 350 + 330

# Runs `adatt train` under torchrun, recording per rank which shard files the training stream
# reads and the rows of every training step; KILL_AT_EVAL=k: rank 0 dies after evaluation k.
RUNNER = """\
import os, sys
import adatt.data.stream as st
import adatt.train.distributed as ddp
import adatt.train.rundir as rd
from adatt.cli import main

rank, out = int(os.environ["RANK"]), os.environ["RECORD_DIR"]
read, steps = set(), []
chunk, losses, save = st.ShardStream._chunk, ddp.Shard.losses, rd.RunDir.save_checkpoint

def record_chunk(self):
    read.add(self.data.shards[self.order[self.shard_pos]].path.name)
    return chunk(self)

def record_losses(self, loss_fn, logits, batch):
    steps.append(len(batch) if self.live else 0)
    return losses(self, loss_fn, logits, batch)

def maybe_die(self, checkpoint):  # after an evaluation and its checkpoint
    save(self, checkpoint)
    if rank == 0 and checkpoint["state"]["evals"] == int(os.environ.get("KILL_AT_EVAL", "0")):
        os._exit(9)

st.ShardStream._chunk, ddp.Shard.losses = record_chunk, record_losses
rd.RunDir.save_checkpoint = maybe_die
code = main(sys.argv[1:])
with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
    f.write(" ".join(sorted(read)) + "\\n" + " ".join(map(str, steps)) + "\\n")
sys.exit(code)
"""


def _write_shards(d) -> list[str]:
    """Parquet shards of the CSV data's schema (rows SHARD_ROWS, row groups of 64)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)

    def table(n: int) -> pa.Table:
        x = rng.normal(size=(n, 3))
        c1, c2 = rng.integers(0, 5, n), rng.integers(0, 3, n)
        z = x[:, 0] - x[:, 1] + 0.5 * (c1 == 2)
        return pa.table({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "c1": c1, "c2": c2,
                         "click": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64),
                         "time": x[:, 2] + 0.3 * c2 + 0.1 * rng.normal(size=n),
                         "w": rng.choice([0.5, 1.0, 2.0], n)})

    (d / "train").mkdir(parents=True)
    for i, n in enumerate(SHARD_ROWS):
        pq.write_table(table(n), d / "train" / f"part-{i:05d}.parquet", row_group_size=64)
    pq.write_table(table(200), d / "valid.parquet")
    pq.write_table(table(200), d / "test.parquet")
    (d / "schema.yaml").write_text(SCHEMA)
    return ["data.source=stream", f"data.schema={d / 'schema.yaml'}", f"data.train={d / 'train'}",
            f"data.valid={d / 'valid.parquet'}", f"data.test={d / 'test.parquet'}",
            "data.shuffle_buffer=120"]


def _stream_overrides(data: list[str], tmp_path, name: str, *extra: str) -> list[str]:
    return [*data, "data.rank_shards=true", "model.name=adatt_sp", "model.expert_sizes=[8, 8]",
            "model.experts_per_task=1", "model.tower_sizes=[4]", "model.embedding_dim=4",
            "train.batch_size=100", "train.epochs=2", "train.eval_every=300",
            "train.weighting=uncertainty", "train.optimizer.name=sgd", "train.optimizer.lr=0.1",
            "train.optimizer.momentum=0.9", "runtime.threads=1", "runtime.progress=false",
            f"out_dir={tmp_path}", f"name={name}", *extra]


def _torchrun_runner(tmp_path, args: list[str], kill_at: int = 0) -> dict[int, tuple]:
    """Run RUNNER on 2 processes; per rank (files read, rows per step) unless killed."""
    script, record = tmp_path / "runner.py", tmp_path / "record"
    script.write_text(RUNNER)
    record.mkdir(exist_ok=True)
    for f in record.iterdir():
        f.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECORD_DIR": str(record),
           "KILL_AT_EVAL": str(kill_at)}
    p = run_ranks(cmd, env)
    if kill_at:
        assert p.returncode != 0
        return {}
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = {}
    for r in (0, 1):
        files, steps = (record / f"rank{r}.txt").read_text().splitlines()
        out[r] = (files.split(), [int(x) for x in steps.split()])
    return out


def test_rank_shards_read_own_files_and_resume_after_kill(tmp_path):
    """2 processes, each streaming its own files: rank 0 reads files 0 and 2, rank 1 files 1
    and 3, each trains on whole local batches, 7 steps per epoch (rank 0's last 30 rows of an
    epoch are dropped); killed mid-epoch and resumed, the same numbers as uninterrupted."""
    data = _write_shards(tmp_path / "shards")
    seen = _torchrun_runner(tmp_path, _stream_overrides(data, tmp_path, "full"))
    assert seen[0][0] == ["part-00000.parquet", "part-00002.parquet"]
    assert seen[1][0] == ["part-00001.parquet", "part-00003.parquet"]
    assert seen[0][1] == [LOCAL] * STEPS * 2  # 380 rows: 8 batches, 7 used
    assert seen[1][1] == ([LOCAL] * (STEPS - 1) + [30]) * 2  # 330 rows: the last batch 30
    res = json.loads((tmp_path / "full" / "results.json").read_text())
    assert res["train_examples"] == 2 * EPOCH_ROWS and res["data"] == "stream"
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["examples"] for x in lines] == [300, 600, 980, 1280, 1360]  # global examples

    killed = _stream_overrides(data, tmp_path, "killed")
    _torchrun_runner(tmp_path, killed, kill_at=2)  # at 600 examples: epoch 0, step 6 of 7
    ck = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    pos = ck["state"]["source"]
    assert pos["world"] == 2 and ck["state"]["examples"] == 600
    assert [[f for f, _ in p["shards"]] for p in pos["ranks"]] == [seen[0][0], seen[1][0]]
    assert [(p["epoch"], p["batch"], p["rank"]) for p in pos["ranks"]] == [(0, 6, 0), (0, 6, 1)]
    assert pos["ranks"][0]["count"] > 0  # rank 0's buffer still holds rows
    resumed = _torchrun_runner(tmp_path, [*killed, "--resume"])
    assert resumed[1][1] == [30] + [LOCAL] * (STEPS - 1) + [30]
    _same_run(tmp_path / "full", tmp_path / "killed")


def test_rank_shards_steps_limit_and_errors(tmp_path):
    """Without torchrun: the per-rank plan, a row limit, and the one-line errors."""
    from types import SimpleNamespace

    from adatt.data.errors import DataError
    from adatt.data.stream import load_stream

    d = tmp_path / "shards"
    _write_shards(d)
    data = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet",
                       d / "test.parquet").train
    src = [ddp.RankShards(data, 100, 0, r, 2) for r in (0, 1)]
    assert [s.rank_rows for s in src] == [[380, 330]] * 2
    assert (src[0].steps, src[0].rows) == (STEPS, EPOCH_ROWS) == ddp.rank_plan([380, 330], 50)
    # a limit of 130 rows: step 0 is 50 + 50, step 1 rank 0's first 30 rows (rank 1 stand-in)
    for r, want in ((0, [(50, True), (30, True)]), (1, [(50, True), (1, False)])):
        steps = [ddp.shard(i, src[r]) for i, _ in src[r].indexed_batches(0, limit=130)]
        assert [(x.index.numel(), x.live) for x in steps] == want
        assert [x.rows for x in steps] == [100, 30]
    # every step of an epoch: whole local batches, the global count
    shards = [[ddp.shard(i, s) for i, _ in s.indexed_batches(1)] for s in src]
    assert [len(x) for x in shards] == [STEPS, STEPS]
    assert [x.index.numel() for x in shards[1]] == [50] * 6 + [30]
    assert [x.rows for x in shards[0]] == [100] * 6 + [80]
    assert all(x.index.numel() == 50 for x in shards[0])

    def err(exc, fn, *a) -> str:
        with pytest.raises(exc) as e:
            fn(*a)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "train.batch_size=101 is not divisible by the 2 processes" in err(
        ConfigError, ddp.RankShards, data, 101, 0, 0, 2)
    assert "4 training shard files cannot feed 5 processes" in err(
        ConfigError, ddp.RankShards, data, 100, 0, 0, 5)
    fake = SimpleNamespace(shards=[0, 1], rows_for=lambda r, w: (10, 0)[r])
    assert "the shard files of process 1 have no rows" in err(
        ConfigError, ddp.RankShards, fake, 100, 0, 0, 2)
    # resuming: another process count, the other mode, either way round
    saved = {"rank_shards": True, "world": 3, "ranks": [None] * 3}
    assert "saved by 3 processes, this run has 2" in err(
        ConfigError, src[0].load_state_dict, saved)
    assert "resume with data.rank_shards=false" in err(
        ConfigError, src[0].load_state_dict, data.stream(100).state_dict())
    assert "resume with data.rank_shards=true on 2 processes" in err(
        DataError, data.stream(100).load_state_dict, src[0].state_dict())
    # in one process (or in memory) the option changes nothing
    assert type(ddp.batch_source(data, 100, 0, rank_shards=True)).__name__ == "ShardStream"
