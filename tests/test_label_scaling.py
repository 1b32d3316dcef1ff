"""Regression labels standardised on the training split (``data.standardize_labels``).

Statistics from the training split only (NaN ignored, constant columns), every
source (in memory and streamed shards), the switch (off: the loader's labels bit for
bit, and a warning for labels far from standard), and the original units of what
users read: reported MSE / MAE, ``adatt predict`` and the exported model, the
schema saved in ``data.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from adatt.config import load_config
from adatt.data.batch import TensorDataset, regression_label_variance
from adatt.data.config import load_splits
from adatt.data.label_scaling import LabelScaler, label_statistics, standardize_labels
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits
from adatt.train.evaluation import in_original_units

SCHEMA = "dense: [x]\ncategorical: [c]\nlabels: {click: binary, y: regression}\n"


def _linear(n: int, seed: int, center: float = 30.0, slope: float = 10.0) -> dict[str, list]:
    """``y = center + slope * x + N(0, 1)``, ``click = [x + N(0, 1) > 0]``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    y = center + slope * x + rng.normal(0, 1, n)
    click = (x + rng.normal(0, 1, n) > 0).astype(int)
    c = [f"c{i}" for i in rng.integers(0, 3, n)]
    return {"x": x.round(4).tolist(), "c": c, "click": click.tolist(),
            "y": y.round(4).tolist()}


def _files(tmp: Path, rows=(600, 200, 200), shift: float = 0.0, **kw) -> Path:
    (tmp / "schema.yaml").write_text(SCHEMA)
    for name, n, seed, extra in (("train", rows[0], 0, 0.0), ("valid", rows[1], 1, shift),
                                 ("test", rows[2], 2, shift)):
        frame = _linear(n, seed, **kw)
        frame["y"] = [v + extra for v in frame["y"]]
        pacsv.write_csv(pa.table(frame), tmp / f"{name}.csv")
    return tmp


def _files_cfg(tmp: Path, **extra) -> dict:
    return {"source": "files", "schema": str(tmp / "schema.yaml"), "train": str(tmp / "train.csv"),
            "valid": str(tmp / "valid.csv"), "test": str(tmp / "test.csv"), **extra}


def _ds(y) -> TensorDataset:
    y = torch.tensor(y, dtype=torch.float32)
    return TensorDataset(torch.zeros(len(y), 0), torch.zeros(len(y), 0, dtype=torch.long), y)


def test_statistics_from_the_training_split_only(tmp_path):
    """Center and population std of the training labels; valid / test (here shifted by 50)
    are transformed with them, never fitted."""
    _files(tmp_path, shift=50.0)
    with pytest.warns(UserWarning, match="raw labels"):  # mean 30, std 10
        raw = load_splits(_files_cfg(tmp_path, standardize_labels=False))
    s = load_splits(_files_cfg(tmp_path))
    y_train = raw.train.labels[:, 1].double().numpy()
    click, y = s.schema.tasks
    assert (click.center, click.scale) == (0.0, 1.0)  # binary: never standardised
    assert y.center == pytest.approx(y_train.mean(), rel=1e-12)
    assert y.scale == pytest.approx(y_train.std(), rel=1e-12)  # ddof=0
    assert 9 < y.scale < 11 and 29 < y.center < 31
    for split in ("train", "valid", "test"):
        before, after = getattr(raw, split).labels, getattr(s, split).labels
        assert torch.equal(after[:, 0], before[:, 0])
        want = ((before[:, 1].double() - y.center) / y.scale).float()
        assert torch.equal(after[:, 1], want)
    assert float(s.valid.labels[:, 1].mean()) > 4  # the shift, in training std units
    # the features are those of the loader, untouched
    assert torch.equal(s.train.dense, raw.train.dense) and torch.equal(s.test.cat, raw.test.cat)


def test_unlabelled_entries_ignored_and_kept():
    schema = FeatureSchema((), (), (), (TaskSpec("y", "regression", missing="mask"),))
    nan = float("nan")
    splits = Splits("toy", schema, _ds([[1.0], [nan], [3.0], [nan]]), _ds([[nan], [5.0]]),
                    _ds([[2.0]]))
    s = standardize_labels(splits)
    assert (s.schema.tasks[0].center, s.schema.tasks[0].scale) == (2.0, 1.0)
    assert s.train.labels[:, 0].tolist()[0::2] == [-1.0, 1.0]
    assert torch.isnan(s.train.labels[1::2, 0]).all() and torch.isnan(s.valid.labels[0, 0])
    assert s.valid.labels[1, 0] == 3.0
    # no labelled training row: labels left as they are (0 / 1)
    empty = Splits("toy", schema, _ds([[nan], [nan]]), _ds([[4.0]]), _ds([[4.0]]))
    task = standardize_labels(empty).schema.tasks[0]
    assert (task.center, task.scale) == (0.0, 1.0)


@pytest.mark.parametrize("jitter", [0.0, 1e-9])
def test_a_constant_label_column_is_only_shifted(jitter):
    schema = FeatureSchema((), (), (), (TaskSpec("y", "regression"),))
    train = [[7.0], [7.0 + jitter], [7.0]]
    s = standardize_labels(Splits("toy", schema, _ds(train), _ds([[9.0]]), _ds([[7.0]])))
    task = s.schema.tasks[0]
    assert task.scale == 1.0 and task.center == pytest.approx(7.0)
    assert s.valid.labels[0, 0] == pytest.approx(2.0) and abs(float(s.test.labels[0, 0])) < 1e-6


def test_off_gives_the_loaders_labels_bit_for_bit():
    from adatt.data.mmoe_synthetic import load_mmoe_synthetic
    from adatt.data.simulator import load_sim

    cases = [({"source": "sim", "preset": "group3", "rows": 3000},
              lambda: load_sim("group3", 3000)),
             ({"source": "mmoe_synthetic", "rows": 1000, "dim": 4},
              lambda: load_mmoe_synthetic(rows=1000, dim=4))]
    for cfg, loader in cases:
        off, raw = load_splits({**cfg, "standardize_labels": False}), loader()
        assert off.schema == raw.schema
        assert all((t.center, t.scale) == (0.0, 1.0) for t in off.schema.tasks)
        for (_, a), (_, b) in zip(off.items(), raw.items(), strict=True):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.dense, b.dense)
        metrics = {t: {"mse": 0.1, "mae": 0.2, "count": 3} for t in off.schema.task_names
                   if t != "view"}
        assert in_original_units(metrics, off.schema) is metrics  # nothing converted
        on = load_splits(cfg)
        for j, t in enumerate(on.schema.tasks):
            if t.kind == "binary":
                assert torch.equal(on.train.labels[:, j], raw.train.labels[:, j])
            else:  # standardised: mean 0, population std 1 on the training split
                y = on.train.labels[:, j].double()
                assert abs(float(y.mean())) < 1e-5 and float(y.std(unbiased=False)) == \
                    pytest.approx(1.0, abs=1e-5)
                assert t.scale == pytest.approx(float(raw.train.labels[:, j].double().std(
                    unbiased=False)), rel=1e-9)
        # the loss-based selection's label variance stays in the original units
        assert regression_label_variance(on.train, on.schema) == pytest.approx(
            regression_label_variance(raw.train, raw.schema), rel=1e-5)


def test_streamed_shards_standardise_every_batch(tmp_path):
    from adatt.data.stream import write_sim_shards

    d = write_sim_shards(tmp_path, "group3", rows=3_000, shard_rows=1_000, valid_rows=300,
                         test_rows=300, row_group_rows=500)
    cfg = {"source": "stream", "schema": str(d / "schema.yaml"), "train": str(d / "train"),
           "valid": str(d / "valid.parquet"), "test": str(d / "test.parquet"),
           "fit_rows": 10_000, "shuffle_buffer": 700}
    raw, on = load_splits({**cfg, "standardize_labels": False}), load_splits(cfg)
    raw_batches = list(raw.train.stream(256, seed=3).epoch_batches(0))
    on_batches = list(on.train.stream(256, seed=3).epoch_batches(0))
    labels = torch.cat([b.labels for b in raw_batches])  # every training row
    stats = label_statistics(labels, raw.schema)["watch_time"]
    watch = on.schema.tasks[0]
    assert watch.name == "watch_time" and stats[0] == 3_000
    assert watch.center == pytest.approx(stats[1], rel=1e-6)
    assert watch.scale == pytest.approx(stats[2], rel=1e-6)
    scaler = LabelScaler(on.schema)
    for a, b in zip(raw_batches, on_batches, strict=True):
        assert torch.equal(b.labels, scaler.tensor(a.labels)) and torch.equal(a.dense, b.dense)
    assert torch.equal(on.valid.labels, scaler.tensor(raw.valid.labels))
    # a smaller fitting sample: the first ceil(fit_rows / shards) rows of every shard
    part = load_splits({**cfg, "fit_rows": 600})
    sample = torch.cat([torch.from_numpy(pq.read_table(p, columns=["watch_time"])[
        "watch_time"].to_numpy()[:200]) for p in sorted((d / "train").glob("*.parquet"))])
    assert part.schema.tasks[0].center == pytest.approx(float(sample.double().mean()), rel=1e-6)


def test_raw_labels_far_from_standard_warn(tmp_path):
    from adatt.experiments.task_groups import sim_overrides

    _files(tmp_path, center=11.0, slope=3.4)
    with pytest.warns(UserWarning, match=r"task 'y' is trained on raw labels \(mean 1\d"):
        load_splits(_files_cfg(tmp_path, standardize_labels=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_splits(_files_cfg(tmp_path))  # standardised: nothing to say
        # the published simulator studies pin the raw labels; watch_time is near standard
        assert "data.standardize_labels=false" in sim_overrides("group3", 100, "r", False, True)
        load_splits({"source": "sim", "preset": "group3", "rows": 3000,
                     "standardize_labels": False})


def test_ensemble_metrics_converted_per_copy():
    schema = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("y", "regression", center=3.0,
                                                                  scale=4.0)))
    copy = {"a": {"ne": 0.9, "count": 2}, "y": {"mse": 0.25, "mae": 0.5, "count": 2}}
    got = in_original_units([copy, copy], schema)
    assert got == [{"a": {"ne": 0.9, "count": 2}, "y": {"mse": 4.0, "mae": 2.0, "count": 2}}] * 2
    assert copy["y"]["mse"] == 0.25  # the input is not modified


def _train(tmp: Path, name: str, *extra: str) -> tuple[dict, Path]:
    from adatt.train.trainer import train

    threads = torch.get_num_threads()
    cfg = load_config(None, [
        *(f"data.{k}={v}" for k, v in _files_cfg(tmp).items()),
        "model.name=mmoe", "model.expert_sizes=[[8]]", "model.num_experts=2",
        "model.tower_sizes=[4]", "train.epochs=3", "train.batch_size=32",
        "train.optimizer.lr=1e-2", "train.selection.metric=mse", "runtime.progress=false",
        "runtime.threads=1",
        f"out_dir={tmp / 'runs'}", f"name={name}", *extra])
    try:
        res = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return res, tmp / "runs" / name


@pytest.mark.filterwarnings("ignore:regression task 'y' is trained on raw labels")
def test_reported_errors_predictions_and_exports_in_original_units(tmp_path):
    """A linear problem (y = 30 + 10 x + N(0, 1)) trained with and without
    standardisation: both report MSE / MAE in the labels' units, equal to the errors of
    `adatt predict`'s outputs; data.json holds the statistics; the export agrees."""
    from adatt.serve.export import export_model, load_exported
    from adatt.serve.predict import predict_file
    from adatt.train.runs import load_run, load_run_model

    _files(tmp_path, rows=(2000, 200, 200))
    y_test = np.array(_linear(200, 2)["y"])
    reported = {}
    for name, extra in (("scaled", ()), ("raw", ("data.standardize_labels=false",))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res, run = _train(tmp_path, name, *extra)
        assert any("raw labels" in str(w.message) for w in caught) == (name == "raw")
        predict_file(run, tmp_path / "test.csv", tmp_path / f"{name}.parquet", progress=False)
        pred = pq.read_table(tmp_path / f"{name}.parquet")["y_pred"].to_numpy()
        err = pred.astype(np.float64) - y_test
        assert res["test"]["y"]["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-4)
        assert res["test"]["y"]["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-4)
        reported[name] = res["test"]["y"]["mse"]
        saved = json.loads((run / "data.json").read_text())["schema"]["tasks"][1]
        _, model, schema, _ = load_run_model(run)
        _, _, splits = load_run(run)
        assert schema == splits.schema  # data.json round trip, equal to a fresh fit
        if name == "scaled":
            assert saved["center"] == schema.tasks[1].center and 29 < saved["center"] < 31
            assert saved["scale"] == schema.tasks[1].scale and 9 < saved["scale"] < 11
            export_model(model, schema, "torchscript", tmp_path / "m.pt")
            with torch.no_grad():
                out = load_exported(tmp_path / "m.pt")(splits.test.dense, splits.test.cat)
            assert np.abs(out[:, 1].numpy() - pred).max() <= 1e-4
        else:
            assert set(saved) == {"name", "kind"}  # unstandardised: saved as before
    # both fit, in the labels' units: below the label variance (100), above the noise
    # floor (variance 1; standardised units would read about 0.01)
    assert all(0.7 < v < 10 for v in reported.values()), reported


def test_a_config_saved_before_the_option_reads_it_as_false(tmp_path):
    """Runs saved before labels were standardised by default were trained on raw labels:
    `adatt eval` / `predict` of such a run must load them raw."""
    import yaml

    from adatt.config import load_saved_config

    cfg = load_config(None, ["data.source=mmoe_synthetic", "data.rows=1000"])
    assert cfg.data.standardize_labels is True
    saved = cfg.model_dump(mode="json")
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_config(tmp_path / "new.yaml").data.standardize_labels is True
    del saved["data"]["standardize_labels"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
    assert load_saved_config(tmp_path / "old.yaml").data.standardize_labels is False


def test_torchrec_evaluation_reports_original_units():
    """The TorchRec recipe scores through the same evaluation: errors in original units."""
    pytest.importorskip("torchrec")
    import dataclasses

    from adatt.integrations import torchrec as atr

    tasks = (TaskSpec("click"), TaskSpec("y", "regression", center=3.0, scale=2.0))
    schema = FeatureSchema(("d0", "d1"), ("user", "item"), (5, 7), tasks)
    raw = dataclasses.replace(schema, tasks=(TaskSpec("click"), TaskSpec("y", "regression")))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 2, generator=g),
                         torch.randint(0, 5, (40, 2), generator=g),
                         torch.stack([torch.randint(0, 2, (40,), generator=g).float(),
                                      torch.randn(40, generator=g)], 1))  # [N, T]
    torch.manual_seed(0)
    m = atr.TorchRecMultiTask("ple", 2, 2, atr.schema_to_tables(schema, 4),
                              expert_sizes=[6], tower_sizes=[3])
    got = atr.evaluate_sharded(m, data, schema, batch_size=16)
    want = atr.evaluate_sharded(m, data, raw, batch_size=16)
    assert got["y"]["mse"] == pytest.approx(4 * want["y"]["mse"], rel=1e-12)
    assert got["y"]["mae"] == pytest.approx(2 * want["y"]["mae"], rel=1e-12)
    assert got["click"] == want["click"]
