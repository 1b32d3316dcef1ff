"""Export for serving: every format agrees with the eager model, at any batch size.

One tiny run is trained per session (sim ``group3``: a regression task and four
binary tasks); the other model variants are built on its data with freshly
initialised weights, which is all an export-equivalence check needs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from adatt.cli import main
from adatt.config import load_config
from adatt.serve import export as ex
from adatt.serve.export import (
    ServeError,
    example_inputs,
    export_model,
    load_exported,
    output_columns,
)
from adatt.train.trainer import build_model, load_run, train

DATA = ["data.source=sim", "data.preset=group3", "data.rows=3000"]
TRAIN = ["train.epochs=1", "runtime.progress=false", "runtime.threads=1", "train.batch_size=512"]
# variant -> model options (tiny sizes); adatt_sp one-hot is the trained run
VARIANTS = {
    "adatt_sp_onehot": ["model.name=adatt_sp", "model.embedding_dim=null",
                        "model.expert_sizes=[8,4]", "model.tower_sizes=[4]"],
    "adatt_emb": ["model.name=adatt", "model.embedding_dim=3", "model.expert_sizes=[8,4]",
                  "model.tower_sizes=[4]", "model.shared_experts=2",
                  "model.experts_per_task=[1,2,1,1,1]"],
    "ple": ["model.name=ple", "model.expert_sizes=[8,4]", "model.tower_sizes=[4]",
            "model.shared_experts=1", "model.gate_hidden=[3]"],
    "mmoe": ["model.name=mmoe", "model.embedding_dim=2", "model.expert_sizes=[[8,4]]",
             "model.num_experts=3", "model.tower_sizes=[4]"],
    # the shipped simulator config's sizes: embeddings of 16 (product-table path in eager
    # mode), experts wide enough for thread-balanced slot products
    "adatt_sp_shipped": ["model.name=adatt_sp", "model.embedding_dim=16",
                         "model.expert_sizes=[256,128]", "model.tower_sizes=[64]",
                         "model.experts_per_task=2"],
}
FORMATS = ("torchscript", "export", "onnx")
TOL = 1e-5

_RUN: dict[str, Path] = {}  # the session's trained run, shared with test_predict.py
_LOADED: dict[str, tuple] = {}


def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of the base variant, trained once per session."""
    if "run" not in _RUN:
        root = tmp_path_factory.getbasetemp() / "serve_runs"
        cfg = load_config(None, [*DATA, *TRAIN, *VARIANTS["adatt_sp_onehot"],
                                 f"out_dir={root}", "name=sim"])
        threads = torch.get_num_threads()
        try:
            train(cfg)  # sets torch's thread count to runtime.threads=1
        finally:
            torch.set_num_threads(threads)
        _RUN["run"] = root / "sim"
    return _RUN["run"]


def loaded(tmp_path_factory: pytest.TempPathFactory, variant: str = "adatt_sp_onehot") -> tuple:
    """(config, model, splits) of a variant: ``load_run`` of the trained run for the base
    variant; the others are built on its data with freshly initialised weights."""
    if "adatt_sp_onehot" not in _LOADED:
        _LOADED["adatt_sp_onehot"] = load_run(sim_run(tmp_path_factory))
    if variant not in _LOADED:
        _, _, splits = _LOADED["adatt_sp_onehot"]
        cfg = load_config(None, [*DATA, *TRAIN, *VARIANTS[variant]])
        torch.manual_seed(len(variant))
        _LOADED[variant] = (cfg, build_model(cfg.model, splits.schema).eval(), splits)
    return _LOADED[variant]


def eager(model: torch.nn.Module, schema, dense, cat) -> torch.Tensor:
    """What serving must output: probabilities, and regression outputs in the labels'
    original units (``center + scale * output``, the schema's label standardisation)."""
    with torch.no_grad():
        z = model.eval()(dense, cat)  # [B, T]
    binary = torch.tensor([t.kind == "binary" for t in schema.tasks])
    center = torch.tensor([t.center for t in schema.tasks])  # [T]
    scale = torch.tensor([t.scale for t in schema.tasks])  # [T]
    return torch.where(binary, torch.sigmoid(z), center + scale * z)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "adatt_sp_shipped"])
def test_export_matches_eager(tmp_path_factory, tmp_path, variant, fmt):
    if fmt == "onnx":
        for pkg in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(pkg, reason="pip install adatt[serve]")
    cfg, model, splits = loaded(tmp_path_factory, variant)
    schema = splits.schema
    out = tmp_path / f"m{ex.SUFFIXES[fmt]}"
    res = export_model(model, schema, fmt, out)
    assert res.path == out and out.is_file() and res.max_abs_diff <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".json"])
    run = load_exported(out)
    # batch sizes other than the export-time example (4), and real rows of the test split
    cases = [example_inputs(schema, b, seed=10 + b) for b in (1, 3, 33)]
    cases.append((splits.test.dense[:70], splits.test.cat[:70]))
    for dense, cat in cases:
        with torch.no_grad():
            got, want = run(dense, cat), eager(model, schema, dense, cat)
        assert got.shape == want.shape == (dense.shape[0], schema.num_tasks)
        assert float((got - want).abs().max()) <= TOL
    side = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert side["format"] == fmt and side["file"] == out.name
    dense_in, cat_in = side["inputs"]
    assert dense_in["columns"] == list(schema.dense)
    assert dense_in["shape"] == ["batch", schema.dense_dim] and dense_in["dtype"] == "float32"
    assert cat_in["fields"] == list(schema.categorical)
    assert cat_in["cardinalities"] == list(schema.cardinalities) and cat_in["dtype"] == "int64"
    tasks = side["outputs"][0]["tasks"]
    assert [t["name"] for t in tasks] == schema.task_names
    watch = schema.tasks[0]  # watch_time first, standardised in training (the default)
    assert watch.kind == "regression" and watch.scale != 1.0
    assert tasks[0]["transform"].startswith(f"{watch.center!r} + {watch.scale!r} * output")
    assert [t["transform"] for t in tasks[1:]] == ["sigmoid"] * 4
    assert [t["column"] for t in tasks] == output_columns(schema)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_any_batch_size_and_thread_count(tmp_path_factory, tmp_path, fmt, threads):
    """Shipped sizes: eager mode branches on the batch size (product table when 4 P <= B)
    and the thread count (slot products split in row blocks); exported graphs must not."""
    if fmt == "onnx":
        for pkg in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(pkg, reason="pip install adatt[serve]")
    _, model, splits = loaded(tmp_path_factory, "adatt_sp_shipped")
    schema = splits.schema
    assert ex.CHECK_BATCHES == (1, 7, 512)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = tmp_path / f"m{ex.SUFFIXES[fmt]}"
        res = export_model(model, schema, fmt, out)
        assert res.max_abs_diff <= TOL
        run = load_exported(out)
        for b in (1, 7, 512, 2 * 8003):
            dense, cat = example_inputs(schema, b, seed=b)
            with torch.no_grad():
                got, want = run(dense, cat), eager(model, schema, dense, cat)
            assert got.shape == (b, schema.num_tasks)
            assert float((got - want).abs().max()) <= TOL, (b, threads)
    finally:
        torch.set_num_threads(before)


def test_cli_export_writes_model_and_sidecar(tmp_path_factory, tmp_path, capsys):
    run = sim_run(tmp_path_factory)
    out = tmp_path / "sub" / "model.pt"
    assert main(["export", "--run", str(run), "--format", "torchscript", "--output", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    side = json.loads(out.with_name("model.pt.json").read_text())
    assert side["model"] == "adatt_sp" and side["encoding"]["kind"] == "encoded"
    assert side["check"]["max_abs_diff"] <= TOL
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt", "model.pt.json"]
    _, model, splits = loaded(tmp_path_factory)
    d, c = splits.test.dense[:9], splits.test.cat[:9]
    assert torch.allclose(torch.jit.load(str(out))(d, c),
                          eager(model, splits.schema, d, c), atol=TOL, rtol=0)


def test_missing_onnx_is_a_clear_error(tmp_path_factory, tmp_path, monkeypatch, capsys):
    _, model, splits = loaded(tmp_path_factory)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ServeError, match=r"pip install adatt\[serve\]"):
        export_model(model, splits.schema, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    run = sim_run(tmp_path_factory)
    assert main(["export", "--run", str(run), "--format", "onnx",
                 "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "onnxscript" in err and len(err.splitlines()) == 1


def test_failed_export_leaves_nothing(tmp_path_factory, tmp_path, monkeypatch):
    _, model, splits = loaded(tmp_path_factory)
    out = tmp_path / "m.pt2"
    out.write_text("previous")

    def broken(serving, args, path):
        raise RuntimeError("unsupported op\nsecond line")

    monkeypatch.setitem(ex._SAVERS, "export", broken)
    with pytest.raises(ServeError, match="export export failed: RuntimeError: unsupported op"):
        export_model(model, splits.schema, "export", out)
    assert out.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


def test_export_that_disagrees_is_not_published(tmp_path_factory, tmp_path, monkeypatch):
    _, model, splits = loaded(tmp_path_factory)
    real = ex.load_exported
    monkeypatch.setattr(ex, "load_exported",
                        lambda p, f=None: (lambda d, c: real(p, f)(d, c) + 1e-3))
    with pytest.raises(ServeError, match="disagrees with the eager model"):
        export_model(model, splits.schema, "torchscript", tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_directory_output(tmp_path_factory, tmp_path):
    _, model, splits = loaded(tmp_path_factory)
    with pytest.raises(ServeError, match="unknown export format 'tflite'"):
        export_model(model, splits.schema, "tflite", tmp_path / "m")
    with pytest.raises(ServeError, match="is a directory"):
        export_model(model, splits.schema, "torchscript", tmp_path)
    assert list(tmp_path.iterdir()) == []
