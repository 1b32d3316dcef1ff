"""The CPU kernels (adatt.modules.kernels) against the plain PyTorch ops they stand for:
same values and gradients, and the conditions under which each one applies."""

from __future__ import annotations

import pytest
import torch

from adatt.modules.kernels import is_plain, plain_mode


@pytest.fixture
def threads():
    """Set torch's thread count for one test, restored after."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def test_plain_mode_nests_and_restores():
    assert not is_plain()
    with plain_mode():
        assert is_plain()
        with plain_mode(False):
            assert not is_plain()
        assert is_plain()
    assert not is_plain()
    with pytest.raises(RuntimeError), plain_mode():
        raise RuntimeError("an error inside the block")
    assert not is_plain()


@pytest.mark.parametrize("fields", [1, 5, 80])
def test_bag_sum_gradient_equals_embedding_bag(fields):
    from adatt.modules.kernels import bag_sum

    g = torch.Generator().manual_seed(0)
    # float64: the two backwards add the same terms in different orders
    w = torch.randn(30, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = w.detach().clone().requires_grad_()
    idx = torch.randint(0, 29, (64, fields), generator=g)  # repeats; row 29 never used
    up = torch.randn(64, 7, generator=g, dtype=torch.float64)
    out = bag_sum(idx, w)
    ref = torch.nn.functional.embedding_bag(idx, w2, mode="sum")
    torch.testing.assert_close(out, ref)
    (out * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    # the same gradient twice: deterministic
    w.grad = None
    (bag_sum(idx, w) * up).sum().backward()
    grad2 = w.grad.clone()
    w.grad = None
    (bag_sum(idx, w) * up).sum().backward()
    assert torch.equal(w.grad, grad2)


@pytest.mark.parametrize("rows", [5, 32_767, 32_768, 100_000])
def test_bag_sum_row_grouping_is_a_stable_sort_either_side_of_int16(rows):
    """Both paths of the backward (numpy int16 radix sort, torch sort) group the
    (example, row) pairs by row in example order, as a stable sort does."""
    from adatt.modules.kernels import pairs_by_row

    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, rows, (300, 4), generator=g)
    idx[0, 0] = rows - 1  # the last row is used
    examples, starts = pairs_by_row(idx, rows)
    order = torch.sort(idx.reshape(-1), stable=True).indices  # [B*F] the reference grouping
    assert torch.equal(examples, order // 4)
    assert examples.dtype == starts.dtype == torch.int64 and starts.shape == (rows,)
    count = torch.bincount(idx.reshape(-1), minlength=rows)
    assert torch.equal(starts, count.cumsum(0) - count)


@pytest.mark.parametrize("cards", [[3, 1, 7, 2], [40_000, 5]])
def test_field_ordered_row_grouping_equals_the_global_sort(cards):
    """Columns holding one field each (rows of column f below those of f+1): the
    per-column sorts give the global stable sort's grouping, and the same gradient."""
    from adatt.modules.kernels import bag_sum, pairs_by_row

    g = torch.Generator().manual_seed(2)
    offsets = torch.tensor([0, *cards[:-1]]).cumsum(0)
    cat = torch.stack([torch.randint(0, c, (97,), generator=g) for c in cards], 1)
    idx, rows = cat + offsets, sum(cards)
    for got, want in zip(pairs_by_row(idx, rows, True), pairs_by_row(idx, rows), strict=True):
        assert torch.equal(got, want)
    w = torch.randn(rows, 5, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(97, 5, generator=g, dtype=torch.float64)
    (bag_sum(idx, w, fields_in_order=True) * up).sum().backward()
    ref = torch.zeros_like(w).index_add_(0, idx.reshape(-1), up.repeat_interleave(len(cards), 0))
    torch.testing.assert_close(w.grad, ref)


@pytest.mark.parametrize("shape", [(7, 3, 1), (64, 3, 6), (5, 2, 16), (9, 4, 17)])
def test_gate_softmax_equals_torch_softmax_forward_and_backward(shape):
    from adatt.modules.kernels import gate_softmax

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 30  # large logits too
    x[..., 0] = float("-inf") if shape[-1] > 1 else x[..., 0]  # masked entries
    x.requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    up = torch.randn(*shape, generator=g, dtype=torch.float64)
    out, ref = gate_softmax(x), torch.softmax(x2, -1)
    torch.testing.assert_close(out, ref)
    (out * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert torch.isfinite(x.grad).all()
    assert torch.autograd.gradcheck(gate_softmax, (torch.randn(4, 2, min(shape[-1], 5),
                                                               dtype=torch.float64,
                                                               requires_grad=True),))


def test_gate_softmax_under_vmap_and_in_bf16():
    from adatt.modules.kernels import gate_softmax

    x = torch.randn(3, 8, 2, 6, requires_grad=True)
    out = torch.func.vmap(gate_softmax)(x)  # the ensemble's case
    torch.testing.assert_close(out, torch.softmax(x, -1))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x), atol=1e-6, rtol=0)
    xb = torch.randn(8, 6).bfloat16()
    assert gate_softmax(xb).dtype == torch.bfloat16  # torch.softmax's path


def test_align_pad_only_where_the_size_qualifies():
    from adatt.modules.kernels import align_pad, padding_mode

    x = torch.zeros(2, 2)
    with padding_mode("on"):
        assert align_pad(512, 1554, x) == 14 and align_pad(512, 1568, x) == 0
        assert align_pad(256, 262, x) == 10
        assert align_pad(32, 1554, x) == 0 and align_pad(512, 40, x) == 0  # small products
        assert align_pad(128, 134, x) == 0  # census level 1: the copies cost more
        assert align_pad(512, 262, torch.zeros(2, 2, device="meta")) == 0  # not on CPU
    with padding_mode("off"):
        assert align_pad(512, 1554, x) == 0
    with pytest.raises(ValueError, match="padding mode must be one of auto, on, off"):
        with padding_mode("always"):
            pass


def test_align_pad_auto_follows_the_cpu_capability():
    """"auto" pads below AVX-512 only (measured: a gain on an AVX2 host, a loss on an
    AVX-512 host), a fixed choice per host, never a timing."""
    from adatt.modules.kernels import align_pad, padding_mode

    x = torch.zeros(256, 512)
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    with padding_mode("auto"):
        assert align_pad(512, 1554, x) == (0 if avx512 else 14)
        assert align_pad(128, 134, x) == 0  # too small on any host


@pytest.mark.parametrize("lead", [(), (3,)])
def test_padded_product_is_bit_identical_to_the_plain_one(lead):
    """The padded product's first W columns and its weight gradient equal the plain
    product's bit for bit (forward and backward)."""
    torch.manual_seed(0)
    a, w = torch.randn(*lead, 256, 512), torch.randn(*lead, 512, 1554)
    g = torch.randn(*lead, 256, 1554)
    wp = torch.nn.functional.pad(w, (0, 14)).requires_grad_()
    w.requires_grad_()
    plain, padded = a @ w, (a @ wp)[..., :1554]
    assert torch.equal(plain, padded)
    plain.backward(g)
    padded.backward(g)
    assert torch.equal(w.grad, wp.grad[..., :1554])


def test_row_splits_only_where_threads_would_idle(threads):
    from adatt.modules.kernels import row_splits

    x, w = torch.zeros(3, 1024, 256), torch.zeros(3, 256, 272)
    threads(2)
    assert row_splits(x, w) == 2  # 3 slots on 2 threads -> 6 blocks
    assert row_splits(torch.zeros(4, 1024, 256), torch.zeros(4, 256, 272)) == 1  # divides
    assert row_splits(x, torch.zeros(3, 256, 31)) == 1  # small weight (towers)
    assert row_splits(torch.zeros(3, 101, 256), w) == 1  # rows do not split evenly
    assert row_splits(torch.zeros(3, 100, 256), w) == 1  # blocks under 64 rows
    assert row_splits(x.double(), w.double()) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert row_splits(x, w) == 1
    assert torch.func.vmap(lambda a: torch.tensor(row_splits(a, w)))(x[None]).item() == 1
    threads(4)
    assert row_splits(x, w) == 4  # 12 blocks of 256 rows
    threads(1)
    assert row_splits(x, w) == 1
