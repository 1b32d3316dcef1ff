"""Partial labels (NaN: unlabelled), conditional tasks and per-task weights on the training side.

The data are built directly as TensorDatasets with NaN labels and the TaskSpec
fields (``missing``, ``condition``, ``weight``): ``buy`` is defined where
``click`` is 1, ``rating`` (regression) is observed on about half of the rows,
and the per-task weight is ``[N, T]``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from adatt.config import load_config
from adatt.data.batch import TensorDataset
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits
from adatt.train.losses import TaskLoss, global_batch_losses, task_losses
from adatt.train.metrics import MetricAccumulator, auc, chained_metrics, normalized_entropy
from adatt.train.selection import check_labelled, one_class_tasks
from adatt.train.trainer import train
from tests.ranks import spawn_ranks

NAN = float("nan")
KINDS = ["binary", "binary", "regression"]
SCHEMA = FeatureSchema(
    ("x1", "x2", "x3"), ("c1",), (5,),
    (TaskSpec("click"), TaskSpec("buy", condition="click"),
     TaskSpec("rating", "regression", missing="mask", weight="rating_w")))
N_TRAIN = 301  # batch 50: the last batch of an epoch has one row (a rank's stand-in row)


def _data(n: int, seed: int, per_task_weight: bool = True) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    c = torch.randint(1, 5, (n, 1), generator=g)
    click = (torch.rand(n, generator=g) < torch.sigmoid(x[:, 0] + 0.3 * c[:, 0] - 1)).float()
    buy = (torch.rand(n, generator=g) < torch.sigmoid(x[:, 1])).float()
    rating = x[:, 2] + 0.2 * c[:, 0] + 0.1 * torch.randn(n, generator=g)
    buy = torch.where(click == 1, buy, torch.full_like(buy, NAN))  # condition: click
    seen = torch.rand(n, generator=g) < 0.5
    rating = torch.where(seen, rating, torch.full_like(rating, NAN))  # missing: mask
    labels = torch.stack([click, buy, rating], 1)  # [N,T]
    row_w = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,), generator=g)]  # [N]
    if per_task_weight:
        rating_w = torch.tensor([1.0, 3.0])[torch.randint(0, 2, (n,), generator=g)]
        weight = torch.stack([row_w, row_w, row_w * rating_w], 1)  # [N,T]
    else:
        weight = row_w
    return TensorDataset(x, c, labels, weight)


def _splits(per_task_weight: bool = True) -> Splits:
    return Splits("toy", SCHEMA, _data(N_TRAIN, 0, per_task_weight), _data(200, 1, per_task_weight),
                  _data(200, 2, per_task_weight))


# --------------------------------------------------------------------------- losses


def _subset_loss(logits, labels, weight, t):
    keep = ~torch.isnan(labels[:, t])
    w = None if weight is None else (weight if weight.dim() == 1 else weight[:, t])[keep]
    return task_losses(logits[keep][:, t : t + 1], labels[keep][:, t : t + 1], [KINDS[t]],
                       w)[0]


@pytest.mark.parametrize("weighting", ["none", "row", "task"])
def test_masked_loss_and_gradient_equal_the_labelled_subset(weighting):
    d = _data(40, 3)
    weight = {"none": None, "row": d.weight[:, 0], "task": d.weight}[weighting]
    loss = TaskLoss.for_schema(SCHEMA)
    for t in range(3):
        x = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
        got = loss.double()(x, d.labels.double(), weight)[t]
        got.backward()
        g_masked = x.grad.clone()
        x.grad = None
        want = _subset_loss(x, d.labels.double(), weight, t)
        want.backward()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g_masked, x.grad)
        assert torch.isfinite(g_masked).all()
        unlabelled = torch.isnan(d.labels[:, t])
        assert unlabelled.any() or t == 0
        assert (g_masked[unlabelled] == 0).all()  # an unlabelled entry has no gradient


def test_a_batch_without_labels_of_a_task_gives_loss_0_and_no_gradient():
    labels = torch.tensor([[1.0, NAN, NAN], [0.0, NAN, NAN]])
    x = torch.zeros(2, 3, requires_grad=True)
    losses = TaskLoss.for_schema(SCHEMA)(x, labels)
    assert losses[1] == 0 and losses[2] == 0
    losses.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[:, 1:] == 0).all()


def test_fully_labelled_schema_keeps_the_plain_path():
    """No partial task and a [B] weight: the loss takes today's path (no mask), bit for bit
    the numbers of the kinds-only loss; a partial schema on full labels agrees closely."""
    full = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("r", "regression")))
    loss = TaskLoss.for_schema(full)
    assert not loss.partial and not loss.per_task(torch.ones(3))
    x, y, w = torch.randn(64, 2), torch.rand(64, 2).round(), torch.rand(64)
    assert torch.equal(loss(x, y, w), TaskLoss(["binary", "regression"])(x, y, w))
    masked = TaskLoss(["binary", "regression"], partial=[True, True])
    torch.testing.assert_close(masked(x, y, w), loss(x, y, w))


def test_metrics_equal_the_labelled_subset_and_use_per_task_weights():
    d = _data(300, 4)
    x = torch.randn(300, 3)
    acc = MetricAccumulator(SCHEMA.task_names, SCHEMA.task_kinds)
    for s in range(0, 300, 64):
        acc.update(x[s : s + 64], d.labels[s : s + 64], d.weight[s : s + 64])
    got = acc.compute()
    for t, task in enumerate(SCHEMA.tasks):
        keep = ~torch.isnan(d.labels[:, t])
        one = MetricAccumulator([task.name], [task.kind])
        one.update(x[keep][:, t : t + 1], d.labels[keep][:, t : t + 1], d.weight[keep][:, t])
        want = one.compute()[task.name]
        assert got[task.name]["count"] == int(keep.sum()) == want["count"]
        for k, v in want.items():
            assert got[task.name][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (task.name, k)
    # weighted AUC / NE of the pure functions with per-column weights [N, C]
    keep = ~torch.isnan(d.labels[:, 1])
    assert got["buy"]["auc"] == pytest.approx(float(auc(x[keep, 1], d.labels[keep, 1],
                                                         d.weight[keep, 1])))
    assert got["buy"]["ne"] == pytest.approx(float(normalized_entropy(
        x[keep, 1], d.labels[keep, 1], d.weight[keep, 1])))
    cols = auc(x[:, :1].expand(-1, 2), d.labels[:, :1].expand(-1, 2), d.weight[:, :2])
    assert float(cols[0]) == pytest.approx(got["click"]["auc"])


def test_chained_ctcvr_metrics_against_a_hand_computation():
    """P(click) * P(buy | click) against `click and buy`, on rows where click is labelled
    (buy's NaN where click = 0 counts as 0), by hand with numpy."""
    d = _data(500, 5, per_task_weight=False)
    x = torch.randn(500, 3)
    acc = MetricAccumulator(SCHEMA.task_names, SCHEMA.task_kinds, {"buy": "click"})
    acc.update(x, d.labels, d.weight)
    got = acc.compute()["buy"]
    xa, xb = x[:, 0].double().numpy(), x[:, 1].double().numpy()
    p = 1 / (1 + np.exp(-xa)) / (1 + np.exp(-xb))
    y = (d.labels[:, 0] == 1).numpy() & (d.labels[:, 1] == 1).numpy()
    w = d.weight.double().numpy()
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    rate = (w * y).sum() / w.sum()
    h = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    pairs = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
    hand_auc = (w[pos][:, None] * w[neg][None, :] * pairs).sum() / (w[pos].sum() * w[neg].sum())
    assert got["ctcvr_count"] == 500
    assert got["ctcvr_pos_rate"] == pytest.approx(rate, rel=1e-12)
    assert got["ctcvr_logloss"] == pytest.approx((w * ll).sum() / w.sum(), rel=1e-10)
    assert got["ctcvr_ne"] == pytest.approx((w * ll).sum() / w.sum() / h, rel=1e-10)
    assert got["ctcvr_calibration"] == pytest.approx((w * p).sum() / (w * y).sum(), rel=1e-10)
    assert got["ctcvr_auc"] == pytest.approx(hand_auc, rel=1e-12)
    assert got["count"] == int((d.labels[:, 0] == 1).sum())  # buy itself: the click rows
    one = chained_metrics(x[:, 0], x[:, 1], torch.as_tensor(y).double(), d.weight)[0]
    assert one["ctcvr_auc"] == pytest.approx(got["ctcvr_auc"])


# --------------------------------------------------------------------------- checks


def test_no_labelled_row_in_training_or_validation_is_one_line_error():
    s = _splits()
    empty = s.train.labels.clone()
    empty[:, 2] = NAN
    bad = Splits("toy", SCHEMA, TensorDataset(s.train.dense, s.train.cat, empty, s.train.weight),
                 s.valid, s.test)
    with pytest.raises(DataError, match=r"^task 'rating' has no labelled row in the training"):
        check_labelled(bad, SCHEMA)
    bad = Splits("toy", SCHEMA, s.train, TensorDataset(s.valid.dense, s.valid.cat,
                 torch.cat([s.valid.labels[:, :1], torch.full((200, 2), NAN)], 1)), s.test)
    with pytest.raises(DataError, match=r"^task 'buy' has no labelled row in the validation"):
        check_labelled(bad, SCHEMA)
    cfg = load_config(None, ["model.name=shared_bottom", "runtime.progress=false"])
    with pytest.raises(DataError) as e:
        train(cfg.model_copy(update={"out_dir": "unused-never-made"}), splits=bad)
    assert "\n" not in str(e.value)
    assert not Path("unused-never-made").exists()
    counts = check_labelled(s, SCHEMA)
    assert counts["train"]["click"] == N_TRAIN
    assert counts["train"]["buy"] == int((s.train.labels[:, 0] == 1).sum())
    # a fully-labelled schema is not counted at all
    assert check_labelled(s, FeatureSchema((), (), (), (TaskSpec("click"),))) == {}


def test_one_class_ignores_unlabelled_rows():
    d = TensorDataset(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.long),
                      torch.tensor([[1.0, 1.0, 0.0], [0.0, NAN, 1.0], [1.0, 1.0, 2.0]]))
    assert one_class_tasks(d, SCHEMA) == ["buy"]


# --------------------------------------------------------------------------- recipes

RUN = ["model.name=adatt_sp", "model.expert_sizes=[8, 8]", "model.experts_per_task=1",
       "model.tower_sizes=[4]", "model.embedding_dim=4", "train.batch_size=50",
       "train.epochs=2", "train.weighting=uncertainty", "train.optimizer.name=sgd",
       "train.optimizer.lr=0.1", "train.optimizer.momentum=0.9", "runtime.threads=1",
       "runtime.progress=false"]


def _cfg(tmp_path, name, *extra):
    return load_config(None, [*RUN, f"out_dir={tmp_path}", f"name={name}", *extra])


def _close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys(), task
        for k, v in a[task].items():
            assert b[task][k] == pytest.approx(v, rel=tol, abs=tol), (task, k)


def test_single_run_reports_labelled_metrics_and_counts(tmp_path):
    s = _splits()
    res = train(_cfg(tmp_path, "one"), splits=s)
    assert res["labelled"]["test"]["buy"] == int((s.test.labels[:, 0] == 1).sum())
    assert res["labelled"]["train"]["rating"] == int((~torch.isnan(s.train.labels[:, 2])).sum())
    for split in ("valid", "test"):
        for task, ms in res[split].items():
            assert ms["count"] == res["labelled"][split][task]
            assert all(math.isfinite(v) for v in ms.values()), (split, task)
        assert "ctcvr_ne" in res[split]["buy"] and "ctcvr_ne" not in res[split]["click"]
    saved = json.loads((tmp_path / "one" / "results.json").read_text())
    assert saved["labelled"] == res["labelled"]
    line = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["valid"]["rating"]["count"] == res["labelled"]["valid"]["rating"]


def test_ensemble_copies_equal_single_runs_on_masked_data(tmp_path):
    from adatt.train.ensemble import train_ensemble

    s = _splits()
    ens = train_ensemble(_cfg(tmp_path, "ens"), [0, 1], splits=s)
    for k, seed in enumerate((0, 1)):
        sep = train(_cfg(tmp_path, f"sep{seed}", f"train.seed={seed}"), splits=s)
        assert ens[k]["selected"] == sep["selected"]
        assert ens[k]["labelled"] == sep["labelled"]
        _close(sep["valid"], ens[k]["valid"])
        _close(sep["test"], ens[k]["test"])


def _ddp_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp, "store"), world),
                            rank=rank, world_size=world)
    cfg = load_config(None, [*RUN, f"out_dir={tmp}", "name=two"])
    train(cfg, splits=_splits())
    if dist.is_initialized():
        dist.destroy_process_group()


def test_two_ddp_ranks_equal_one_process_on_masked_data(tmp_path):
    """The global batch's per-task labelled mass is all-reduced: 2 gloo ranks (with a
    one-row last batch, a stand-in row on rank 1) equal one process."""
    one = train(_cfg(tmp_path, "one"), splits=_splits())
    out = Path(spawn_ranks(_ddp_worker, 2, str(tmp_path / "ddp")))
    two = json.loads((out / "two" / "results.json").read_text())
    assert two["selected"] == one["selected"]
    _close(one["valid"], two["valid"])
    _close(one["test"], two["test"])
    la = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (out / "two" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(la, lb, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], abs=1e-5)


def test_global_batch_losses_of_rank_parts_equal_the_whole_batch(monkeypatch):
    """The per-task all-reduce on a fake 2-rank split: values equal the whole batch's loss,
    and the shares' gradients sum to its gradient (a rank whose part of a task is empty
    adds nothing)."""
    import torch.distributed as dist

    d = _data(12, 6)
    labels = d.labels.clone()
    labels[:6, 2] = NAN  # rank 0 has no rating label
    loss = TaskLoss.for_schema(SCHEMA).double()
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    whole = loss(x, labels.double(), d.weight.double())
    parts = [slice(0, 6), slice(6, 12)]
    bufs: list[torch.Tensor] = []

    def fake_all_reduce(buf):  # both ranks' buffers, summed
        bufs.append(buf.clone())

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    for p in parts:  # first pass: collect each rank's buffer
        global_batch_losses(loss, x[p], labels[p].double(), d.weight[p].double(),
                            distributed=True)
    total = bufs[0] + bufs[1]
    monkeypatch.setattr(dist, "all_reduce", lambda buf: buf.copy_(total))
    grads = torch.zeros_like(x)
    for p in parts:
        got = global_batch_losses(loss, x[p], labels[p].double(), d.weight[p].double(),
                                  distributed=True)
        torch.testing.assert_close(got.detach(), whole.detach())
        (g,) = torch.autograd.grad(got.sum(), x)
        grads += g
    (want,) = torch.autograd.grad(whole.sum(), x)
    torch.testing.assert_close(grads, want)


def test_torchrec_recipe_on_masked_data(tmp_path):
    pytest.importorskip("torchrec")
    from adatt.integrations import torchrec as atr

    s = _splits(per_task_weight=False)
    res = atr.train_torchrec(load_config(None, [
        "model.name=mmoe", "model.embedding_dim=4", "model.expert_sizes=[[8]]",
        "model.num_experts=2", "train.batch_size=50", "train.epochs=2",
        "runtime.progress=false", "runtime.threads=1", f"out_dir={tmp_path}", "name=tr"]),
        splits=s, sparse_lr=0.1)
    assert res["labelled"]["valid"]["buy"] == int((s.valid.labels[:, 0] == 1).sum())
    for task, ms in res["test"].items():
        assert all(math.isfinite(v) for v in ms.values()), task
    # its step's losses are the masked losses of the batch
    torch.manual_seed(0)
    tables = atr.schema_to_tables(SCHEMA, 4)
    model = atr.TorchRecMultiTask("mmoe", 3, 3, tables, expert_sizes=[[8]], num_experts=2)
    b = s.train.batch(slice(0, 50))
    kjt = atr.cat_to_kjt(b.cat, SCHEMA.categorical)
    with torch.no_grad():
        want = TaskLoss.for_schema(SCHEMA)(model(b.dense, kjt), b.labels, b.weight)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("ebc.")],
                          lr=0.0)
    got = atr.train_step(model, opt, b.dense, kjt, b.labels, b.weight,
                         TaskLoss.for_schema(SCHEMA))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("weighting", ["uncertainty", "dwa", "gradnorm", "pcgrad"])
def test_loss_weightings_train_on_masked_losses(tmp_path, weighting):
    """Every weighting trains on masked losses to finite numbers, also when the first
    batch has no labelled row of a task (its loss there is 0)."""
    s = _splits()
    late = s.train.labels.clone()
    # rating labelled on 8 rows only, none of them in the first batch of epoch 0 (the
    # in-memory source's permutation of seed 0, epoch 0)
    perm = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(0))
    keep = perm[50:58]
    late[:, 2] = NAN
    late[keep, 2] = s.train.labels[keep, 2].nan_to_num(1.0)
    train_set = TensorDataset(s.train.dense, s.train.cat, late, s.train.weight)
    splits = Splits("toy", SCHEMA, train_set, s.valid, s.test)
    res = train(_cfg(tmp_path, weighting, f"train.weighting={weighting}",
                     "train.optimizer.name=adam", "train.optimizer.lr=0.01"), splits=splits)
    for task, ms in res["test"].items():
        assert all(math.isfinite(v) for v in ms.values()), (weighting, task)
