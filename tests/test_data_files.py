"""User files (CSV / Parquet + YAML schema): encoding, splitting, and one test per error."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from adatt.data.errors import DataError
from adatt.data.files import load_files, read_file_schema

SCHEMA = """\
dense: [age, price]
categorical: [user, item]
labels:
  click: binary
  watch: regression
weight: w
"""
TRAIN = """\
age,price,user,item,click,watch,w
20,1.5,alice,7,0,3.5,1
30,2.5,bob,8,1,0.0,2
40,3.5,alice,9,1,1.25,1
50,4.5,carol,7,0,2.0,0.5
"""
TEST = """\
age,price,user,item,click,watch,w
35,2.0,dave,7,1,1.0,1
25,3.0,bob,10,0,2.0,1
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    (tmp_path / "train.csv").write_text(TRAIN)
    (tmp_path / "test.csv").write_text(TEST)
    return tmp_path


def load(d: Path, train: str = "train.csv", test: str = "test.csv", schema: str = "schema.yaml"):
    return load_files(d / schema, d / train, d / test, d / test)


def test_csv_round_trip(files: Path):
    s = load(files)
    assert s.sizes() == {"train": 4, "valid": 2, "test": 2}
    assert s.schema.dense == ("age", "price") and s.schema.categorical == ("user", "item")
    assert s.schema.task_names == ["click", "watch"] and s.schema.task_kinds == [
        "binary",
        "regression",
    ]
    assert s.schema.cardinalities == (4, 4)  # 3 users / 3 items seen in training, plus unknown
    # vocabularies: sorted training values coded 1..V; unseen -> 0
    assert s.train.cat[:, 0].tolist() == [1, 2, 1, 3]  # alice, bob, alice, carol
    assert s.test.cat.tolist() == [[0, 1], [2, 0]]  # dave and item 10 are unknown
    # dense standardised with training statistics only
    assert s.train.dense.mean(0).abs().max() < 1e-6
    assert s.train.dense.std(0, unbiased=False).tolist() == pytest.approx([1.0, 1.0])
    assert s.test.dense[0, 0].item() == pytest.approx((35 - 35) / np.std([20, 30, 40, 50]))
    assert s.train.labels[:, 1].tolist() == [3.5, 0.0, 1.25, 2.0]
    assert s.train.weight.tolist() == [1, 2, 1, 0.5]
    assert s.info["unseen_categories"]["test"] == {"user": 1, "item": 1}


def test_parquet_and_integer_categories_match_csv(files: Path):
    import pandas as pd

    df = pd.read_csv(files / "train.csv")  # item is int64 here
    df.to_parquet(files / "train.parquet")
    pd.read_csv(files / "test.csv").to_parquet(files / "test.parquet")
    a, b = load(files), load(files, "train.parquet", "test.parquet")
    for (_, x), (_, y) in zip(a.items(), b.items(), strict=True):
        assert torch.equal(x.cat, y.cat) and torch.allclose(x.dense, y.dense)
        assert torch.equal(x.labels, y.labels)
    mixed = load_files(files / "schema.yaml", files / "train.parquet", test=files / "test.csv")
    assert torch.equal(mixed.test.cat, a.test.cat)  # 7 (Parquet int) == "7" (CSV text)


def test_compressed_csv_and_carved_splits(files: Path):
    rows = ["age,price,user,item,click,watch,w"] + [
        f"{i},{i / 10},u{i % 7},{i % 5},{i % 2},{i / 3},1" for i in range(100)
    ]
    (files / "big.csv.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    s = load_files(files / "schema.yaml", files / "big.csv.gz", valid_fraction=0.2, split_seed=3)
    assert s.sizes() == {"train": 70, "valid": 20, "test": 10}
    ages = torch.cat([s.train.labels[:, 1], s.valid.labels[:, 1], s.test.labels[:, 1]]) * 3
    assert sorted(ages.round().long().tolist()) == list(range(100))  # a partition
    again = load_files(
        files / "schema.yaml", files / "big.csv.gz", valid_fraction=0.2, split_seed=3
    )
    assert torch.equal(s.valid.labels, again.valid.labels)


def test_no_standardisation_and_no_weight(files: Path):
    (files / "plain.yaml").write_text(
        "dense: [age]\ncategorical: [user]\nlabels: {click: binary}\nstandardize: false\n"
    )
    s = load(files, schema="plain.yaml")
    assert s.train.dense[:, 0].tolist() == [20, 30, 40, 50]
    assert s.train.weight is None


# --------------------------------------------------------------------------- errors


def write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def test_missing_column(files: Path):
    write(files, "bad.csv", TRAIN.replace("price,", "cost,"))
    with pytest.raises(DataError, match=r"bad\.csv: column 'price' \(dense\) is missing"):
        load(files, "bad.csv")


@pytest.mark.parametrize("header,column,where", [
    ("age,price,user,item,click,watch,age", "age", "columns 1 and 7"),  # a used column twice
    ("age,price,user,item,click,watch,w,x,x", "x", "columns 8 and 9"),  # an unused one
])
def test_repeated_header_name_is_an_error_naming_file_and_column(files, header, column, where):
    lines = TRAIN.splitlines()
    extra = header.count(",") - lines[0].count(",")
    body = [ln + ",0" * extra for ln in lines[1:]]
    write(files, "dup.csv", "\n".join([header, *body]) + "\n")
    with pytest.raises(DataError, match=rf"dup\.csv: column '{column}' appears twice in the "
                                        rf"header \({where}\)"):
        load(files, "dup.csv")


def test_repeated_column_name_in_parquet(files: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table([pa.array([1.0, 2.0])] * 2 + [pa.array(["a", "b"])] * 2
                 + [pa.array([0, 1]), pa.array([1.0, 2.0]), pa.array([1.0, 1.0]),
                    pa.array([3.0, 4.0])],
                 names=["age", "price", "user", "item", "click", "watch", "w", "price"])
    pq.write_table(t, files / "dup.parquet")
    with pytest.raises(DataError, match=r"dup\.parquet: column 'price' appears twice"):
        load(files, "dup.parquet")


def test_list_typed_categorical_column(files: Path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    t = pacsv.read_csv(files / "train.csv")
    t = t.set_column(t.column_names.index("item"), "item",
                     pa.array([[1, 2]] * t.num_rows, type=pa.list_(pa.int64())))
    pq.write_table(t, files / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: column 'item' has type list<.*"
                                        r"cannot be read as categories"):
        load(files, "bad.parquet")


def test_non_numeric_dense_value(files: Path):
    write(files, "bad.csv", TRAIN.replace("40,3.5", "forty,3.5"))
    with pytest.raises(DataError, match=r"bad\.csv: column 'age', row 3: 'forty' is not a number"):
        load(files, "bad.csv")


def test_missing_dense_value(files: Path):
    write(files, "bad.csv", TRAIN.replace("30,2.5", "30,"))
    with pytest.raises(DataError, match=r"column 'price', row 2: missing value"):
        load(files, "bad.csv")


def test_nan_label(files: Path):
    write(files, "bad.csv", TRAIN.replace("carol,7,0,", "carol,7,nan,"))
    with pytest.raises(DataError, match=r"column 'click', row 4: missing value \(NaN\)"):
        load(files, "bad.csv")


def test_binary_label_out_of_range(files: Path):
    write(files, "bad.csv", TRAIN.replace("bob,8,1,", "bob,8,2,"))
    with pytest.raises(DataError, match=r"column 'click', row 2: binary label 2 is not 0 or 1"):
        load(files, "bad.csv")


def test_regression_label_not_finite(files: Path):
    write(files, "bad.csv", TRAIN.replace("0,3.5,1", "0,inf,1"))
    with pytest.raises(DataError, match=r"column 'watch', row 1: label inf is not finite"):
        load(files, "bad.csv")


def test_negative_weight(files: Path):
    write(files, "bad.csv", TRAIN.replace("2.0,0.5", "2.0,-1"))
    with pytest.raises(DataError, match=r"column 'w', row 4: weight -1.0 is not a finite number"):
        load(files, "bad.csv")


def test_error_in_the_test_file_names_it(files: Path):
    write(files, "test.csv", TEST.replace("25,3.0", "25,abc"))
    with pytest.raises(DataError, match=r"test\.csv: column 'price', row 2: 'abc'"):
        load(files)


def test_empty_file_and_header_only(files: Path):
    write(files, "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        load(files, "empty.csv")
    write(files, "header.csv", TRAIN.splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"header\.csv: file has no rows"):
        load(files, "header.csv")


def test_wrong_number_of_fields(files: Path):
    write(files, "bad.csv", TRAIN.replace("30,2.5,bob,8,1,0.0,2", "30,2.5,bob,8,1,0.0"))
    with pytest.raises(DataError, match=r"bad\.csv: line 3 \(row 2\) has 6 fields"):
        load(files, "bad.csv")


def test_unreadable_files(files: Path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load(files, "nope.csv")
    (files / "junk.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read as Parquet"):
        load(files, "junk.parquet")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dense: [age]\nlabels: {click: binary}\nlabel_smoothing: 0.1\n", "unknown key 'label_sm"),
        ("dense: [age]\nlabels: {click: probability}\n", "label 'click' has kind 'probability'"),
        ("dense: [age]\n", "'labels' must map"),
        ("dense: age\nlabels: {click: binary}\n", "'dense' must be a list"),
        ("labels: {click: binary}\n", "no feature columns"),
        ("dense: [age, click]\nlabels: {click: binary}\n", "'click' is given more than one role"),
        ("dense: [age\n", "not valid YAML"),
        ("- age\n", "must be a mapping"),
        ("dense: [age]\nlabels: {click: binary}\nstandardize: maybe\n", "'standardize' must be"),
    ],
)
def test_schema_errors(files: Path, text: str, message: str):
    write(files, "s.yaml", text)
    with pytest.raises(DataError, match=message) as e:
        read_file_schema(files / "s.yaml")
    assert "s.yaml" in str(e.value) and "\n" not in str(e.value)
