"""The compiled training step (``train.compile``): the same numbers as eager, resumed exactly,
no graph break in any model's step, the kernels' custom-op registrations, the fallbacks.

Compilation on 2 cores takes tens of seconds per graph, so the compiled runs are few and
tiny (Inductor's on-disk cache makes the repeated ones cheap); the two-process run is slow.
"""

from __future__ import annotations

import json

import pytest
import torch

from adatt.config import load_config
from adatt.models import create_model
from adatt.modules import kernels
from adatt.train import compiled as comp
from adatt.train.trainer import train

BASE = ["data.source=mmoe_synthetic", "data.rows=1500", "model.name=adatt_sp",
        "model.expert_sizes=[16, 8]", "model.experts_per_task=1", "model.tower_sizes=[8]",
        "train.batch_size=128", "train.epochs=2", "runtime.progress=false",
        "runtime.threads=2", "train.optimizer.lr=1e-3", "train.schedule.name=cosine",
        "train.schedule.warmup_steps=3"]


def _run(tmp_path, name, *extra, resume=False):
    return train(load_config(None, [*BASE, f"out_dir={tmp_path}", f"name={name}", *extra]),
                 resume=resume)


def _close(a: dict, b: dict, tol: float) -> None:
    for split in ("valid", "test"):
        for task, ms in a[split].items():
            for k, v in ms.items():
                assert b[split][task][k] == pytest.approx(v, abs=tol, rel=tol), (split, task, k)


def test_compiled_equals_eager_and_resumes_exactly(tmp_path):
    """Compiled vs eager to 1e-5 (a cosine schedule with warm-up: the learning rate changes
    every step without recompiling); a compiled run stopped half-way and resumed equals the
    uninterrupted compiled run; the compile time is reported."""
    eager = _run(tmp_path, "eager", "train.compile=false")
    full = _run(tmp_path, "full", "train.compile=true")
    assert full["compiled"] and full["compile_s"] > 0
    assert not eager["compiled"] and eager["compile_s"] == 0
    _close(eager, full, 1e-5)
    la = [json.loads(x) for x in (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(la, lb, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], abs=1e-5)
    # 1200 training rows, batch 128: 9 full batches (compiled) and one of 48 (eager) an epoch;
    # stopped after the first epoch's evaluation and checkpoint (as a pruned trial is)

    class Stop(Exception):
        pass

    def stop(line):
        raise Stop

    with pytest.raises(Stop):
        train(load_config(None, [*BASE, f"out_dir={tmp_path}", "name=half",
                                 "train.compile=true"]), on_eval=stop)
    resumed = _run(tmp_path, "half", "train.compile=true", resume=True)
    _close(full, resumed, 1e-7)
    wa, wb = (torch.load(tmp_path / d / "best.pt", weights_only=True) for d in ("full", "half"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


@pytest.mark.parametrize("name", ["adatt_sp", "adatt", "ple", "mmoe", "ml_mmoe",
                                  "cross_stitch", "shared_bottom"])
def test_no_graph_break_in_any_models_training_step(name):
    """``torch._dynamo.explain`` of forward + loss (one-hot and dense inputs: the bag_sum
    custom op): one graph, 0 breaks; AOTAutograd then compiles its backward whole."""
    kw = dict(num_tasks=3, dense_dim=4, cat_cardinalities=[5, 7], tower_sizes=[4])
    if name in ("mmoe",):
        kw.update(expert_sizes=[[8]], num_experts=3)
    elif name == "ml_mmoe":
        kw.update(expert_sizes=[8, 8], num_experts=3)
    elif name in ("adatt", "ple"):
        kw.update(expert_sizes=[8, 8], experts_per_task=1, shared_experts=1)
    elif name == "adatt_sp":
        kw.update(expert_sizes=[8, 8], experts_per_task=2)
    else:
        kw.update(expert_sizes=[8, 8])
    model = create_model(name, **kw)
    dense, cat = torch.randn(16, 4), torch.randint(0, 5, (16, 2))
    y = (torch.rand(16, 3) < 0.5).float()

    def step(d, c, y):
        logits = model(d, c)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)

    ex = torch._dynamo.explain(step)(dense, cat, y)
    assert ex.graph_break_count == 0, ex.break_reasons
    assert ex.graph_count == 1


def test_bag_sum_custom_op_registrations():
    """``torch.library.opcheck``: the fake kernel, the autograd registration and the schema
    of ``adatt::bag_sum`` agree with the op; the gradient equals embedding_bag's."""
    idx = torch.tensor([[0, 3], [2, 4], [1, 3]])
    w = torch.randn(5, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.adatt.bag_sum.default, (idx, w, True))
    torch.library.opcheck(torch.ops.adatt.bag_sum_grad.default, (idx, torch.randn(3, 3), 5, True))
    out = kernels.bag_sum(idx, w, True)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, w, g)
    w2 = w.detach().clone().requires_grad_()
    torch.nn.functional.embedding_bag(idx, w2, mode="sum").backward(g)
    assert torch.allclose(grad, w2.grad, atol=1e-6)


@pytest.mark.parametrize("in_order", [False, True])
def test_bag_sum_eager_function_equals_the_custom_op_bit_for_bit(in_order):
    """Eager ``bag_sum`` runs an autograd Function, a compiled one the custom op: the
    same functions, so the same output and weight gradient to the last bit (fp32)."""
    g = torch.Generator().manual_seed(3)
    cards = [9, 4, 30, 2]
    offsets = torch.tensor([0, *cards[:-1]]).cumsum(0)
    idx = torch.stack([torch.randint(0, c, (200,), generator=g) for c in cards], 1) + offsets
    w = torch.randn(sum(cards), 13, generator=g, requires_grad=True)
    up = torch.randn(200, 13, generator=g)
    out = kernels.bag_sum(idx, w, in_order)
    assert out.grad_fn.name() == "_BagSumBackward"  # the eager Function, not the op
    (grad,) = torch.autograd.grad(out, w, up)
    op_out = torch.ops.adatt.bag_sum(idx, w, in_order)
    (op_grad,) = torch.autograd.grad(op_out, w, up)
    assert torch.equal(out, op_out) and torch.equal(grad, op_grad)


def test_wanted_and_the_fallbacks(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    assert not comp.wanted(False, cpu)
    assert comp.wanted("auto", cpu) == ("cpu" in comp.AUTO_DEVICES)
    with kernels.plain_mode():
        assert not comp.wanted(True, cpu)
    monkeypatch.setattr(comp.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.warns(UserWarning, match="no compiler for cpu"):
        assert not comp.wanted(True, cpu)
    monkeypatch.undo()

    def broken(fn, **kw):
        def fail(*a, **k):
            raise RuntimeError("backend exploded\nsecond line")
        return fail

    monkeypatch.setattr(comp.torch, "compile", broken)
    with pytest.warns(UserWarning, match=r"compilation failed \(RuntimeError: backend exploded\)"):
        res = _run(tmp_path, "fallback", "train.compile=true", "train.epochs=1")
    assert not res["compiled"]
    eager = _run(tmp_path, "eager1", "train.compile=false", "train.epochs=1")
    _close(eager, res, 1e-5)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(comp.CACHE_ENV, str(tmp_path))
    assert comp.cache_dir() == tmp_path
    monkeypatch.delenv(comp.CACHE_ENV)
    assert comp.cache_dir().parts[-3:] == (".cache", "adatt", "inductor")


@pytest.mark.slow
def test_compiled_two_processes_equal_one(tmp_path):
    """DDP: 2 processes with the compiled forward equal 1 eager process (to 1e-5)."""
    from tests.test_distributed import N_TRAIN, _overrides, _same_run, _torchrun

    train(load_config(None, _overrides(tmp_path, "one", "train.compile=false")))
    _torchrun(tmp_path, _overrides(tmp_path, "two", "train.compile=true",
                                   f"train.max_examples={2 * N_TRAIN}"))
    _same_run(tmp_path / "one", tmp_path / "two", evals=2)
