"""Task losses against a plain per-task loop, with weights, ensembles and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adatt.train.losses import TaskLoss, elementwise_losses, task_losses

KINDS = ["binary", "regression", "binary"]


def _data(seed: int = 0, b: int = 16, s: int | None = None):
    g = torch.Generator().manual_seed(seed)
    shape = (b, len(KINDS)) if s is None else (s, b, len(KINDS))
    logits = torch.randn(*shape, generator=g, dtype=torch.float64)
    labels = (torch.rand(b, len(KINDS), generator=g) < 0.4).double()
    labels[:, 1] = torch.randn(b, generator=g, dtype=torch.float64) * 2.0  # regression column
    weight = torch.rand(b, generator=g, dtype=torch.float64) + 0.1
    return logits, labels, weight


def _loop_reference(logits, labels, kinds, weight=None):
    """One task at a time, with torch's own reductions."""
    out = []
    for t, kind in enumerate(kinds):
        x, y = logits[:, t], labels[:, t]
        if kind == "binary":
            per = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        else:
            per = F.mse_loss(x, y, reduction="none")
        out.append(per.mean() if weight is None else (per * weight).sum() / weight.sum())
    return torch.stack(out)


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_per_task_loop(weighted):
    logits, labels, weight = _data()
    w = weight if weighted else None
    expected = _loop_reference(logits, labels, KINDS, w)
    torch.testing.assert_close(task_losses(logits, labels, KINDS, w), expected)
    torch.testing.assert_close(TaskLoss(KINDS).double()(logits, labels, w), expected)


@pytest.mark.parametrize("kinds", [["binary"] * 3, ["regression"] * 3])
def test_single_kind_fast_paths(kinds):
    logits, labels, weight = _data(1)
    labels = labels.clamp(0, 1)
    expected = _loop_reference(logits, labels, kinds, weight)
    torch.testing.assert_close(TaskLoss(kinds).double()(logits, labels, weight), expected)
    torch.testing.assert_close(task_losses(logits, labels, kinds, weight), expected)


def test_ensemble_dimension_equals_per_copy():
    logits, labels, weight = _data(2, s=4)
    loss = TaskLoss(KINDS).double()
    got = loss(logits, labels, weight)
    assert got.shape == (4, 3)
    expected = torch.stack([_loop_reference(logits[i], labels, KINDS, weight) for i in range(4)])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(task_losses(logits, labels, KINDS, weight), expected)
    assert loss.total(got).shape == (4,)


def test_static_weights_in_total():
    logits, labels, _ = _data(3)
    loss = TaskLoss(KINDS, task_weights=[2.0, 0.5, 0.0]).double()
    per = loss(logits, labels)
    torch.testing.assert_close(loss.total(per), 2.0 * per[0] + 0.5 * per[1])


def test_gradients_follow_each_columns_own_form():
    """torch.where must not leak the other form's gradient into a column."""
    logits, labels, _ = _data(4, b=5)
    logits.requires_grad_(True)
    TaskLoss(KINDS).double()(logits, labels).sum().backward()
    b = logits.shape[0]
    expected = (torch.sigmoid(logits) - labels) / b  # BCE: (q - y) / B
    expected[:, 1] = 2 * (logits[:, 1] - labels[:, 1]) / b  # MSE: 2 (x - y) / B
    torch.testing.assert_close(logits.grad, expected.detach())


def test_elementwise_shape_and_hand_values():
    x = torch.tensor([[0.0, 2.0]])
    y = torch.tensor([[1.0, 5.0]])
    out = elementwise_losses(x, y, ["binary", "regression"])
    torch.testing.assert_close(out, torch.tensor([[torch.log(torch.tensor(2.0)).item(), 9.0]]))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        TaskLoss(["binary", "ranking"])
    with pytest.raises(ValueError, match="task_weights"):
        TaskLoss(["binary"], task_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="labels"):
        task_losses(torch.zeros(4, 2), torch.zeros(3, 2), ["binary", "binary"])
    with pytest.raises(ValueError, match="tasks"):
        task_losses(torch.zeros(4, 2), torch.zeros(4, 2), ["binary"] * 3)
    with pytest.raises(ValueError, match="weight"):
        task_losses(torch.zeros(4, 1), torch.zeros(4, 1), ["binary"], torch.ones(5))


def test_all_zero_weights_give_zero_loss_and_gradient():
    logits = torch.randn(3, 2, requires_grad=True)
    labels = torch.tensor([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]])
    loss = TaskLoss(["binary", "regression"])(logits, labels, torch.zeros(3))
    assert torch.equal(loss, torch.zeros(2))
    loss.sum().backward()
    assert torch.equal(logits.grad, torch.zeros(3, 2))
