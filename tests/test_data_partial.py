"""Partial labels on the file path: masks, conditions, per-task weights (CSV, Parquet, shards)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from adatt.data.errors import DataError
from adatt.data.files import load_files, read_file_schema
from adatt.data.stream import load_stream
from adatt.data.tables import LabelSpec

# --------------------------------------------------------------------------- fully labelled

FULL_SCHEMA = """\
dense: [x0, x1]
categorical: [user, item]
labels: {click: binary, watch: regression}
weight: w
"""


def full_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    return pa.table({
        "x0": x[:, 0], "x1": (3 * x[:, 1] + 1).astype(np.float32),
        "user": [f"u{k}" for k in rng.integers(0, 30, n)],
        "item": rng.integers(0, 20, n),
        "click": (rng.random(n) < 0.3).astype(np.int64),
        "watch": x[:, 0] * 2.5 + rng.standard_normal(n),
        "w": rng.random(n) * 2,
    })


def full_data(d: Path) -> dict[str, object]:
    """The same fully-labelled data loaded four ways: CSV (carved splits), Parquet, streamed."""
    (d / "schema.yaml").write_text(FULL_SCHEMA)
    pacsv.write_csv(full_table(300, 0), d / "train.csv")
    pq.write_table(full_table(300, 0), d / "train.parquet")
    pq.write_table(full_table(80, 1), d / "valid.parquet")
    pacsv.write_csv(full_table(80, 2), d / "test.csv")
    (d / "shards").mkdir(exist_ok=True)
    for s in range(2):
        pq.write_table(full_table(150, 10 + s), d / "shards" / f"part-{s}.parquet",
                       row_group_size=64)
    out: dict[str, object] = {
        "csv": load_files(d / "schema.yaml", d / "train.csv"),
        "parquet": load_files(d / "schema.yaml", d / "train.parquet", d / "valid.parquet",
                              d / "test.csv"),
        "stream": load_stream(d / "schema.yaml", d / "shards", d / "valid.parquet",
                              d / "test.csv", shuffle_buffer=100),
    }
    return out


def digest(loaded: dict[str, object]) -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of every tensor of every split, and of the stream's batches."""
    out = {}
    for name, s in loaded.items():
        h = hashlib.sha256()
        sets = [("valid", s.valid), ("test", s.test)]
        if name == "stream":
            batches = list(s.train.stream(batch_size=64, seed=3).epoch_batches(0))
            sets += [(f"b{i}", b) for i, b in enumerate(batches)]
        else:
            sets.append(("train", s.train))
        for _, ds in sets:
            for t in (ds.dense, ds.cat, ds.labels, ds.weight):
                h.update(str(None if t is None else (t.dtype, tuple(t.shape))).encode())
                if t is not None:
                    h.update(t.contiguous().numpy().tobytes())
        h.update(repr(s.schema.to_dict()).encode())
        if name == "stream":
            h.update(repr(s.train.label_variance()).encode())
        out[name] = h.hexdigest()[:16]
    return out


# digests of main before partial labels existed (the same tensors, bit for bit, and schema)
MAIN_DIGESTS = {"csv": "3bcf30c0fd01c3ca", "parquet": "c3034f4e46a195cd",
                "stream": "4d5547ee61dfbdba"}


def test_fully_labelled_files_give_the_tensors_they_gave_before(tmp_path):
    loaded = full_data(tmp_path)
    assert digest(loaded) == MAIN_DIGESTS
    for s in loaded.values():
        assert not s.schema.partial and s.valid.weight.dim() == 1


# --------------------------------------------------------------------------- partial labels

PARTIAL_SCHEMA = """\
dense: [age, price]
categorical: [user]
labels:
  click: binary               # shorthand: kind only, missing values are an error
  buy: {kind: binary, missing: mask, condition: click}
  rating: {kind: regression, missing: mask, weight: rating_weight}
weight: sample_weight
"""
# row: click, buy, rating, rating_weight, sample_weight (""= empty)
ROWS = [
    ("1", "1", "4.0", "2", "1"),
    ("0", "", "", "", "1"),
    ("1", "0", "", "", "0.5"),
    ("0", "1", "3.0", "1", "1"),  # buy=1 but click=0: not the task's row -> NaN
    ("1", "", "2.5", "3", "2"),
    ("1", "1", "5", "1", "1"),
]
NAN = float("nan")
WANT_LABELS = [[1, 1, 4.0], [0, NAN, NAN], [1, 0, NAN], [0, NAN, 3.0], [1, NAN, 2.5], [1, 1, 5]]
WANT_WEIGHT = [[1, 1, 2], [1, 1, 0], [0.5, 0.5, 0], [1, 1, 1], [2, 2, 6], [1, 1, 1]]


def partial_csv(rows=ROWS, header="click,buy,rating,rating_weight,sample_weight") -> str:
    lines = [f"age,price,user,{header}"]
    for i, r in enumerate(rows):
        lines.append(f"{20 + i},{1.5 * i},u{i % 3}," + ",".join(r))
    return "\n".join(lines) + "\n"


def as_parquet(csv: Path, out: Path) -> Path:
    """The CSV as Parquet with typed columns: empty labels / weights become nulls."""
    t = pacsv.read_csv(csv)  # numeric columns with nulls where empty
    pq.write_table(t, out)
    return out


@pytest.fixture
def partial(tmp_path: Path) -> Path:
    (tmp_path / "schema.yaml").write_text(PARTIAL_SCHEMA)
    (tmp_path / "train.csv").write_text(partial_csv())
    return tmp_path


def same_nan(a: torch.Tensor, b) -> bool:
    b = torch.as_tensor(b, dtype=a.dtype)
    return a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        torch.nan_to_num(a), torch.nan_to_num(b))


def test_schema_long_form(partial: Path):
    fs = read_file_schema(partial / "schema.yaml")
    assert [lab.column for lab in fs.labels] == ["click", "buy", "rating"]
    assert fs.labels[1] == LabelSpec("buy", "binary", "mask", "click")
    assert fs.labels[2].weight == "rating_weight" and fs.task_weights == ("rating_weight",)
    assert fs.partial and fs.columns[-2:] == ["sample_weight", "rating_weight"]
    assert [t.partial for t in fs.tasks] == [False, True, True]


def test_csv_masks_conditions_and_task_weights(partial: Path):
    s = load_files(partial / "schema.yaml", partial / "train.csv", partial / "train.csv",
                   partial / "train.csv")
    for _, ds in s.items():
        assert same_nan(ds.labels, WANT_LABELS)
        assert ds.weight.shape == (6, 3) and ds.weight.dtype == torch.float32
        assert torch.equal(ds.weight, torch.tensor(WANT_WEIGHT, dtype=torch.float32))
    assert not torch.isnan(s.train.labels[:, 0]).any()  # a fully-labelled task never NaN
    tasks = s.schema.to_dict()["tasks"]
    assert tasks[1] == {"name": "buy", "kind": "binary", "missing": "mask", "condition": "click"}
    assert tasks[2]["weight"] == "rating_weight" and tasks[0] == {"name": "click",
                                                                    "kind": "binary"}


def test_parquet_nulls_and_nan_read_as_csv(partial: Path):
    pq_path = as_parquet(partial / "train.csv", partial / "train.parquet")
    t = pq.read_table(pq_path)
    assert t["buy"].null_count == 2 and pa.types.is_integer(t["buy"].type)
    a = load_files(partial / "schema.yaml", partial / "train.csv", partial / "train.csv",
                   partial / "train.csv")
    b = load_files(partial / "schema.yaml", pq_path, pq_path, pq_path)
    # NaN instead of null in a float column reads the same
    f = t.set_column(t.column_names.index("rating"), "rating",
                     pa.array(t["rating"].to_numpy(zero_copy_only=False)))
    pq.write_table(f, partial / "nan.parquet")
    c = load_files(partial / "schema.yaml", partial / "nan.parquet", pq_path, pq_path)
    for x in (b, c):
        assert same_nan(x.train.labels, a.train.labels.tolist())
        assert torch.equal(x.train.weight, a.train.weight)
        assert torch.equal(x.train.dense, a.train.dense) and torch.equal(x.train.cat, a.train.cat)


def test_carved_splits_keep_per_task_weights(partial: Path):
    s = load_files(partial / "schema.yaml", partial / "train.csv", valid_fraction=0.34,
                   test_fraction=0.17)
    assert s.sizes() == {"train": 3, "valid": 2, "test": 1}
    rows = torch.cat([s.train.weight, s.valid.weight, s.test.weight])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, WANT_WEIGHT))


def test_only_task_weights_no_row_weight(partial: Path):
    (partial / "s2.yaml").write_text(PARTIAL_SCHEMA.replace("weight: sample_weight\n", ""))
    s = load_files(partial / "s2.yaml", partial / "train.csv", partial / "train.csv",
                   partial / "train.csv")
    assert s.train.weight[:, 2].tolist() == [2, 0, 0, 1, 3, 1]
    assert s.train.weight[:, :2].eq(1).all()


def test_conditions_chain(tmp_path: Path):
    (tmp_path / "s.yaml").write_text(
        "dense: [x]\nlabels:\n  view: binary\n  click: {kind: binary, condition: view, "
        "missing: mask}\n  buy: {kind: binary, condition: click, missing: mask}\n")
    (tmp_path / "t.csv").write_text("x,view,click,buy\n1,1,1,1\n2,1,0,1\n3,0,1,1\n4,1,,1\n")
    s = load_files(tmp_path / "s.yaml", tmp_path / "t.csv", tmp_path / "t.csv", tmp_path / "t.csv")
    assert same_nan(s.train.labels, [[1, 1, 1], [1, 0, NAN], [0, NAN, NAN], [1, NAN, NAN]])
    assert s.train.weight is None


def test_condition_without_mask_needs_a_label_where_it_holds(tmp_path: Path):
    (tmp_path / "s.yaml").write_text(
        "dense: [x]\nlabels: {click: binary, buy: {kind: binary, condition: click}}\n")
    (tmp_path / "ok.csv").write_text("x,click,buy\n1,0,\n2,1,0\n3,0,1\n")
    s = load_files(tmp_path / "s.yaml", tmp_path / "ok.csv", tmp_path / "ok.csv",
                   tmp_path / "ok.csv")
    assert same_nan(s.train.labels, [[0, NAN], [1, 0], [0, NAN]])
    assert s.schema.tasks[1].partial and s.schema.tasks[1].missing == "error"
    (tmp_path / "bad.csv").write_text("x,click,buy\n1,0,\n2,1,\n")
    with pytest.raises(DataError, match=r"bad\.csv: column 'buy', row 2: missing value \(its "
                                        r"condition 'click' is 1 here"):
        load_files(tmp_path / "s.yaml", tmp_path / "bad.csv", tmp_path / "ok.csv",
                   tmp_path / "ok.csv")


# --------------------------------------------------------------------------- streamed shards


def partial_table(n: int, seed: int) -> pa.Table:
    """Typed Parquet columns: null where unlabelled, NaN in a float label column too."""
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < 0.4).astype(np.int64)
    buy = pa.array((rng.random(n) < 0.5).astype(np.int64), mask=rng.random(n) < 0.2)
    rating = rng.standard_normal(n)
    rating[rng.random(n) < 0.3] = np.nan
    rw = np.where(np.isnan(rating), np.nan, rng.random(n) + 0.5)
    return pa.table({
        "age": rng.standard_normal(n), "price": rng.random(n),
        "user": [f"u{k}" for k in rng.integers(0, 9, n)],
        "click": click, "buy": buy, "rating": rating,
        "rating_weight": pa.array(rw, from_pandas=True),  # NaN -> null
        "sample_weight": rng.random(n) + 0.1,
    })


@pytest.fixture
def partial_shards(tmp_path: Path) -> Path:
    (tmp_path / "schema.yaml").write_text(PARTIAL_SCHEMA)
    (tmp_path / "train").mkdir()
    for s in range(3):
        pq.write_table(partial_table(200, s), tmp_path / "train" / f"part-{s}.parquet",
                       row_group_size=64)
    pq.write_table(partial_table(100, 10), tmp_path / "valid.parquet")
    pq.write_table(partial_table(100, 11), tmp_path / "test.parquet")
    return tmp_path


def test_stream_batches_hold_nan_labels_and_task_weights(partial_shards: Path):
    d = partial_shards
    s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet",
                    shuffle_buffer=150)
    assert s.schema.partial and s.valid.weight.shape == (100, 3)
    files = load_files(d / "schema.yaml", d / "train" / "part-0.parquet", d / "valid.parquet",
                       d / "test.parquet")
    assert same_nan(s.valid.labels, files.valid.labels.tolist())
    assert torch.equal(s.valid.weight, files.valid.weight)
    stream = s.train.stream(batch_size=64, seed=1)
    batches = list(stream.epoch_batches(0))
    labels = torch.cat([b.labels for b in batches])
    weight = torch.cat([b.weight for b in batches])
    assert labels.shape == weight.shape == (600, 3)
    assert not torch.isnan(labels[:, 0]).any() and torch.isnan(labels[:, 1:]).any()
    # the shuffle keeps each row's labels and weights together: same multiset of rows
    want = []
    for p in sorted((d / "train").iterdir()):
        _, _, y, w = s.train.encode_rows(pq.read_table(p), p)
        want.append(np.concatenate([np.nan_to_num(y, nan=-7), w], axis=1))
    got = np.concatenate([np.nan_to_num(labels.numpy(), nan=-7), weight.numpy()], axis=1)
    order = lambda x: x[np.lexsort(x.T[::-1])]  # noqa: E731
    assert np.array_equal(order(got), order(np.concatenate(want)))
    # conditional task: NaN wherever click is not 1
    assert torch.isnan(labels[labels[:, 0] == 0, 1]).all()
    # a resumed stream yields the same [B, T] weights
    again = s.train.stream(batch_size=64, seed=1)
    it = again.epoch_batches(0)
    for _ in range(4):
        next(it)
    state = again.state_dict()
    fresh = s.train.stream(batch_size=64, seed=1)
    fresh.load_state_dict(state)
    rest = list(fresh.epoch_batches(0, 4))
    assert all(same_nan(a.labels, b.labels.tolist()) and torch.equal(a.weight, b.weight)
               for a, b in zip(rest, batches[4:], strict=True))
    # label variance of a partial regression task: over its labelled rows
    assert np.isfinite(s.train.label_variance()["rating"])


def test_write_shards_of_a_partial_simulator_task(tmp_path: Path, monkeypatch):
    """A simulator task with a condition: NaN labels in the shards, the long form in the
    schema, read back by the stream (the partial preset itself is the simulator's)."""
    import dataclasses

    import yaml

    import adatt.data.simulator as sim_mod

    class Conditional(sim_mod.Simulator):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            view, like = self.schema.tasks
            self.schema = dataclasses.replace(
                self.schema, tasks=(view, dataclasses.replace(like, condition=view.name)))

        def chunks(self, *a, **kw):
            for b in super().chunks(*a, **kw):
                b.labels[b.labels[:, 0] != 1, 1] = float("nan")
                yield b

    monkeypatch.setattr(sim_mod, "Simulator", Conditional)
    from adatt.data.shard_writer import write_sim_shards

    d = write_sim_shards(tmp_path / "out", "group1", rows=1_000, shard_rows=500,
                         valid_rows=100, test_rows=100, row_group_rows=250)
    doc = yaml.safe_load((d / "schema.yaml").read_text())
    assert doc["labels"] == {"view": "binary", "like": {"kind": "binary", "condition": "view"}}
    like = pq.read_table(d / "train" / "part-00000.parquet")["like"].to_numpy()
    assert np.isnan(like).any()
    s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet")
    assert s.schema.tasks[1].condition == "view"
    y = torch.cat([b.labels for b in s.train.stream(batch_size=256).epoch_batches(0)])
    assert torch.equal(torch.isnan(y[:, 1]), y[:, 0] != 1)


# --------------------------------------------------------------------------- errors

LONG = "dense: [x]\nlabels:\n  click: binary\n  rating: regression\n"


@pytest.mark.parametrize(("buy", "message"), [
    ("{kind: binary, mising: mask}", "label 'buy': unknown key 'mising' (known keys: kind, "
                                     "missing, condition, weight)"),
    ("{kind: binary, missing: skip}", "label 'buy': 'missing' must be error or mask, got 'skip'"),
    ("{kind: binary, condition: clik}", "label 'buy': condition 'clik' is not a label "
                                        "(labels: click, rating, buy)"),
    ("{kind: binary, condition: rating}", "label 'buy': condition 'rating' is a regression "
                                          "label; a condition must be a binary label"),
    ("{kind: binary, condition: buy}", "label 'buy': condition 'buy' is the label itself"),
    ("{missing: mask}", "label 'buy': the long form needs 'kind'"),
    ("{kind: probability}", "label 'buy' has kind 'probability'"),
    ("{kind: binary, weight: [a, b]}", "label 'buy': 'weight' must be a column name"),
    ("{kind: binary, condition: 1.5}", "label 'buy': 'condition' must be a column name"),
    ("[binary]", "label 'buy' has kind ['binary']"),
    ("{kind: binary, weight: x}", "column 'x' is given more than one role"),
    ("{kind: binary, weight: click}", "column 'click' is given more than one role"),
])
def test_long_form_errors(tmp_path: Path, buy: str, message: str):
    (tmp_path / "s.yaml").write_text(LONG + f"  buy: {buy}\n")
    with pytest.raises(DataError) as e:
        read_file_schema(tmp_path / "s.yaml")
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 's.yaml'}: ") and message in text and "\n" not in text


def test_condition_cycle(tmp_path: Path):
    (tmp_path / "s.yaml").write_text(
        "dense: [x]\nlabels:\n  a: {kind: binary, condition: b}\n  b: {kind: binary, "
        "condition: a}\n")
    with pytest.raises(DataError, match=r"s\.yaml: label 'a': conditions form a cycle "
                                        r"\(a -> b -> a\)"):
        read_file_schema(tmp_path / "s.yaml")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("rating_weight", "rw"), r"train\.(csv|parquet): column 'rating_weight' "
     r"\(weight of label 'rating'\) is missing"),
    (lambda t: t.replace("3.0,1,1\n", "3.0,-1,1\n"), r"column 'rating_weight', row 4: weight "
     r"-1\.0 is not a finite number >= 0"),
    (lambda t: t.replace("3.0,1,1\n", "3.0,inf,1\n"), r"column 'rating_weight', row 4: weight "
     r"inf is not a finite number >= 0"),
    (lambda t: t.replace("3.0,1,1\n", "3.0,1,inf\n"), r"column 'sample_weight', row 4: weight "
     r"inf is not a finite number >= 0"),
    (lambda t: t.replace("2.5,3,2\n", "2.5,,2\n"), r"column 'rating_weight', row 5: missing "
     r"weight where label 'rating' has a value"),
    (lambda t: t.replace("1,1,4.0", "1,2,4.0"), r"column 'buy', row 1: binary label 2 is not "
     r"0 or 1"),
    (lambda t: t.replace("1,1,4.0", "1,1,inf"), r"column 'rating', row 1: label inf is not "
     r"finite"),
    (lambda t: t.replace(",u1,0,,", ",u1,,,"), r"column 'click', row 2: missing value"),
    (lambda t: t.replace("1,1,4.0", "1,yes,4.0"), r"column 'buy', row 1: 'yes' is not a number"),
])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_rows_are_one_line_errors(partial: Path, edit, message: str, fmt: str):
    path = partial / "train.csv"
    path.write_text(edit(partial_csv()))
    if fmt == "parquet":
        try:
            path = as_parquet(path, partial / "train.parquet")
        except pa.ArrowInvalid:
            pytest.skip("text in a numeric column: CSV only")
    with pytest.raises(DataError, match=message) as e:
        load_files(partial / "schema.yaml", path)
    assert "\n" not in str(e.value)


def test_bad_rows_in_shards_name_the_file_and_row(partial_shards: Path):
    d = partial_shards
    t = partial_table(200, 1)
    w = t["rating_weight"].to_numpy(zero_copy_only=False).copy()
    i = int(np.flatnonzero(~np.isnan(w))[120])  # past the fitting sample
    w[i] = -2.0
    t = t.set_column(t.column_names.index("rating_weight"), "rating_weight",
                     pa.array(w, from_pandas=True))
    pq.write_table(t, d / "train" / "part-1.parquet", row_group_size=64)
    s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet",
                    fit_rows=30)
    with pytest.raises(DataError, match=rf"part-1\.parquet: column 'rating_weight', row {i + 1}: "
                                        r"weight -2\.0 is not"):
        list(s.train.stream(batch_size=64).epoch_batches(0))


# --------------------------------------------------------------------------- datasets, info


def test_tensor_dataset_with_task_weights():
    from adatt.data.batch import TensorDataset

    y = torch.tensor([[1.0, NAN], [0.0, 1.0], [1.0, 0.0], [0.0, NAN]])
    w = torch.arange(8, dtype=torch.float32).view(4, 2)  # [N, T]
    ds = TensorDataset(torch.zeros(4, 1), torch.zeros(4, 0, dtype=torch.long), y, w)
    assert torch.equal(ds.subset(torch.tensor([3, 1])).weight, w[[3, 1]])
    got = torch.cat([b.weight for b in ds.batches(3, shuffle=True,
                                                   generator=torch.Generator().manual_seed(0))])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, w.tolist()))
    assert torch.equal(ds.to("cpu").weight, w) and torch.equal(ds.batch(slice(1, 3)).to("cpu")
                                                              .weight, w[1:3])
    with pytest.raises(ValueError, match=r"weight \[N, T\] has shape \(4, 3\)"):
        TensorDataset(torch.zeros(4, 1), torch.zeros(4, 0, dtype=torch.long), y, torch.ones(4, 3))


def test_describe_counts_labelled_rows_and_flags_empty_splits(partial: Path):
    from adatt.data.info import describe, labelled_counts

    (partial / "test.csv").write_text(partial_csv([ROWS[1], ROWS[3]]))  # buy, rating: none
    s = load_files(partial / "schema.yaml", partial / "train.csv", partial / "train.csv",
                   partial / "test.csv")
    assert labelled_counts(s) == {
        "click": {"train": 6, "valid": 6, "test": 2},
        "buy": {"train": 3, "valid": 3, "test": 0},
        "rating": {"train": 4, "valid": 4, "test": 1}}
    text = describe(s)
    assert "  buy     click       3 (50%)" in text and "0 (0%) NONE" in text
    assert "warning: no labelled row for 'buy' in test" in text
    assert "mean 3.62 sd 0.96 " in text  # rating over its 4 labelled rows
    full = describe(load_files(partial / "schema.yaml", partial / "train.csv"))
    assert "labelled rows" in full


def test_fully_labelled_describe_has_no_labelled_table(tmp_path: Path):
    from adatt.data.info import describe

    s = full_data(tmp_path)["csv"]
    assert "labelled rows" not in describe(s) and "weight: per-row loss weight" in describe(s)


# --------------------------------------------------------------------------- runs, predict


def test_run_saves_the_task_fields_and_predicts_without_labels(tmp_path: Path):
    """data.json keeps missing / condition / weight; predict needs no label or weight column.

    The labels are all present here and there is no per-task weight (the masked, weighted
    loss is the training side's): the run trains on a schema that declares a masked task;
    prediction reads only the feature columns."""
    import json

    from adatt.config import load_config
    from adatt.serve.predict import predict_file
    from adatt.train.trainer import load_run, train

    (tmp_path / "schema.yaml").write_text(
        "dense: [x0, x1]\ncategorical: [user]\nlabels:\n  click: binary\n"
        "  watch: {kind: regression, missing: mask}\n")
    t = full_table(200, 0)
    pacsv.write_csv(t, tmp_path / "train.csv")
    features = t.select(["x0", "x1", "user"])
    pacsv.write_csv(features, tmp_path / "features.csv")
    threads = torch.get_num_threads()
    cfg = load_config(None, [
        "data.source=files", f"data.schema={tmp_path / 'schema.yaml'}",
        f"data.train={tmp_path / 'train.csv'}", "model.name=mmoe", "model.expert_sizes=[[4]]",
        "model.tower_sizes=[3]", "train.epochs=1", "runtime.progress=false",
        "runtime.threads=1", "train.batch_size=64", f"out_dir={tmp_path / 'runs'}", "name=r"])
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "runs" / "r"
    meta = json.loads((run / "data.json").read_text())
    watch = meta["schema"]["tasks"][1]
    assert {k: watch[k] for k in ("name", "kind", "missing")} == {
        "name": "watch", "kind": "regression", "missing": "mask"}
    assert watch["scale"] > 0  # standardised on the training split's labelled rows
    _, _, splits = load_run(run)
    assert splits.schema.tasks[1].partial
    res = predict_file(run, tmp_path / "features.csv", tmp_path / "p.csv", progress=False)
    assert res.rows == 200 and res.columns == ["click_prob", "watch_pred"]
