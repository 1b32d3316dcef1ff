"""The fast path held to the plain one: every registered model, run both ways on the
same parameters (adatt.modules.kernels.plain_mode), gives the same logits, combined
expert weights and parameter gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

import adatt.modules.fusion as fusion
import adatt.modules.layers as layers
from adatt.models import create_model, list_models, model_options
from adatt.modules.kernels import align_pad, padding_mode, plain_mode, row_splits

DENSE, CARDS, T = 5, [3, 4, 6], 3


@pytest.fixture
def pad_on():
    """Cache-line padding wherever the size qualifies, whatever this host's default."""
    with padding_mode("on"):
        yield

# every option a model has takes each of these values (options a model lacks are skipped)
GRID = {
    "expert_sizes": [[8], [[8, 7], 6]],  # 1-layer experts, one level; 2-layer experts, two
    "experts_per_task": [1, 2, [1, 3, 2]],
    "shared_experts": [0, 2],
    "num_experts": [1, 3],
    "gate_hidden": [[], [4], [4, 3]],
    "embedding_dim": [None, 3],
    "native_fusion": [True, False],
}
ONE_LEVEL = {"mmoe": [[[8]], [[8, 7]]]}  # single-level models: one MLP per expert


def grid(name: str) -> list[dict]:
    opts = model_options(name)
    keys = [k for k in GRID if k in opts]
    values = [ONE_LEVEL.get(name, GRID[k]) if k == "expert_sizes" else GRID[k] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


CASES = [(name, kw) for name in sorted(list_models()) for kw in grid(name)]


def inputs(B: int, dense_dim: int, cards: list[int], dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, dense_dim, generator=g, dtype=dtype)
    cat = torch.stack([torch.randint(0, c, (B,), generator=g) for c in cards], 1)
    return dense, cat


def run(model, dense, cat, plain: bool, seed: int = 1):
    """Logits, per-level weights and every parameter's gradient of a fixed loss."""
    model.zero_grad(set_to_none=True)
    with plain_mode(plain):
        logits, weights = model.forward_with_weights(dense, cat)
    up = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed),
                     dtype=logits.dtype)
    (logits * up).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    return logits.detach(), [w.detach() for w in weights], grads


def compare(model, dense, cat, rtol: float, atol: float) -> None:
    fast, plain = run(model, dense, cat, False), run(model, dense, cat, True)
    torch.testing.assert_close(fast[0], plain[0], rtol=rtol, atol=atol)
    assert len(fast[1]) == len(plain[1])
    for a, b in zip(fast[1], plain[1], strict=True):
        torch.testing.assert_close(a, b.expand_as(a), rtol=rtol, atol=atol)
    assert fast[2].keys() == plain[2].keys()
    for n in fast[2]:
        torch.testing.assert_close(fast[2][n], plain[2][n], rtol=rtol, atol=atol, msg=n)


def test_every_registered_model_is_in_the_grid():
    assert {name for name, _ in CASES} == set(list_models())


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_fast_path_equals_plain_path_float64(name, kw):
    torch.manual_seed(0)
    model = create_model(name, num_tasks=T, dense_dim=DENSE, cat_cardinalities=CARDS,
                         **kw).double()
    with torch.no_grad():  # move the NativeExpertLF weights off their initial values
        for lv in getattr(model, "levels", []):
            if lv.native_weight is not None:
                lv.native_weight.add_(torch.randn_like(lv.native_weight))
    compare(model, *inputs(11, DENSE, CARDS, torch.float64), rtol=1e-10, atol=1e-10)


def test_the_grid_covers_every_first_layer_layout():
    """Each of the fast first-layer layouts is among the cases held to the plain path."""
    modes = set()
    for name, kw in CASES:
        model = create_model(name, num_tasks=T, dense_dim=DENSE, cat_cardinalities=CARDS, **kw)
        modes |= {lv.layout.mode for lv in getattr(model, "levels", [])}
    assert modes == {fusion.EXTERNAL, fusion.UNITS, fusion.FUSED, fusion.SPLIT}


def test_fast_path_equals_plain_path_with_every_kernel_on(two_threads, pad_on):
    """float32, 2 threads, sizes where the CPU kernels apply (cache-line padding, row
    splits, the embedding product table, the small softmax, the bag sum)."""
    torch.manual_seed(0)
    cards = [5, 9, 40]
    model = create_model("adatt_sp", num_tasks=T, dense_dim=256, cat_cardinalities=cards,
                         embedding_dim=8, expert_sizes=[262, 136], experts_per_task=2)
    dense, cat = inputs(512, 256, cards, torch.float32)
    lv1 = model.levels[1]
    x = torch.zeros(3, 512, 262)
    assert align_pad(256, model.input.out_features, dense) > 0
    assert align_pad(262, lv1.first.out_dim, x) > 0 and lv1.layout.mode == fusion.UNITS
    assert row_splits(x, lv1.first.padded()[0]) == 2
    assert model.input.use_product_table(cat)
    compare(model, dense, cat, rtol=1e-4, atol=1e-5)


def test_plain_path_uses_no_kernel(monkeypatch):
    """Under plain_mode none of the speed devices is called."""

    def refuse(*args, **kwargs):
        raise AssertionError("a kernel ran in plain mode")

    for module, names in [(fusion, ["gate_softmax", "fp32_bmm"]),
                          (layers, ["bag_sum", "align_pad", "drop_pad", "product_table",
                                    "slot_baddbmm"])]:
        for n in names:
            monkeypatch.setattr(module, n, refuse)
    for name, kw in [("adatt", dict(experts_per_task=[1, 2, 1], shared_experts=2,
                                    embedding_dim=3, gate_hidden=[4])),
                     ("ml_mmoe", dict(num_experts=3)), ("cross_stitch", {}),
                     ("shared_bottom", {})]:
        model = create_model(name, num_tasks=T, dense_dim=DENSE, cat_cardinalities=CARDS, **kw)
        dense, cat = inputs(7, DENSE, CARDS, torch.float32)
        with plain_mode():
            model(dense, cat).sum().backward()
        with pytest.raises(AssertionError, match="a kernel ran"):
            model(dense, cat)


PADDED = pytest.mark.parametrize("name,kw", [("adatt_sp", dict(experts_per_task=2)),
                                             ("mmoe", dict(num_experts=4)),
                                             ("adatt", dict(experts_per_task=1,
                                                            shared_experts=2))])


def padded_model(name: str, kw: dict, batch: int):
    """A model whose input product (256 dense -> unaligned width) can be padded, and inputs."""
    torch.manual_seed(0)
    sizes = [[262, 136]] if name == "mmoe" else [262, 136]
    model = create_model(name, num_tasks=T, dense_dim=256, cat_cardinalities=[5, 9],
                         expert_sizes=sizes, **kw)
    return model, *inputs(batch, 256, [5, 9], torch.float32)


def outputs_and_grads(model, dense, cat):
    """Logits and every parameter's gradient of a fixed weighting of them."""
    model.zero_grad()
    out = model(dense, cat)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@PADDED
def test_level_0_reads_the_padded_input_product_bit_for_bit(name, kw, pad_on):
    """Where the input product is padded (align_pad), level 0 reads it with its zero
    columns on (no padding pass in the backward): the same outputs and gradients, bit
    for bit, as reading the sliced product, and the padding's gradient is zero."""
    model, dense, cat = padded_model(name, kw, 64)
    padded = model.input.forward_padded(dense, cat)
    assert padded.shape[1] > model.split[0] and model.levels[0].reads_padded()
    assert torch.equal(padded[:, model.split[0]:], torch.zeros_like(padded[:, model.split[0]:]))
    out, grads = outputs_and_grads(model, dense, cat)
    model.input.forward_padded = model.input.forward  # the sliced product, as before
    ref_out, ref_grads = outputs_and_grads(model, dense, cat)
    assert torch.equal(out, ref_out)
    for n, g in grads.items():
        assert torch.equal(g, ref_grads[n]), n


@PADDED
def test_padding_on_or_off_gives_the_same_numbers(name, kw, two_threads):
    """A model with its products padded (input layer and slot products) and without: the
    same outputs bit for bit; gradients equal up to the last bit of a bias gradient
    summed over the wider rows (why "auto" is fixed per host, not timed)."""
    model, dense, cat = padded_model(name, kw, 128)
    runs = []
    for mode in ("on", "off"):
        with padding_mode(mode):
            assert (align_pad(256, model.input.out_features, dense) > 0) == (mode == "on")
            runs.append(outputs_and_grads(model, dense, cat))
    (out, grads), (ref_out, ref_grads) = runs
    assert torch.equal(out, ref_out)
    for n, g in grads.items():
        if n.endswith("bias"):
            torch.testing.assert_close(g, ref_grads[n], rtol=0, atol=1e-6)
        else:
            assert torch.equal(g, ref_grads[n]), n


def test_experts_and_gates_with_padding_under_vmap():
    """The ensemble's copies (vmap) through the padded read: each copy as alone."""
    y = torch.randn(3, 1, 5, 2 * 4 + 3 + 2, requires_grad=True)  # [S,1,B,E*H + K + pad]

    def f(t):
        h, z = fusion.experts_and_gates(t, 2, 4, 11)  # [1,B,13] -> [B,2,4], [1,B,3]
        return h.sum(-1) + z.sum(-1).transpose(0, 1)  # [B,2]

    got = torch.func.vmap(f)(y)  # [S,B,2]
    (g,) = torch.autograd.grad(got.sum(), y)
    for s in range(3):
        ys = y[s].detach().requires_grad_()
        want = f(ys)
        (gs,) = torch.autograd.grad(want.sum(), ys)
        assert torch.equal(got[s], want) and torch.equal(g[s], gs)
        assert gs[..., 11:].abs().sum() == 0
