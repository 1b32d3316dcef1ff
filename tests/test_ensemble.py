"""Vectorised ensembles: copy k is the separate run with seed k, selection is per copy,
seed directories are ordinary runs, unsupported options are clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from adatt.config import ConfigError, load_config
from adatt.models import create_model, list_models
from adatt.train.ensemble import EnsembleModel, train_ensemble
from adatt.train.trainer import RunError, evaluate, load_run, train

SEEDS = [0, 1, 2]
MMOE = ["data.source=mmoe_synthetic", "data.rows=2000", "model.name=mmoe",
        "model.expert_sizes=[[16]]", "model.num_experts=3", "model.tower_sizes=[8]",
        "train.batch_size=128", "train.optimizer.lr=3e-3", "train.epochs=2",
        "train.eval_every=700"]
# one-hot categorical input (embedding_dim null), binary tasks, weight decay, a schedule,
# early stopping: copies may stop at different evaluations
SIM = ["data.source=sim", "data.preset=group1", "data.rows=2000", "model.name=adatt_sp",
       "model.expert_sizes=[16,8]", "model.experts_per_task=2", "model.tower_sizes=[8]",
       "train.batch_size=200", "train.optimizer.name=adamw", "train.optimizer.lr=1e-2",
       "train.optimizer.weight_decay=0.01", "train.schedule.name=cosine",
       "train.schedule.warmup_steps=3", "train.epochs=3", "train.eval_every=400",
       "train.selection.patience=2"]


@pytest.fixture(scope="module")
def splits_of():
    """Loaded data per base config (the simulator takes about a second to generate)."""
    from adatt.data.config import load_splits

    cache = {}

    def get(base):
        key = tuple(base)
        if key not in cache:
            cache[key] = load_splits(load_config(None, list(base)).data)
        return cache[key]

    return get


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cfg_for(tmp_path, base, *extra):
    return load_config(None, [*base, f"out_dir={tmp_path}", "runtime.progress=false",
                              "runtime.threads=1", *extra])


def assert_metrics_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys()
        for k, v in a[task].items():
            assert b[task][k] == pytest.approx(v, rel=tol, abs=tol), (task, k)


# ----------------------------------------------------------------------------- forward


def copies_and_batches(name: str, kw: dict, batch: int):
    """One model per seed of SEEDS, their ensemble, and one batch per copy ``[S,B,...]``."""
    models = []
    for s in SEEDS:
        torch.manual_seed(s)
        models.append(create_model(name, **kw))
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(len(SEEDS), batch, kw["dense_dim"], generator=g)  # [S,B,Dd]
    cat = torch.stack([torch.randint(0, c, (len(SEEDS), batch), generator=g)
                       for c in kw["cat_cardinalities"]], -1)  # [S,B,F]
    return models, EnsembleModel(models), dense, cat


@pytest.mark.parametrize("embedding_dim", [None, 3])
@pytest.mark.parametrize("name", sorted(list_models()))
def test_forward_equals_each_copy(name, embedding_dim):
    kw = dict(num_tasks=2, dense_dim=4, cat_cardinalities=[3, 5], embedding_dim=embedding_dim)
    models, ens, dense, cat = copies_and_batches(name, kw, 6)
    per_copy = ens(dense, cat)  # [S,B,T]
    shared = ens(dense[0], cat[0])  # one batch for all copies
    for k, m in enumerate(models):
        torch.testing.assert_close(per_copy[k], m(dense[k], cat[k]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shared[k], m(dense[0], cat[0]), rtol=1e-5, atol=1e-6)
    # the saved copy is the ordinary model's state dict
    fresh = create_model(name, **kw)
    fresh.load_state_dict(ens.state_dict_of(1))
    torch.testing.assert_close(fresh(dense[1], cat[1]), models[1](dense[1], cat[1]))


@pytest.mark.parametrize("name", ["adatt_sp", "shared_bottom"])
def test_embedding_product_table_in_the_ensemble_equals_each_copy(name):
    """Small vocabularies against the batch: both the ensemble and the single model take
    the first layer from the per-field product table; outputs and gradients agree."""
    kw = dict(num_tasks=2, dense_dim=4, cat_cardinalities=[3, 5], embedding_dim=4)
    models, ens, dense, cat = copies_and_batches(name, kw, 24)
    assert models[0].input.use_product_table(cat[0]) and ens.base.input.use_product_table(cat)
    out = ens(dense, cat)  # [S,B,T]
    out.square().sum().backward()
    for k, m in enumerate(models):
        ref = m(dense[k], cat[k])
        torch.testing.assert_close(out[k], ref, rtol=1e-5, atol=1e-6)
        ref.square().sum().backward()
        for n, prm in m.named_parameters():
            torch.testing.assert_close(ens.params[n].grad[k], prm.grad, rtol=1e-4, atol=1e-6)


def test_dense_only_input():
    models = []
    for s in SEEDS[:2]:
        torch.manual_seed(s)
        models.append(create_model("shared_bottom", num_tasks=2, dense_dim=4,
                                   cat_cardinalities=[]))
    dense = torch.randn(2, 5, 4)
    out = EnsembleModel(models)(dense, torch.zeros(2, 5, 0, dtype=torch.long))
    for k, m in enumerate(models):
        torch.testing.assert_close(out[k], m(dense[k], torch.zeros(5, 0, dtype=torch.long)))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("base", [SIM, MMOE], ids=["adatt_sp-sim-onehot", "mmoe-synthetic"])
def test_copy_k_equals_separate_run_with_seed_k(tmp_path, base, splits_of):
    splits = splits_of(base)
    ens = train_ensemble(cfg_for(tmp_path, base, "name=ens"), SEEDS, splits=splits)
    assert [r["seed"] for r in ens] == SEEDS
    for k, s in enumerate(SEEDS):
        sep = train(cfg_for(tmp_path, base, f"name=sep{s}", f"train.seed={s}"), splits=splits)
        got = ens[k]
        assert set(sep) <= set(got)
        assert got["selected"] == sep["selected"]
        assert got["train_examples"] == sep["train_examples"]
        assert got["num_parameters"] == sep["num_parameters"]
        assert got["selection_score"] == pytest.approx(sep["selection_score"], rel=1e-5)
        assert_metrics_close(sep["valid"], got["valid"])
        assert_metrics_close(sep["test"], got["test"])
        # every evaluation of the run, not only the selected one
        a = [json.loads(x) for x in (tmp_path / f"sep{s}" / "metrics.jsonl").read_text()
             .splitlines()]
        b = [json.loads(x) for x in (tmp_path / "ens" / f"seed_{s}" / "metrics.jsonl")
             .read_text().splitlines()]
        assert [x["examples"] for x in a] == [x["examples"] for x in b]
        assert [x["improved"] for x in a] == [x["improved"] for x in b]
        for x, y in zip(a, b, strict=True):
            assert y["lr"] == pytest.approx(x["lr"])
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4, abs=1e-6)
            assert_metrics_close(x["valid"], y["valid"])


@pytest.mark.parametrize("extra", [
    ["train.weighting=uncertainty"],
    ["train.weighting=dwa", "train.epochs=4"],  # DWA's weights move from the third epoch
    ["train.grad_clip=0.05"],  # small enough to clip every step
], ids=["uncertainty", "dwa", "grad_clip"])
def test_per_copy_weighting_and_clipping_equal_separate_runs(tmp_path, extra, splits_of):
    """Options with a per-copy state (a loss weighting's, a gradient norm) act on each copy
    as on its own run."""
    splits = splits_of(MMOE)
    seeds = SEEDS[:2]
    ens = train_ensemble(cfg_for(tmp_path, MMOE, "name=ens", *extra), seeds, splits=splits)
    for k, s in enumerate(seeds):
        sep = train(cfg_for(tmp_path, MMOE, f"name=sep{s}", f"train.seed={s}", *extra),
                    splits=splits)
        assert ens[k]["selected"] == sep["selected"]
        assert_metrics_close(sep["test"], ens[k]["test"], tol=1e-4)
        a = [json.loads(x) for x in (tmp_path / f"sep{s}" / "metrics.jsonl").read_text()
             .splitlines()]
        b = [json.loads(x) for x in (tmp_path / "ens" / f"seed_{s}" / "metrics.jsonl")
             .read_text().splitlines()]
        for x, y in zip(a, b, strict=True):
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4, abs=1e-6)


def test_clip_grad_norm_per_copy_equals_torch_per_copy():
    from adatt.train.ensemble import clip_grad_norm_per_copy

    g = torch.Generator().manual_seed(0)
    stacked = [torch.nn.Parameter(torch.zeros(3, *shape)) for shape in [(4, 5), (5,), (2, 2, 2)]]
    for p in stacked:
        p.grad = torch.randn(p.shape, generator=g)
    singles = [[torch.nn.Parameter(torch.zeros(p.shape[1:])) for p in stacked] for _ in range(3)]
    for k, ps in enumerate(singles):
        for p, sp in zip(stacked, ps, strict=True):
            sp.grad = p.grad[k].clone()
    norms = clip_grad_norm_per_copy(stacked, 2.0)
    for k, ps in enumerate(singles):
        want = torch.nn.utils.clip_grad_norm_(ps, 2.0, foreach=True)
        torch.testing.assert_close(norms[k], want)
        for p, sp in zip(stacked, ps, strict=True):
            torch.testing.assert_close(p.grad[k], sp.grad)


def test_selection_is_per_copy_and_seed_dirs_are_runs(tmp_path, splits_of):
    seeds = [3, 4, 5, 6]
    res = train_ensemble(cfg_for(tmp_path, SIM, "name=e", "train.optimizer.lr=3e-2",
                                 "train.eval_every=300", "train.selection.patience=null",
                                 "train.epochs=2"), seeds, splits=splits_of(SIM))
    selected = [r["selected"]["eval"] for r in res]
    assert len(set(selected)) > 1, selected  # copies differ, so do their selections
    for r, s in zip(res, seeds, strict=True):
        run = tmp_path / "e" / f"seed_{s}"
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert r["selected"]["eval"] == max(lines, key=lambda x: x["score"])["eval"]
        assert json.loads((run / "results.json").read_text())["test"] == r["test"]
    for r, s in list(zip(res, seeds, strict=True))[:2]:  # loading re-generates the data: 2 only
        cfg, model, splits = load_run(tmp_path / "e" / f"seed_{s}")  # the ordinary model
        assert cfg.train.seed == s and cfg.name == f"e/seed_{s}"
        assert_metrics_close(r["test"], evaluate(model, splits.test, splits.schema))
    summary = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert summary["seeds"] == seeds
    aucs = [r["test"]["view"]["auc"] for r in res]
    assert summary["test"]["view"]["auc"]["mean"] == pytest.approx(sum(aucs) / len(aucs))
    assert summary["test"]["view"]["auc"]["n"] == len(seeds)
    r0 = res[0]
    assert r0["ensemble_examples_per_s"] == pytest.approx(4 * r0["train_examples_per_s"])


def test_chunks_give_the_same_copies(tmp_path):
    base = [*MMOE, "train.epochs=1"]
    whole = train_ensemble(cfg_for(tmp_path, base, "name=a"), SEEDS)
    parts = train_ensemble(cfg_for(tmp_path, base, "name=b"), SEEDS, chunk=2)
    assert [r["ensemble_size"] for r in parts] == [2, 2, 1]
    for x, y in zip(whole, parts, strict=True):
        assert x["seed"] == y["seed"]
        assert_metrics_close(x["test"], y["test"])


def test_bf16_runs(tmp_path):
    res = train_ensemble(cfg_for(tmp_path, MMOE, "name=bf", "train.bf16=true",
                                 "train.epochs=1"), SEEDS[:2])
    assert all(math.isfinite(r["test"]["task1"]["mse"]) for r in res)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("override,match", [
    ("train.weighting=gradnorm", "train.weighting=gradnorm: not supported by train_ensemble"),
    ("train.weighting=pcgrad", "train.weighting=pcgrad: not supported by train_ensemble"),
    ("runtime.distributed=true", "runtime.distributed=true: not supported by train_ensemble"),
])
def test_unsupported_options_are_config_errors(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        train_ensemble(cfg_for(tmp_path, MMOE, "name=x", override), SEEDS)
    assert not (tmp_path / "x").exists()


def test_bad_seeds_and_existing_directory(tmp_path):
    cfg = cfg_for(tmp_path, MMOE, "name=d", "train.max_examples=200")
    with pytest.raises(ConfigError, match="distinct"):
        train_ensemble(cfg, [1, 1])
    with pytest.raises(ConfigError, match="empty"):
        train_ensemble(cfg, [])
    train_ensemble(cfg, [0])
    with pytest.raises(RunError, match="already exists"):
        train_ensemble(cfg, [0])
    train_ensemble(cfg, [0], overwrite=True)


def test_auto_chunk(tmp_path):
    from adatt.data.schema import FeatureSchema, TaskSpec
    from adatt.train.ensemble import auto_chunk

    cards = [10, 53, 48, 8, 4, 25, 4, 8, 7, 7, 4, 4, 4, 8, 7, 52, 39, 9, 10, 10, 4, 6, 4,
             44, 44, 44, 6, 4]  # census-like: 28 fields, 477 one-hot columns
    schema = FeatureSchema(tuple(f"d{i}" for i in range(9)), tuple(f"c{i}" for i in range(28)),
                           tuple(cards), tuple(TaskSpec(f"t{i}") for i in range(3)))
    config = Path(__file__).resolve().parents[1] / "configs" / "census" / "adatt_sp.yaml"
    cfg = load_config(config)  # batch 512, AdaTT-sp input width N = 786
    assert auto_chunk(cfg, schema, 100, "cpu") == 16 * 2**20 // (512 * 786 * 4) == 10
    assert auto_chunk(cfg, schema, 4, "cpu") == 4
    assert auto_chunk(cfg, schema, 100, "cuda") == 100


def test_resume_keeps_finished_seeds_and_trains_the_rest(tmp_path, splits_of):
    cfg = cfg_for(tmp_path, MMOE, "name=ens")
    first = train_ensemble(cfg, [0, 1], splits=splits_of(MMOE))
    ens_dir = tmp_path / "ens"
    mtime = (ens_dir / "seed_0" / "best.pt").stat().st_mtime_ns
    more = train_ensemble(cfg, [0, 1, 2], splits=splits_of(MMOE), resume=True)
    assert [r["seed"] for r in more] == [0, 1, 2]
    assert more[:2] == first  # loaded from the seed directories, not retrained
    assert (ens_dir / "seed_0" / "best.pt").stat().st_mtime_ns == mtime
    assert json.loads((ens_dir / "ensemble.json").read_text())["reused"] == [0, 1]
    alone = train_ensemble(cfg_for(tmp_path, MMOE, "name=alone"), [2], splits=splits_of(MMOE))
    assert more[2]["test"] == alone[0]["test"]  # the new seed is an ordinary copy


def test_resume_retrains_seeds_made_with_other_settings(tmp_path, splits_of):
    train_ensemble(cfg_for(tmp_path, MMOE, "name=ens"), [0], splits=splits_of(MMOE))
    changed = cfg_for(tmp_path, MMOE, "name=ens", "train.optimizer.lr=1e-3")
    res = train_ensemble(changed, [0], splits=splits_of(MMOE), resume=True)
    info = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert info["reused"] == []
    assert res[0]["seed"] == 0


def test_existing_directory_without_resume_or_overwrite_is_an_error(tmp_path, splits_of):
    train_ensemble(cfg_for(tmp_path, MMOE, "name=ens"), [0], splits=splits_of(MMOE))
    with pytest.raises(RunError, match="resume=True"):
        train_ensemble(cfg_for(tmp_path, MMOE, "name=ens"), [0], splits=splits_of(MMOE))
