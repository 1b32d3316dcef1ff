"""benchmarks/peers.py: every builder trains one step with the right shapes.

Peers (torch-rechub, deepctr-torch; the ``bench`` extra) are skipped when not installed.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
_spec = importlib.util.spec_from_file_location("adatt_benchmark_peers", _PATH)
peers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peers  # dataclasses look their module up there
_spec.loader.exec_module(peers)

T = peers.T
SIZES = {
    "onehot": dict(dense=3, cards=[4, 5], experts=[16, 8], tower=4, batch=16, embed=None),
    "emb": dict(dense=3, cards=[4, 5], experts=[16, 8], tower=4, batch=16, embed=4),
    "dense": dict(dense=6, cards=[], experts=[16, 8], tower=4, batch=16, embed=None),
}


def _batch(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = size["batch"]
    dense = torch.randn(B, size["dense"], generator=g)
    cat = torch.stack([torch.randint(0, c, (B,), generator=g) for c in size["cards"]], -1) \
        if size["cards"] else torch.zeros(B, 0, dtype=torch.long)
    labels = (torch.rand(B, T, generator=g) < 0.3).float()
    return dense, cat, labels


def _check_one_step(built, size):
    dense, cat, labels = _batch(size)
    inputs = built.prepare(dense, cat)
    out = built.run(inputs)
    assert out.shape == (size["batch"], T)
    if built.probabilities:
        assert ((out > 0) & (out < 1)).all()
    before = [p.detach().clone() for p in built.model.parameters()]
    opt = torch.optim.Adam(built.model.parameters(), lr=1e-2)
    loss = peers.train_step(built, opt, inputs, labels)
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, built.model.parameters(),
                                                           strict=True))
    assert changed > 0


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", peers.MODELS)
def test_ours_one_step(name, size):
    torch.manual_seed(0)
    _check_one_step(peers.build("ours", name, SIZES[size]), SIZES[size])


@pytest.mark.parametrize("name", peers.REFERENCE_MODELS)
def test_ours_reference_rows_one_step(name):
    torch.manual_seed(0)
    _check_one_step(peers.build("ours", name, SIZES["onehot"]), SIZES["onehot"])


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("lib", ["torch-rechub", "deepctr-torch"])
def test_peer_one_step(lib, size):
    pytest.importorskip(peers.LIB_MODULE[lib])
    for name in peers.MODELS:
        torch.manual_seed(0)
        built = peers.build(lib, name, SIZES[size])
        assert "prob" in built.notes
        _check_one_step(built, SIZES[size])


@pytest.mark.parametrize("size", sorted(SIZES))
def test_same_configuration_same_parameter_count(size):
    """deepctr-torch's Shared-bottom (no BatchNorm) is exactly ours: same parameter count."""
    pytest.importorskip("deepctr_torch")
    ours = peers.build("ours", "shared_bottom", SIZES[size]).model
    theirs = peers.build("deepctr-torch", "shared_bottom", SIZES[size]).model
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs)


def test_deepctr_ple_gets_its_shared_experts():
    pytest.importorskip("deepctr_torch")
    built = peers.build("deepctr-torch", "ple", SIZES["onehot"])
    assert "fix" in built.notes and "width" in built.notes
    assert [len(level[0]) for level in built.model.shared_experts] == [peers.SHARED] * 2


def test_reference_cannot_take_embeddings():
    with pytest.raises(peers.CannotExpress):
        peers.build("reference", "mmoe", SIZES["emb"], reference="unused.py")


def test_table_ratios_are_against_ours():
    rows = [
        dict(lib="ours", model="mmoe", size="census", train=200.0, infer=1000.0, peak_mb=10.0,
             params=100, mflop=1.0, notes=[]),
        dict(lib="torch-rechub", model="mmoe", size="census", train=100.0, infer=250.0,
             peak_mb=20.0, params=110, mflop=2.0, notes=["bn"]),
        dict(lib="reference", model="mmoe", size="census-emb", status="cannot express",
             notes=["noemb"]),
    ]
    table = peers.format_table(rows, markdown=True)
    line = next(x for x in table.splitlines() if "torch-rechub" in x)
    assert "| 0.50x |" in line and "| 0.25x |" in line and "| 2.00x |" in line
    assert "cannot express" in table and "noemb:" in table


def _load_accuracy():
    path = _PATH.with_name("peers_accuracy.py")
    spec = importlib.util.spec_from_file_location("adatt_benchmark_peers_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(importlib.util.find_spec("torch_rechub") is None,
                    reason="torch-rechub not installed (bench extra)")
def test_rechub_without_batchnorm_has_none_left_and_trains():
    acc = _load_accuracy()
    size = SIZES["emb"]
    with_bn = acc.build("torch-rechub", "mmoe", size).model
    built = acc.build("torch-rechub-no-bn", "mmoe", size)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in built.model.modules())
    _check_one_step(built, size)


def test_accuracy_table_pairs_every_peer_with_ours_on_common_seeds():
    acc = _load_accuracy()

    def runs(values):
        return [{"test": [v, 0.9, 0.8], "seconds": 1.0, "params": 10} for v in values]

    results = {"tasks": ["a", "b", "c"], "runs": {
        "mmoe:ours": runs([0.90, 0.91, 0.92]),
        "mmoe:torch-rechub": runs([0.89, 0.90]),  # two seeds: paired on seeds 0, 1
        "mmoe:torch-rechub-no-bn": runs([0.95, 0.95, 0.95])}}
    text = acc.format_results(results)
    assert "| mmoe | torch-rechub | +0.0100 ± 0.0000 (2/2) |" in text
    assert "| mmoe | torch-rechub-no-bn | -0.0400" in text and "(0/3)" in text
