"""Metrics: hand-computed examples, agreement with scikit-learn, accumulation, ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import mean_absolute_error, mean_squared_error, roc_auc_score

import adatt.train.metrics as M
from adatt.train.metrics import (
    EnsembleMetricAccumulator,
    MetricAccumulator,
    auc,
    calibration,
    log_loss,
    mae,
    mse,
    normalized_entropy,
    relative_difference,
    relative_to_baseline,
)


def _random_binary(seed: int, n: int = 300, ties: bool = True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    if ties:
        logits = torch.round(logits * 2) / 2  # few distinct values: many ties
    labels = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(logits)).double()
    weight = torch.rand(n, generator=g, dtype=torch.float64) * 2
    return logits, labels, weight


# ----------------------------------------------------------------------------- hand examples


def test_auc_ties_by_hand():
    # positives at 0.4 and 0.8, negatives at 0.1 and 0.4:
    # (0.8 vs 0.1) 1, (0.8 vs 0.4) 1, (0.4 vs 0.1) 1, (0.4 vs 0.4) 1/2 -> 3.5 / 4
    scores, labels = torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert float(auc(scores, labels)) == 0.875
    # everything tied: 1/2
    assert float(auc(torch.ones(5), torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0]))) == 0.5
    # perfectly inverted ranking
    assert float(auc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0]))) == 0.0


def test_weighted_auc_by_hand():
    scores = torch.tensor([1.0, 2.0, 2.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    weight = torch.tensor([2.0, 1.0, 3.0, 1.0])
    # W+ = 5, W- = 2. Pairs (pos, neg) weighted by w_i w_j:
    # pos@1 (w2): loses to neg@2 and neg@3 -> 0
    # pos@2 (w3): ties neg@2 (w1) -> 3 * 1 * 0.5, loses to neg@3 -> 0
    expected = 1.5 / (5 * 2)
    assert float(auc(scores, labels, weight)) == pytest.approx(expected, abs=1e-15)


def test_auc_nan_with_one_class():
    assert math.isnan(float(auc(torch.randn(5), torch.ones(5))))
    assert math.isnan(float(auc(torch.randn(5), torch.zeros(5))))


def test_normalized_entropy_by_hand():
    q = [0.8, 0.3, 0.6]
    y = [1.0, 0.0, 0.0]
    ll = -(math.log(0.8) + math.log(0.7) + math.log(0.4)) / 3
    p = 1 / 3
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    logits = torch.logit(torch.tensor(q, dtype=torch.float64))
    labels = torch.tensor(y)
    assert float(log_loss(logits, labels)) == pytest.approx(ll, rel=1e-12)
    assert float(normalized_entropy(logits, labels)) == pytest.approx(ll / h, rel=1e-12)
    probs = torch.tensor(q, dtype=torch.float64)
    assert float(normalized_entropy(probs, labels, from_logits=False)) == pytest.approx(
        ll / h, rel=1e-12
    )
    # predicting the positive rate everywhere has NE exactly 1
    flat = torch.full((3,), math.log(p / (1 - p)), dtype=torch.float64)
    assert float(normalized_entropy(flat, labels)) == pytest.approx(1.0, rel=1e-12)
    # undefined when the set has a single class
    assert math.isnan(float(normalized_entropy(logits, torch.zeros(3))))


def test_calibration_mse_mae_by_hand():
    logits = torch.tensor([0.0, 0.0, math.log(3.0)])  # q = 0.5, 0.5, 0.75
    labels = torch.tensor([1.0, 0.0, 0.0])
    assert float(calibration(logits, labels)) == pytest.approx(1.75)
    weight = torch.tensor([1.0, 1.0, 2.0])
    # sum w q = 0.5 + 0.5 + 1.5 = 2.5; sum w y = 1
    assert float(calibration(logits, labels, weight)) == pytest.approx(2.5)
    assert math.isnan(float(calibration(logits, torch.zeros(3))))
    pred, target = torch.tensor([1.0, -1.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    assert float(mse(pred, target)) == pytest.approx(2.0)
    assert float(mae(pred, target, weight)) == pytest.approx((1 + 1 + 4) / 4)


# ----------------------------------------------------------------------------- scikit-learn


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_agrees_with_sklearn(seed, weighted):
    logits, labels, weight = _random_binary(seed)
    w = weight if weighted else None
    sw = weight.numpy() if weighted else None
    y, x = labels.numpy(), logits.numpy()
    q = 1 / (1 + np.exp(-x))
    assert float(auc(logits, labels, w)) == pytest.approx(
        roc_auc_score(y, x, sample_weight=sw), abs=1e-12
    )
    # float32 logits: the AUC sees the same ordering and ties
    assert float(auc(logits.float(), labels, w)) == pytest.approx(
        roc_auc_score(y, x.astype(np.float32), sample_weight=sw), abs=1e-12
    )
    assert float(log_loss(logits, labels, w)) == pytest.approx(
        sk_log_loss(y, q, sample_weight=sw), rel=1e-10
    )
    pred = logits * 3
    target = labels + torch.randn(labels.shape, generator=torch.Generator().manual_seed(seed))
    assert float(mse(pred, target, w)) == pytest.approx(
        mean_squared_error(target.numpy(), pred.numpy(), sample_weight=sw), rel=1e-12
    )
    assert float(mae(pred, target, w)) == pytest.approx(
        mean_absolute_error(target.numpy(), pred.numpy(), sample_weight=sw), rel=1e-12
    )


def test_column_auc_equals_per_column_and_chunking(monkeypatch):
    cols = [_random_binary(s, n=200) for s in range(5)]
    x = torch.stack([c[0] for c in cols], 1)  # [N,C]
    y = torch.stack([c[1] for c in cols], 1)  # [N,C]
    w = cols[0][2]
    per_column = torch.stack([auc(x[:, i], y[:, i], w) for i in range(5)])
    torch.testing.assert_close(auc(x, y, w), per_column, rtol=0, atol=1e-15)
    monkeypatch.setattr(M, "_AUC_CHUNK_ELEMENTS", 400)  # forces chunks of 2 rows
    torch.testing.assert_close(auc(x, y, w), per_column, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- accumulators

NAMES = ["ctr", "watch_time", "like"]
KINDS = ["binary", "regression", "binary"]


def _eval_set(seed: int, n: int = 250, s: int | None = None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3) if s is None else (s, n, 3)
    logits = torch.round(torch.randn(*shape, generator=g) * 4) / 4  # float32 with ties
    labels = (torch.rand(n, 3, generator=g) < 0.3).float()
    labels[:, 1] = torch.randn(n, generator=g)
    weight = torch.rand(n, generator=g) + 0.5
    return logits, labels, weight


def _one_shot(logits, labels, weight):
    out = {}
    for t, (name, kind) in enumerate(zip(NAMES, KINDS, strict=True)):
        x, y = logits[:, t], labels[:, t]
        if kind == "binary":
            w = torch.ones_like(y) if weight is None else weight
            pos = float((y.double() * w.double()).sum() / w.double().sum())
            out[name] = {
                "auc": float(auc(x, y, weight)),
                "logloss": float(log_loss(x, y, weight)),
                "ne": float(normalized_entropy(x, y, weight)),
                "calibration": float(calibration(x, y, weight)),
                "pos_rate": pos,
                "count": len(y),
            }
        else:
            out[name] = {
                "mse": float(mse(x, y, weight)),
                "mae": float(mae(x, y, weight)),
                "count": len(y),
            }
    return out


def _assert_results_close(got, expected):
    assert list(got) == list(expected)
    for task in expected:
        assert got[task].keys() == expected[task].keys()
        for k, v in expected[task].items():
            assert got[task][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (task, k)


@pytest.mark.parametrize("weighted", [False, True])
def test_accumulation_over_batches_equals_one_shot(weighted):
    logits, labels, weight = _eval_set(0)
    w = weight if weighted else None
    acc = MetricAccumulator(NAMES, KINDS)
    for start in range(0, 250, 64):  # uneven last batch
        sl = slice(start, start + 64)
        acc.update(logits[sl], labels[sl], None if w is None else w[sl])
    _assert_results_close(acc.compute(), _one_shot(logits, labels, w))
    acc.reset()
    acc.update(logits[:10], labels[:10])
    assert acc.compute()["ctr"]["count"] == 10


@pytest.mark.parametrize("chunk", [None, 600])
def test_ensemble_equals_per_copy(chunk, monkeypatch):
    if chunk is not None:  # AUC rows sorted in several chunks along the copy dimension
        monkeypatch.setattr(M, "_AUC_CHUNK_ELEMENTS", chunk)
    logits, labels, weight = _eval_set(1, s=4)
    ens = EnsembleMetricAccumulator(NAMES, KINDS)
    singles = [MetricAccumulator(NAMES, KINDS) for _ in range(4)]
    for start in range(0, 250, 100):
        sl = slice(start, start + 100)
        ens.update(logits[:, sl], labels[sl], weight[sl])
        for i, acc in enumerate(singles):
            acc.update(logits[i, sl], labels[sl], weight[sl])
    results = ens.compute()
    assert len(results) == 4
    for i in range(4):
        _assert_results_close(results[i], singles[i].compute())
        _assert_results_close(results[i], _one_shot(logits[i], labels, weight))


def test_accumulator_rejects_bad_input():
    acc = EnsembleMetricAccumulator(["a"], ["binary"])
    with pytest.raises(RuntimeError):
        acc.compute()
    acc.update(torch.zeros(2, 3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="copies"):
        acc.update(torch.zeros(3, 3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="kind"):
        MetricAccumulator(["a"], ["ranking"])
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        MetricAccumulator(["a"], ["binary"]).update(torch.zeros(2, 3, 1), torch.zeros(3, 1))


# ----------------------------------------------------------------------------- reporting


def test_relative_difference_and_baseline():
    assert relative_difference(0.95, 1.0) == pytest.approx(-5.0)
    assert relative_difference(2.2, 2.0) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        relative_difference(1.0, 0.0)
    model = {"ctr": {"ne": 0.9, "auc": 0.8}, "time": {"mse": 1.5, "mae": 1.0}}
    base = {"ctr": {"ne": 1.0, "auc": 0.75}, "time": {"mse": 2.0, "mae": 1.0}}
    rel = relative_to_baseline(model, base)
    assert list(rel) == ["ctr", "time"]
    assert rel["ctr"] == pytest.approx(-10.0) and rel["time"] == pytest.approx(-25.0)
    only_ctr = {"ctr": model["ctr"]}
    rel_auc = relative_to_baseline(only_ctr, base, {"binary": "auc"}, kinds={"ctr": "binary"})
    assert rel_auc == {"ctr": pytest.approx(100 * 0.05 / 0.75)}
    with pytest.raises(KeyError, match="regression"):
        relative_to_baseline(model, base, {"binary": "auc"})
    with pytest.raises(KeyError, match="baseline"):
        relative_to_baseline(model, {"ctr": base["ctr"]})
