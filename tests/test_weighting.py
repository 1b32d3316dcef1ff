"""Loss-weighting methods: registry, common contract, and each method's defining property."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adatt.train.losses import task_losses
from adatt.train.weighting import (
    DWA,
    WEIGHTINGS,
    Equal,
    GradNorm,
    PCGrad,
    Uncertainty,
    create_weighting,
)
from adatt.train.weighting.base import task_gradient_norms, task_gradients
from adatt.train.weighting.pcgrad import project_conflicting

KINDS = ["binary", "regression", "binary"]


class _TinyMTL(nn.Module):
    """Shared layer + one linear head per task: ``[B,4] -> [B,T]``."""

    def __init__(self, num_tasks: int = 3):
        super().__init__()
        self.shared = nn.Linear(4, 5)
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(num_tasks))

    def forward(self, x):
        h = torch.relu(self.shared(x))  # [B,5]
        return torch.cat([head(h) for head in self.heads], dim=1)  # T x [B,1] -> [B,T]


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = _TinyMTL()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g)
    y = (torch.rand(16, 3, generator=g) < 0.5).float()
    y[:, 1] = torch.randn(16, generator=g)
    return model, x, y


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


# ----------------------------------------------------------------------------- registry


def test_registry_names_are_file_names():
    assert sorted(WEIGHTINGS) == ["dwa", "equal", "gradnorm", "pcgrad", "uncertainty"]
    for name, cls in WEIGHTINGS.items():
        assert cls.name == name
        assert cls.__module__ == f"adatt.train.weighting.{name}"


def test_create_weighting_refuses_unknown_names_and_keys():
    with pytest.raises(ValueError, match="known: dwa, equal, gradnorm, pcgrad, uncertainty"):
        create_weighting("gradnrom", 2)
    with pytest.raises(TypeError):
        create_weighting("dwa", 2, temprature=2.0)
    assert isinstance(create_weighting("pcgrad", 2, seed=3), PCGrad)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_contract_every_parameter_gets_a_finite_gradient_deterministically(name):
    runs = []
    for _ in range(2):
        model, x, y = _problem()
        weighting = create_weighting(name, 3, task_weights=[1.0, 0.5, 2.0], task_kinds=KINDS)
        losses = task_losses(model(x), y, KINDS)
        weights = weighting.backward(losses, list(model.shared.parameters()))
        assert weights.shape == (3,) and not weights.requires_grad
        assert torch.isfinite(weights).all()
        for p in model.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
            assert p.grad.abs().sum() > 0
        runs.append(_grads(model))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_task_gradients_and_norms_agree_with_autograd():
    model, x, y = _problem()
    shared = list(model.shared.parameters())
    losses = task_losses(model(x), y, KINDS)
    flat = task_gradients(losses, shared)  # [T,P]
    assert flat.shape == (3, sum(p.numel() for p in shared))
    g1 = torch.autograd.grad(losses[1], shared, retain_graph=True)
    torch.testing.assert_close(flat[1], torch.cat([g.reshape(-1) for g in g1]))
    norms = task_gradient_norms(losses, shared)
    torch.testing.assert_close(norms.float(), flat.norm(dim=1))


# ----------------------------------------------------------------------------- Equal


def test_equal_gradient_is_gradient_of_weighted_sum():
    model, x, y = _problem()
    c = torch.tensor([1.0, 0.5, 2.0])
    (task_losses(model(x), y, KINDS) * c).sum().backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    w = Equal(3, task_weights=c.tolist()).backward(
        task_losses(model(x), y, KINDS), list(model.shared.parameters())
    )
    torch.testing.assert_close(w, c)
    for a, b in zip(_grads(model), expected, strict=True):
        torch.testing.assert_close(a, b)


def test_equal_accepts_ensemble_losses():
    theta = nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = torch.stack([theta, theta**2], dim=1)  # copy s: tasks (theta_s, theta_s^2), [S,T]
    Equal(2, task_weights=[1.0, 0.5]).backward(losses, [])
    torch.testing.assert_close(theta.grad, torch.tensor([2.0, 3.0]))  # 1 + 0.5 * 2 theta_s


# ----------------------------------------------------------------------------- Uncertainty


def test_uncertainty_stationary_at_log_loss_and_optimum_reached():
    values = torch.tensor([0.3, 2.0, 5.0])
    c = torch.tensor([1.0, 1.0, 0.5])
    kinds = ["binary", "regression", "binary"]
    weighting = Uncertainty(3, task_weights=c.tolist(), task_kinds=kinds)
    dummy = nn.Parameter(torch.ones(()))
    # gradient in s vanishes exactly at s_t = log(c_t L_t), for both kinds
    with torch.no_grad():
        weighting.log_vars.copy_(torch.log(c * values))
    weighting.backward(values * dummy, [dummy])
    torch.testing.assert_close(weighting.log_vars.grad, torch.zeros(3), atol=1e-6, rtol=0)
    # and plain optimisation of s from 0 finds it
    with torch.no_grad():
        weighting.log_vars.zero_()
    for _ in range(300):  # plain gradient descent on s
        weighting.log_vars.grad = None
        weighting.backward(values * dummy, [dummy])
        with torch.no_grad():
            weighting.log_vars -= 0.3 * weighting.log_vars.grad
    torch.testing.assert_close(
        weighting.log_vars.detach(), torch.log(c * values), atol=1e-3, rtol=0
    )
    # effective weights: c exp(-s), halved for the regression task -> 1 / L (1 / 2L)
    w = weighting.backward(values * dummy, [dummy])
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 1.0]) / values, atol=1e-3, rtol=1e-3)


def test_uncertainty_gradient_on_model_is_precision_weighted():
    model, x, y = _problem()
    weighting = Uncertainty(3, task_kinds=KINDS)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    w = weighting.backward(task_losses(model(x), y, KINDS), list(model.shared.parameters()))
    torch.testing.assert_close(
        w, torch.exp(-torch.tensor([0.5, -1.0, 2.0])) * torch.tensor([1, 0.5, 1])
    )
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    (task_losses(model(x), y, KINDS) * w).sum().backward()
    for a, b in zip(got, _grads(model), strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- GradNorm


def _affine_losses(theta, offsets, slopes):
    """``L_t = offset_t + slope_t theta_t``: value and gradient norm set independently."""
    return torch.as_tensor(offsets) + torch.as_tensor(slopes) * theta  # [T]


def test_gradnorm_equalises_gradient_norms():
    theta = nn.Parameter(torch.ones(2))
    weighting = GradNorm(2, alpha=1.5, lr=0.02)
    assert list(weighting.parameters()) == []  # updated internally, not by the trainer
    slopes = torch.tensor([1.0, 4.0])  # n_t = |slope_t|; equal training rates (L = L(0))
    gap = []
    for _ in range(300):
        theta.grad = None
        w = weighting.backward(_affine_losses(theta, [2.0, 2.0], slopes), [theta])
        gap.append(float((w * slopes).max() - (w * slopes).min()))
        assert float(weighting.weights.sum()) == pytest.approx(2.0)
    # G_t = w_t n_t equal -> w proportional to 1/n, summing to T
    torch.testing.assert_close(weighting.weights, torch.tensor([1.6, 0.4]), atol=0.05, rtol=0)
    assert gap[-1] < 0.1 * gap[0]


def test_gradnorm_targets_relative_inverse_training_rates():
    theta = nn.Parameter(torch.ones(2))
    weighting = GradNorm(2, alpha=1.0, lr=0.02)
    weighting.backward(_affine_losses(theta, [1.0, 1.0], [1.0, 1.0]), [theta])  # L(0) = (2, 2)
    for _ in range(300):
        theta.grad = None
        w = weighting.backward(_affine_losses(theta, [0.0, 1.0], [1.0, 1.0]), [theta])  # (1, 2)
    # L/L(0) = (0.5, 1) -> r = (2/3, 4/3); equal n -> w = mean(w) r^alpha = r
    torch.testing.assert_close(weighting.weights, torch.tensor([2 / 3, 4 / 3]), atol=0.05, rtol=0)
    # the model gradient is that of sum_t w_t L_t with the weights used this step
    torch.testing.assert_close(theta.grad, w)


# ----------------------------------------------------------------------------- DWA


def test_dwa_follows_formula_on_loss_history():
    history = torch.tensor([[1.0, 2.0, 3.0], [0.5, 2.0, 3.3], [0.4, 1.0, 3.0]])
    dwa = DWA(3, temperature=2.0)
    theta = nn.Parameter(torch.ones(3))
    for k, losses in enumerate(history):
        w = dwa.backward(theta * 1.0, [theta])
        if k < 2:  # first two epochs: equal weights
            torch.testing.assert_close(w, torch.ones(3))
        else:
            r = history[k - 1] / history[k - 2]
            e = torch.exp(r / 2.0)
            torch.testing.assert_close(w, 3 * e / e.sum())
        assert float(w.sum()) == pytest.approx(3.0)
        torch.testing.assert_close(theta.grad, w)  # d(sum w_t theta_t) / d theta
        theta.grad = None
        dwa.epoch_end(losses)
    # after epoch 3: r = (0.8, 0.5, 0.909...) -> slower-improving tasks weigh more
    w = dwa.current_weights()
    assert w[2] > w[0] > w[1]


# ----------------------------------------------------------------------------- PCGrad


def _naive_pcgrad(grads, orders):
    total = torch.zeros(grads.shape[1], dtype=torch.float64)
    for i in range(grads.shape[0]):
        gi = grads[i].double().clone()
        for j in orders[i]:
            if j == i:
                continue
            gj = grads[j].double()
            dot = gi @ gj
            if dot < 0:
                gi = gi - dot / (gj @ gj) * gj
        total += gi
    return total


def test_pcgrad_two_conflicting_gradients():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        g1 = torch.randn(6, generator=g, dtype=torch.float64)
        g2 = -g1 + 0.5 * torch.randn(6, generator=g, dtype=torch.float64)  # strongly conflicting
        assert g1 @ g2 < 0
        out = project_conflicting(torch.stack([g1, g2]), [[0, 1], [1, 0]])
        assert out @ g1 >= -1e-12 and out @ g2 >= -1e-12
        # closed form for two tasks
        expected = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
        torch.testing.assert_close(out, expected)


def test_pcgrad_no_conflict_is_plain_sum_and_matches_naive():
    grads = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(project_conflicting(grads, [[1], [0]]), grads.sum(0))
    g = torch.Generator().manual_seed(1)
    grads = torch.randn(5, 40, generator=g, dtype=torch.float64)
    orders = [torch.randperm(5, generator=g).tolist() for _ in range(5)]
    torch.testing.assert_close(project_conflicting(grads, orders), _naive_pcgrad(grads, orders))


def test_pcgrad_on_model_shared_projected_task_specific_ordinary():
    model, x, y = _problem()
    shared = list(model.shared.parameters())
    weighting = PCGrad(3, seed=5)
    orders = weighting.visiting_orders()
    losses = task_losses(model(x), y, KINDS)
    per_task = [torch.autograd.grad(losses[t], shared, retain_graph=True) for t in range(3)]
    flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in per_task])  # [T,P]
    weighting.backward(losses, shared)
    got_shared = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got_shared, _naive_pcgrad(flat, orders).float())
    # heads: ordinary gradient of the sum
    head_grads = [p.grad.clone() for p in model.heads.parameters()]
    model.zero_grad(set_to_none=True)
    task_losses(model(x), y, KINDS).sum().backward()
    for a, p in zip(head_grads, model.heads.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)
    # a new step draws new orders, reproducibly from (seed, step)
    assert int(weighting.step) == 1
    again = PCGrad(3, seed=5)
    again.load_state_dict(weighting.state_dict())
    assert again.visiting_orders() == weighting.visiting_orders()


def test_pcgrad_accumulates_into_existing_grads():
    theta = nn.Parameter(torch.zeros(2))
    theta.grad = torch.tensor([10.0, 10.0])
    losses = torch.stack([theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([-1.0, 1.0])])
    PCGrad(2).backward(losses, [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([10.5, 11.5]))


def test_methods_reject_wrong_loss_shape():
    theta = nn.Parameter(torch.ones(3))
    for name in ("uncertainty", "gradnorm", "dwa", "pcgrad"):
        with pytest.raises(ValueError, match="losses"):
            create_weighting(name, 2).backward(theta * 1.0, [theta])
    assert math.isclose(float(Equal(3).backward(theta * 1.0, [theta]).sum()), 3.0)
