"""Batch scoring (``adatt predict``): predictions equal the eager model; one test per error.

Uses the session's tiny sim run from test_export.py (encoded input columns) and
two tiny runs on user files (raw columns: the training encoding is reproduced).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from adatt.cli import main
from adatt.config import load_config
from adatt.data.errors import DataError
from adatt.serve.export import ServeError, export_model, load_exported
from adatt.serve.predict import Predictor, dataset_table, encoding_for_run, predict_file
from adatt.train.trainer import load_run, train
from tests.test_export import eager, loaded, sim_run

TOL = 1e-6
TASKS = ["watch_time_pred", "view_prob", "finish_prob", "dislike_prob", "follow_prob"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """(run dir, config, model, splits, predictor) of the session's sim run."""
    cfg, model, splits = loaded(tmp_path_factory)
    predictor = Predictor(model, splits.schema, encoding_for_run(cfg, splits), batch_size=37)
    return sim_run(tmp_path_factory), cfg, model, splits, predictor


def read_preds(path: Path, columns: list[str]) -> np.ndarray:
    t = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    return np.stack([t[c].to_numpy() for c in columns], axis=1)  # [N, T]


def test_sim_parquet_matches_eager_with_id_column(sim, tmp_path, capsys):
    run, _, model, splits, _ = sim
    table = dataset_table(splits.test, splits.schema)
    table = table.append_column("rid", pa.array([f"r{i:03d}" for i in range(table.num_rows)]))
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "preds.parquet"
    rc = main(["predict", "--run", str(run), "--input", str(tmp_path / "in.parquet"),
               "--output", str(out), "--batch-size", "64", "--id-column", "rid", "--no-progress"])
    assert rc == 0 and "300 rows" in capsys.readouterr().out
    got = pq.read_table(out)
    assert got.column_names == ["rid", *TASKS]
    assert got["rid"].to_pylist() == table["rid"].to_pylist()
    want = eager(model, splits.schema, splits.test.dense, splits.test.cat).numpy()
    assert np.abs(read_preds(out, TASKS) - want).max() <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "preds.parquet"]


def test_sim_csv_in_csv_out(sim, tmp_path):
    run, _, model, splits, predictor = sim
    pacsv.write_csv(dataset_table(splits.test, splits.schema), tmp_path / "in.csv")
    res = predict_file(run, tmp_path / "in.csv", tmp_path / "p.csv", progress=False,
                       predictor=predictor)
    assert res.rows == len(splits.test) and res.columns == TASKS
    want = eager(model, splits.schema, splits.test.dense, splits.test.cat).numpy()
    assert np.abs(read_preds(tmp_path / "p.csv", TASKS) - want).max() <= 1e-5  # decimal text


def test_exported_model_agrees_with_predict(sim, tmp_path):
    """The exported model and `predict` give the same outputs on the same file."""
    run, _, model, splits, predictor = sim
    pq.write_table(dataset_table(splits.test, splits.schema), tmp_path / "in.parquet")
    predict_file(run, tmp_path / "in.parquet", tmp_path / "p.parquet", progress=False,
                 predictor=predictor)
    export_model(model, splits.schema, "torchscript", tmp_path / "m.pt")
    with torch.no_grad():
        exported = load_exported(tmp_path / "m.pt")(splits.test.dense, splits.test.cat).numpy()
    assert np.abs(read_preds(tmp_path / "p.parquet", TASKS) - exported).max() <= 1e-5


# --------------------------------------------------------------------------- user files

SCHEMA = """\
dense: [age, price]
categorical: [user, item]
labels:
  click: binary
  watch: regression
"""


def _raw_frame(n: int, seed: int, unseen: bool = False) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in rng.integers(0, 12, n)]
    items = rng.integers(0, 9, n).tolist()
    if unseen:  # values never seen in training, and a null user
        users[0], items[1], users[2] = "stranger", 99, None
    age = rng.normal(40, 10, n).round(2)
    price = rng.gamma(2.0, 3.0, n).round(3)
    click = (rng.random(n) < 0.3).astype(int)
    watch = rng.normal(2, 1, n).round(3)
    return {"age": age.tolist(), "price": price.tolist(), "user": users, "item": items,
            "click": click.tolist(), "watch": watch.tolist()}


def _train_files_run(tmp: Path, name: str, extra: list[str]) -> Path:
    threads = torch.get_num_threads()
    cfg = load_config(None, [
        "data.source=files", f"data.schema={tmp / 'schema.yaml'}",
        f"data.train={tmp / 'train.csv'}",
        "model.name=adatt", "model.embedding_dim=2", "model.expert_sizes=[6]",
        "model.tower_sizes=[3]", "model.shared_experts=1", "train.epochs=1",
        "runtime.progress=false", "runtime.threads=1", "train.batch_size=64",
        f"out_dir={tmp / 'runs'}", f"name={name}", *extra])
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return tmp / "runs" / name


@pytest.fixture(scope="module")
def files_runs(tmp_path_factory):
    """Two runs on user files: explicit valid/test files; and valid/test cut from train."""
    tmp = tmp_path_factory.mktemp("files")
    (tmp / "schema.yaml").write_text(SCHEMA)
    pacsv.write_csv(pa.table(_raw_frame(300, 0)), tmp / "train.csv")
    pacsv.write_csv(pa.table(_raw_frame(50, 1)), tmp / "valid.csv")
    pq.write_table(pa.table(_raw_frame(40, 2, unseen=True)), tmp / "test.parquet")
    given = _train_files_run(tmp, "given", [f"data.valid={tmp / 'valid.csv'}",
                                            f"data.test={tmp / 'test.parquet'}"])
    (tmp / "schema_raw.yaml").write_text(SCHEMA + "standardize: false\n")
    carved = _train_files_run(tmp, "carved", [f"data.schema={tmp / 'schema_raw.yaml'}",
                                              "data.split_seed=3"])
    return tmp, given, carved


def test_files_run_reproduces_training_encoding(files_runs, tmp_path):
    tmp, run, _ = files_runs
    _, model, splits = load_run(run)
    out = tmp_path / "p.parquet"
    res = predict_file(run, tmp / "test.parquet", out, batch_size=16, id_column="user",
                       progress=False)
    assert res.columns == ["user", "click_prob", "watch_pred"]
    got = pq.read_table(out)
    users = got["user"].to_pylist()
    assert users[0] == "stranger" and users[2] is None  # passed through as read
    want = eager(model, splits.schema, splits.test.dense, splits.test.cat).numpy()
    assert np.abs(read_preds(out, ["click_prob", "watch_pred"]) - want).max() <= TOL
    assert splits.test.cat[0, 0] == 0 and splits.test.cat[1, 1] == 0  # unseen -> index 0


def test_files_run_with_carved_splits(files_runs, tmp_path):
    tmp, _, run = files_runs
    _, model, splits = load_run(run)
    out = tmp_path / "p.parquet"
    predict_file(run, tmp / "train.csv", out, progress=False)
    preds = read_preds(out, ["click_prob", "watch_pred"])  # every row of the training file
    perm = np.random.default_rng(3).permutation(300)  # load_files: valid, test, then train rows
    for rows, data in ((perm[30:60], splits.test), (perm[60:], splits.train)):
        want = eager(model, splits.schema, data.dense, data.cat).numpy()
        assert np.abs(preds[np.sort(rows)] - want).max() <= TOL


def test_files_run_export_writes_encoding(files_runs, tmp_path, capsys):
    tmp, run, _ = files_runs
    out = tmp_path / "m.pt"
    assert main(["export", "--run", str(run), "--format", "torchscript",
                 "--output", str(out)]) == 0
    pre = json.loads((tmp_path / "m.pt.preprocess.json").read_text())
    assert pre["kind"] == "files" and pre["dense"] == ["age", "price"]
    assert pre["vocabularies"]["user"] == sorted(f"u{i}" for i in range(12))
    assert pre["vocabularies"]["item"] == [str(i) for i in range(9)]
    side = json.loads((tmp_path / "m.pt.json").read_text())
    assert side["encoding"] == {**side["encoding"], "kind": "files", "file": "m.pt.preprocess.json"}


def test_files_run_saves_its_encoding_equal_to_the_refitted_one(files_runs):
    from adatt.serve.predict import encoding_from_meta
    from adatt.train.trainer import load_run_model

    for run in files_runs[1:]:
        cfg, _, splits = load_run(run)
        _, _, schema, meta = load_run_model(run)
        assert schema == splits.schema and meta["name"] == splits.name
        assert encoding_from_meta(cfg, schema, meta) == encoding_for_run(cfg, splits)


def test_files_run_serves_without_its_training_data(files_runs, tmp_path):
    """Predict and export read the run's data.json: the training files may be gone."""
    import shutil

    tmp, run, _ = files_runs
    _, model, splits = load_run(run)
    want = eager(model, splits.schema, splits.test.dense, splits.test.cat).numpy()
    moved = tmp_path / "moved"
    shutil.copytree(tmp, moved, ignore=shutil.ignore_patterns("runs"))
    shutil.copytree(run, tmp_path / "run")
    for f in ("train.csv", "valid.csv", "test.parquet"):
        (tmp / f).rename(tmp_path / f)  # the run's configured data files disappear
    try:
        predict_file(tmp_path / "run", moved / "test.parquet", tmp_path / "p.parquet",
                     progress=False)
        assert main(["export", "--run", str(tmp_path / "run"), "--format", "torchscript",
                     "--output", str(tmp_path / "m.pt")]) == 0
    finally:
        for f in ("train.csv", "valid.csv", "test.parquet"):
            (tmp_path / f).rename(tmp / f)
    assert np.abs(read_preds(tmp_path / "p.parquet", ["click_prob", "watch_pred"])
                  - want).max() <= TOL
    assert (tmp_path / "m.pt.preprocess.json").is_file()


def test_files_run_raw_text_in_dense_column(files_runs, tmp_path):
    tmp, run, _ = files_runs
    lines = (tmp / "train.csv").read_text().splitlines()
    cells = lines[4].split(",")
    cells[0] = "abc"
    lines[4] = ",".join(cells)  # data row 4 (line 5)
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.csv: column 'age', row 4: 'abc' is not a number"):
        predict_file(run, tmp_path / "bad.csv", tmp_path / "p.parquet", progress=False)
    assert not (tmp_path / "p.parquet").exists()


def test_files_run_categorical_of_unreadable_type(files_runs, tmp_path):
    tmp, run, _ = files_runs
    t = pq.read_table(tmp / "test.parquet")
    t = t.set_column(t.column_names.index("item"), "item",
                     pa.array([[1, 2]] * t.num_rows, type=pa.list_(pa.int64())))
    pq.write_table(t, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"column 'item' has type list<.*cannot be read as cat"):
        predict_file(run, tmp_path / "bad.parquet", tmp_path / "p.parquet", progress=False)


# --------------------------------------------------------------------------- errors


def _bad_table(splits, column: str, row: int, value, type_=None) -> pa.Table:
    t = dataset_table(splits.test, splits.schema)
    vals = t[column].to_pylist()
    if type_ == pa.string():
        vals = [str(v) for v in vals]
    vals[row - 1] = value
    return t.set_column(t.column_names.index(column), column, pa.array(vals, type=type_))


@pytest.mark.parametrize(
    ("column", "row", "value", "type_", "message"),
    [
        ("noise", 3, float("nan"), None, r"column 'noise', row 3: missing value \(NaN\)"),
        ("noise", 5, None, pa.float32(), r"column 'noise', row 5: missing value"),
        ("noise", 2, float("inf"), None, r"column 'noise', row 2: inf is not finite"),
        ("noise", 4, 1e39, pa.float64(), r"column 'noise', row 4: inf is not finite after"),
        ("user_id", 7, 2.5, pa.float64(), r"column 'user_id', row 7: 2.5 is not an integer"),
        ("user_id", 6, 99999, None, r"column 'user_id', row 6: index 99999 is out of range"),
        ("item_id", 2, -1, None, r"column 'item_id', row 2: index -1 is out of range"),
        ("device", 8, None, pa.int64(), r"column 'device', row 8: missing value"),
        ("noise", 1, "x", pa.string(), r"column 'noise', row 1: 'x' is not a number"),
    ],
)
def test_bad_parquet_values(sim, tmp_path, column, row, value, type_, message):
    run, _, _, splits, predictor = sim
    pq.write_table(_bad_table(splits, column, row, value, type_), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet: " + message):
        predict_file(run, tmp_path / "bad.parquet", tmp_path / "p.parquet", progress=False,
                     predictor=predictor)
    assert not (tmp_path / "p.parquet").exists()


def test_column_of_wrong_type(sim, tmp_path):
    run, _, _, splits, predictor = sim
    t = dataset_table(splits.test, splits.schema)
    t = t.set_column(t.column_names.index("noise"), "noise",
                     pa.array([[0.5]] * t.num_rows, type=pa.list_(pa.float64())))
    pq.write_table(t, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"column 'noise' has type list<.*>, not numbers"):
        predict_file(run, tmp_path / "bad.parquet", tmp_path / "p.parquet", progress=False,
                     predictor=predictor)


def test_missing_column_cli_one_line_exit_2_output_untouched(sim, tmp_path, capsys):
    run, _, _, splits, _ = sim
    t = dataset_table(splits.test, splits.schema).drop_columns(["hour"])
    pq.write_table(t, tmp_path / "in.parquet")
    out = tmp_path / "p.parquet"
    out.write_bytes(b"earlier predictions")
    rc = main(["predict", "--run", str(run), "--input", str(tmp_path / "in.parquet"),
               "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'in.parquet'}: column 'hour' (categorical) is "
                          "missing")
    assert out.read_bytes() == b"earlier predictions"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "p.parquet"]


def test_csv_text_in_dense_column(sim, tmp_path):
    run, _, _, splits, predictor = sim
    t = _bad_table(splits, "user_activity", 9, "n/a", pa.string())
    pacsv.write_csv(t, tmp_path / "bad.csv")
    with pytest.raises(DataError, match=r"bad.csv: column 'user_activity', row 9: 'n/a' is not"):
        predict_file(run, tmp_path / "bad.csv", tmp_path / "p.csv", progress=False,
                     predictor=predictor)


def test_missing_id_column(sim, tmp_path):
    run, _, _, splits, predictor = sim
    pq.write_table(dataset_table(splits.test, splits.schema), tmp_path / "in.parquet")
    with pytest.raises(DataError, match=r"in.parquet: id column 'rid' is missing"):
        predict_file(run, tmp_path / "in.parquet", tmp_path / "p.parquet", id_column="rid",
                     progress=False, predictor=predictor)


def test_bad_output_name_and_batch_size(sim, tmp_path):
    run, _, _, _, predictor = sim
    with pytest.raises(ServeError, match=r"p.json: the output must end in \.parquet"):
        predict_file(run, tmp_path / "in.parquet", tmp_path / "p.json", predictor=predictor)
    with pytest.raises(ServeError, match="batch-size must be >= 1"):
        predict_file(run, tmp_path / "in.parquet", tmp_path / "p.csv", batch_size=0,
                     predictor=predictor)
