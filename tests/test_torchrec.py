"""TorchRec integration: embedding-mode equivalence, 2-rank sharded training, missing extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adatt.data.batch import TensorDataset
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits
from adatt.integrations import torchrec as atr
from adatt.models import create_model, list_models
from tests.ranks import spawn_ranks

CARDS = (11, 7, 5, 13)
SCHEMA = FeatureSchema(("d0", "d1", "d2"), ("user", "item", "genre.top", "city"), CARDS,
                       (TaskSpec("click"), TaskSpec("like")))
MODEL_OPTS = dict(expert_sizes=[8, 6], tower_sizes=[4])
GLOBAL_BATCH, STEPS, WORLD = 32, 4, 2


@pytest.fixture
def torchrec():
    return pytest.importorskip("torchrec")


def _toy_splits(rows: int = 512) -> Splits:
    g = torch.Generator().manual_seed(7)
    dense = torch.randn(rows, 3, generator=g)
    cat = torch.stack([torch.randint(0, c, (rows,), generator=g) for c in CARDS], 1)  # [N,F]
    labels = torch.stack([(cat[:, 0] % 2 == 0) ^ (dense[:, 0] > 1),
                          (cat[:, 1] + cat[:, 3]) % 3 == 0], 1).float()  # [N,T]
    full = TensorDataset(dense, cat, labels)
    n = rows // 4
    return Splits("toy", SCHEMA, full.subset(torch.arange(2 * n, rows)),
                  full.subset(torch.arange(0, n)), full.subset(torch.arange(n, 2 * n)))


def _batch(splits: Splits, step: int):
    return splits.train.batch(slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH))


# ------------------------------------------------------------------ without the extra


def test_missing_torchrec_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec -> ImportError
    for call in (lambda: atr.TorchRecMultiTask("adatt", 2, 3, tables=[]),
                 lambda: atr.schema_to_tables(SCHEMA, 4),
                 lambda: atr.cat_to_kjt(torch.zeros(2, 4, dtype=torch.long), SCHEMA.categorical)):
        with pytest.raises(atr.TorchRecError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith("torchrec support needs `pip install adatt[torchrec]`")
        assert "\n" not in msg


def test_missing_torchrec_cli_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchrec", None)
    assert atr.main(["model.embedding_dim=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: torchrec support needs `pip install adatt[torchrec]`")
    assert "\n" not in err


def test_importing_adatt_does_not_import_torchrec():
    code = "import sys, adatt.integrations.torchrec; print('torchrec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ one process


def test_kjt_layout(torchrec):
    kjt = atr.cat_to_kjt(torch.tensor([[1, 2], [3, 4], [5, 6]]), ["a", "b"])
    assert kjt.keys() == ["a", "b"]
    assert kjt.values().tolist() == [1, 3, 5, 2, 4, 6]  # feature-major
    assert kjt.lengths().tolist() == [1] * 6
    jag = atr.jagged_to_kjt({"a": [[1], [], [2, 3]], "b": [[0], [1], [2]]})
    assert jag.lengths().tolist() == [1, 0, 2, 1, 1, 1]
    with pytest.raises(atr.DataError):
        atr.jagged_to_kjt({"a": [[1]], "b": [[0], [1]]})


def test_table_names_are_module_safe_and_unique(torchrec):
    schema = FeatureSchema((), ("a.b", "a_b", ""), (2, 3, 4), (TaskSpec("t"),))
    assert [t.name for t in atr.schema_to_tables(schema, 2)] == ["a_b", "a_b_1", "table"]


@pytest.mark.parametrize("name", sorted(list_models()))
def test_logits_equal_embedding_mode(torchrec, name):
    opts = dict(MODEL_OPTS, expert_sizes=[[8, 6]]) if name == "mmoe" else MODEL_OPTS
    torch.manual_seed(0)
    ref = create_model(name, num_tasks=2, dense_dim=3, cat_cardinalities=list(CARDS),
                       embedding_dim=4, **opts)
    m = atr.TorchRecMultiTask(name, 2, 3, atr.schema_to_tables(SCHEMA, 4), **opts)
    m.copy_from(ref)
    b = _toy_splits().train.batch(slice(0, 64))
    kjt = atr.cat_to_kjt(b.cat, SCHEMA.categorical)
    want, want_w = ref.forward_with_weights(b.dense, b.cat)
    got, got_w = m.forward_with_weights(b.dense, kjt)
    assert got.shape == (64, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_w, want_w, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # the pooled embeddings are our embedding lookups, fields in order
    offsets = torch.tensor([0, *CARDS[:-1]]).cumsum(0)
    emb = ref.input.embedding(b.cat + offsets).flatten(1)  # [B,F,k] -> [B,F*k]
    torch.testing.assert_close(m.pooled(kjt), emb)


def test_multi_valued_features_sum_pool(torchrec):
    tables = atr.schema_to_tables(FeatureSchema((), ("a", "b"), (6, 4), (TaskSpec("t"),)), 3)
    m = atr.TorchRecMultiTask("mmoe", 1, 0, tables, expert_sizes=[[4]], num_experts=2)
    kjt = atr.jagged_to_kjt({"a": [[1, 5], [], [0, 0, 2]], "b": [[3], [1, 2], []]})
    wa, wb = m.ebc.embedding_bags["a"].weight, m.ebc.embedding_bags["b"].weight
    want = torch.stack([torch.cat([wa[1] + wa[5], wb[3]]),
                        torch.cat([torch.zeros(3), wb[1] + wb[2]]),
                        torch.cat([2 * wa[0] + wa[2], torch.zeros(3)])])  # [B, P]
    torch.testing.assert_close(m.pooled(kjt), want)
    assert m(torch.zeros(3, 0), kjt).shape == (3, 1)


def test_copy_from_refuses_other_models(torchrec):
    m = atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    onehot = create_model("adatt", num_tasks=2, dense_dim=3, cat_cardinalities=list(CARDS),
                          **MODEL_OPTS)
    with pytest.raises(ValueError, match="embedding_dim"):
        m.copy_from(onehot)
    with pytest.raises(ValueError, match="set by the embedding tables"):
        atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), embedding_dim=4)


def test_evaluate_one_process_in_batches(torchrec):
    from adatt.train.metrics import MetricAccumulator

    torch.manual_seed(0)
    m = atr.TorchRecMultiTask("ple", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    data = _toy_splits().valid
    acc = MetricAccumulator(SCHEMA.task_names, SCHEMA.task_kinds)
    with torch.no_grad():
        acc.update(m(data.dense, atr.cat_to_kjt(data.cat, SCHEMA.categorical)), data.labels)
    want, got = acc.compute(), atr.evaluate_sharded(m, data, SCHEMA, batch_size=50)
    assert got["click"]["count"] == len(data)
    for task in want:
        for k in want[task]:
            assert got[task][k] == pytest.approx(want[task][k], rel=1e-5, nan_ok=True)


def test_adam_has_no_cpu_kernel(torchrec):
    m = atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    with pytest.raises(atr.ConfigError, match="rowwise_adagrad"):
        atr.apply_sparse_optimizer(m, "adam")


# ------------------------------------------------------------------ two processes


def _initial_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    return m.state_dict()


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    from adatt.config import load_config

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp, "store"), world),
                            rank=rank, world_size=world)
    splits = _toy_splits()
    # (a) a few steps from the single-process run's initial weights (built here with the same
    # seed: shard() keeps them), SGD on both sides
    torch.manual_seed(0)
    module = atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    atr.apply_sparse_optimizer(module, "sgd", lr=0.5)
    model, plan = atr.shard(module, "table_wise")
    dense = [p for n, p in model.named_parameters() if not n.startswith("ebc.")]
    opt = torch.optim.SGD(dense, lr=0.5)
    local = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        b = _batch(splits, step)
        part = slice(rank * local, (rank + 1) * local)
        kjt = atr.cat_to_kjt(b.cat[part], SCHEMA.categorical)
        losses.append(atr.train_step(model, opt, b.dense[part], kjt, b.labels[part], None,
                                     SCHEMA.task_kinds).tolist())
    state = atr.full_state_dict(model)
    # (b) the whole recipe from a run config
    cfg = load_config(None, ["model.name=adatt", "model.embedding_dim=4",
                             "model.expert_sizes=[8, 6]", "model.tower_sizes=[4]",
                             "train.batch_size=32", "train.epochs=3", "runtime.progress=false",
                             "train.optimizer.lr=0.01", "train.eval_batch_size=50",
                             f"out_dir={tmp}", "name=run"])
    res = atr.train_torchrec(cfg, splits=splits, sparse_optimizer="rowwise_adagrad",
                             sparse_lr=0.1)
    if rank == 0:
        torch.save({"losses": losses, "state": state, "plan": atr.plan_placement(plan),
                    "results": res}, os.path.join(tmp, "dist.pt"))
    dist.destroy_process_group()


def test_two_ranks_sharded_training_matches_one_process(torchrec, tmp_path):
    t0 = time.perf_counter()
    out = Path(spawn_ranks(_worker, WORLD, str(tmp_path), timeout=120.0))
    got = torch.load(out / "dist.pt", weights_only=False)

    # the plan shards the tables table-wise over both ranks
    plan = got["plan"]
    assert set(plan) == {"user", "item", "genre_top", "city"}
    assert all(p["sharding"] == "table_wise" and len(p["ranks"]) == 1 for p in plan.values())
    assert {p["ranks"][0] for p in plan.values()} == {0, 1}

    # one process, unsharded, the same global batches: same losses and weights
    ref = atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    ref.load_state_dict(_initial_state())
    atr.apply_sparse_optimizer(ref, "sgd", lr=0.5)
    opt = torch.optim.SGD([p for n, p in ref.named_parameters() if not n.startswith("ebc.")],
                          lr=0.5)
    splits = _toy_splits()
    want = []
    for step in range(STEPS):
        b = _batch(splits, step)
        kjt = atr.cat_to_kjt(b.cat, SCHEMA.categorical)
        want.append(atr.train_step(ref, opt, b.dense, kjt, b.labels, None,
                                   SCHEMA.task_kinds).tolist())
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want),
                               rtol=1e-5, atol=1e-6)
    assert sum(want[-1]) < sum(want[0])
    ref_state = ref.state_dict()
    assert set(got["state"]) == set(ref_state)
    moved = 0.0
    for k, v in ref_state.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-5, msg=k)
        moved = max(moved, float((v - _initial_state()[k]).abs().max()))
    assert moved > 1e-3  # the tables and layers did train

    # the recipe: loss goes down, metrics and files written by rank 0, the selected weights
    # (best.pt) scored
    res = got["results"]
    assert res["world_size"] == 2 and {p["ranks"][0] for p in res["plan"].values()} == {0, 1}
    first, last = res["epoch_train_loss"][0], res["epoch_train_loss"][-1]
    assert sum(last) < sum(first)
    assert set(res["test"]) == {"click", "like"} and res["test"]["click"]["auc"] > 0.5
    run = out / "run"
    assert json.loads((run / "results.json").read_text())["train_examples"] == 3 * 256 // 32 * 32
    state = torch.load(run / "best.pt", weights_only=True)
    m = atr.TorchRecMultiTask("adatt", 2, 3, atr.schema_to_tables(SCHEMA, 4), **MODEL_OPTS)
    m.load_state_dict(state)  # the saved model loads unsharded
    # sharded evaluation (each rank 64 of the 128 rows, in batches of 50 and 14) scores the
    # rows as one process does
    one = atr.evaluate_sharded(m, splits.valid, SCHEMA, batch_size=4096)
    for task in ("click", "like"):
        for k in ("auc", "logloss", "count"):
            assert res["valid"][task][k] == pytest.approx(one[task][k], rel=1e-5), (task, k)
    print(f"two-rank test: {time.perf_counter() - t0:.1f} s")


# ------------------------------------------------------------------ selection and --resume

TR_RUN = ["model.name=mmoe", "model.embedding_dim=4", "model.expert_sizes=[[8]]",
          "model.num_experts=2", "train.batch_size=32", "train.epochs=3", "train.eval_every=96",
          "runtime.progress=false", "runtime.threads=1", "train.optimizer.lr=0.02",
          "train.eval_batch_size=50"]


class _Killed(Exception):
    pass


def test_selection_best_pt_and_exact_resume(torchrec, tmp_path, monkeypatch):
    """Validation-only selection writes best.pt and the same results.json keys as
    `adatt train`; a run killed after its second checkpoint and resumed ends with the
    uninterrupted run's numbers."""
    from adatt.config import load_config
    from adatt.train.rundir import RunDir

    splits = _toy_splits()
    flush = []  # the recipe sets train.flush_denormal like the others
    real_flush = atr.flush_denormals
    monkeypatch.setattr(atr, "flush_denormals", lambda on: flush.append(on) or real_flush(on))
    whole = atr.train_torchrec(load_config(None, [*TR_RUN, f"out_dir={tmp_path}", "name=a"]),
                               splits=splits, sparse_lr=0.1)
    assert flush == [True]
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8  # 24 steps of 32 rows, one evaluation per 96 examples
    best = max(lines, key=lambda x: x["score"])
    assert whole["selected"]["eval"] == best["eval"]
    assert whole["selection_score"] == best["score"]
    for key in ("selected", "selection_metric", "selection_score", "valid", "test",
                "num_parameters", "train_examples", "train_examples_per_s", "wall_time_s"):
        assert key in whole
    # the selected weights are what results.json scores
    m = atr.TorchRecMultiTask("mmoe", 2, 3, atr.schema_to_tables(SCHEMA, 4),
                              expert_sizes=[[8]], num_experts=2)
    m.load_state_dict(torch.load(tmp_path / "a" / "best.pt", weights_only=True))
    again = atr.evaluate_sharded(m, splits.valid, SCHEMA, batch_size=50)
    assert again["click"]["auc"] == pytest.approx(whole["valid"]["click"]["auc"], rel=1e-6)

    save = RunDir.save_checkpoint

    def kill_after_second(self, checkpoint):
        save(self, checkpoint)
        if checkpoint["state"]["evals"] == 2:
            raise _Killed

    cfg = load_config(None, [*TR_RUN, f"out_dir={tmp_path}", "name=b"])
    monkeypatch.setattr(RunDir, "save_checkpoint", kill_after_second)
    with pytest.raises(_Killed):
        atr.train_torchrec(cfg, splits=splits, sparse_lr=0.1)
    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    with pytest.raises(atr.RunError, match="already exists"):
        atr.train_torchrec(cfg, splits=splits, sparse_lr=0.1)
    resumed = atr.train_torchrec(cfg, splits=splits, sparse_lr=0.1, resume=True)
    assert resumed["selected"] == whole["selected"]
    flat = [v for epoch in whole["epoch_train_loss"] for v in epoch]
    assert [v for e in resumed["epoch_train_loss"] for v in e] == pytest.approx(flat, rel=1e-6)
    for split in ("valid", "test"):
        for task, ms in whole[split].items():
            for k, v in ms.items():
                assert resumed[split][task][k] == pytest.approx(v, rel=1e-6), (split, task, k)
    b_lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["score"] for x in b_lines] == pytest.approx([x["score"] for x in lines])
