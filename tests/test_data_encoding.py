"""One feature encoding: files, streams and predict encode the same input to the same tensors.

The same raw rows are loaded as user files (``load_files``), as streamed shards
(``load_stream``) and scored through the encoding saved in ``data.json`` (what
``adatt predict`` uses): the encoded ``dense`` / ``cat`` are equal bit for bit,
unknown categories included, with vocabularies and with hashing, with and
without dense scaling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from adatt.data.encoding import (
    EncodingFit,
    FeatureEncoding,
    RunningMoments,
    build_vocabulary,
    encode_categorical,
)
from adatt.data.errors import DataError
from adatt.data.files import load_files
from adatt.data.stream import load_stream
from adatt.data.tables import category_text

SCHEMA = """\
dense: [x0, x1]
categorical: [user, item, score]
labels: {click: binary, watch: regression}
"""


def table(n: int, seed: int, unseen: bool = False) -> pa.Table:
    """Strings (with nulls), integers and floats as categories; a constant-free dense part."""
    rng = np.random.default_rng(seed)
    users: list[str | None] = [f"u{k}" for k in rng.integers(0, 30, n)]
    users[::17] = [None] * len(users[::17])  # null: the category ""
    items = rng.integers(0, 25, n)
    scores = rng.integers(0, 4, n).astype(np.float64)  # 1.0 reads as "1"
    if unseen:
        users[1], users[2] = "stranger", "u-unknown"
        items[3] = 999
        scores[4] = 0.5
    return pa.table({
        "x0": rng.normal(40, 10, n).round(3),
        "x1": rng.integers(-5, 50, n),
        "user": pa.array(users, type=pa.string()),
        "item": items,
        "score": scores,
        "click": (rng.random(n) < 0.4).astype(np.int64),
        "watch": rng.normal(0, 1, n),
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("enc")
    (d / "schema.yaml").write_text(SCHEMA)
    (d / "schema_raw.yaml").write_text(SCHEMA + "standardize: false\n")
    (d / "train").mkdir()
    pq.write_table(table(900, 0), d / "train" / "part-00000.parquet", row_group_size=200)
    pq.write_table(table(120, 1, unseen=True), d / "test.parquet")
    return d


def as_served(info: dict) -> FeatureEncoding:
    """The encoding as ``adatt predict`` reads it back from ``data.json``."""
    return FeatureEncoding.from_dict(json.loads(json.dumps(info["encoding"])))


def served(enc: FeatureEncoding, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dense, cat = enc.encode(enc.read(path), path)
    return torch.from_numpy(dense), torch.from_numpy(cat)


def train_rows(batches) -> np.ndarray:
    rows = np.concatenate([np.concatenate([b.dense.numpy(), b.cat.numpy()], axis=1)
                           for b in batches])
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("schema", ["schema.yaml", "schema_raw.yaml"])
def test_files_stream_and_predict_encode_alike(data, schema):
    test = data / "test.parquet"
    files = load_files(data / schema, data / "train" / "part-00000.parquet", test, test)
    stream = load_stream(data / schema, data / "train", test, test, fit_rows=10_000)
    enc_files, enc_stream = as_served(files.info), as_served(stream.info)
    assert enc_files == enc_stream == stream.train.encoder
    assert files.schema == stream.schema
    for split in ("valid", "test"):
        a, b = getattr(files, split), getattr(stream, split)
        assert torch.equal(a.dense, b.dense) and torch.equal(a.cat, b.cat)
        assert torch.equal(a.labels, b.labels)
    dense, cat = served(enc_files, test)
    assert torch.equal(dense, files.test.dense) and torch.equal(cat, files.test.cat)
    # the streamed training rows are the files' training rows, encoded alike
    got = train_rows(stream.train.stream(128, seed=0, shuffle_buffer=300).epoch_batches(0))
    want = train_rows([files.train])
    assert np.array_equal(got, want)
    # unknown categories: index 0 everywhere, and only there
    raw = pq.read_table(test)
    assert cat[1, 0] == cat[2, 0] == 0 and cat[3, 1] == 0 and cat[4, 2] == 0
    vocab = dict(zip(enc_files.categorical, enc_files.vocabularies or (), strict=True))
    assert [v for v in vocab["user"] if v == ""] == [""]  # null is a category of its own
    assert vocab["score"] == ("0", "1", "2", "3")  # floats compared as text, 1.0 -> "1"
    text = category_text(raw["item"]).to_pylist()
    want_item = [vocab["item"].index(v) + 1 if v in vocab["item"] else 0 for v in text]
    assert cat[:, 1].tolist() == want_item


def test_scaling_is_the_training_mean_and_std(data):
    test = data / "test.parquet"
    files = load_files(data / "schema.yaml", data / "train" / "part-00000.parquet", test, test)
    train = pq.read_table(data / "train" / "part-00000.parquet")
    x = np.stack([train["x0"].to_numpy(), train["x1"].to_numpy().astype(np.float64)], axis=1)
    enc = as_served(files.info)
    assert enc.mean == tuple(x.mean(0)) and enc.std == tuple(x.std(0))
    raw = pq.read_table(test)
    t = np.stack([raw["x0"].to_numpy(), raw["x1"].to_numpy().astype(np.float64)], axis=1)
    want = ((t - x.mean(0)) / x.std(0)).astype(np.float32)
    assert np.array_equal(files.test.dense.numpy(), want)
    unscaled = load_files(data / "schema_raw.yaml", data / "train" / "part-00000.parquet",
                          test, test)
    assert as_served(unscaled.info).mean is None
    assert np.array_equal(unscaled.test.dense.numpy(), t.astype(np.float32))


def test_hashing_streams_and_predict_alike(data):
    test = data / "test.parquet"
    stream = load_stream(data / "schema.yaml", data / "train", test, test,
                         cat_encoding="hash", hash_buckets=7)
    enc = as_served(stream.info)
    assert enc.kind == "hash" and enc.hash_buckets == 7 and enc.cardinalities == (8, 8, 8)
    assert enc == stream.train.encoder
    dense, cat = served(enc, test)
    assert torch.equal(dense, stream.test.dense) and torch.equal(cat, stream.test.cat)
    assert int(cat.min()) >= 1 and int(cat.max()) <= 7  # no unknown slot with hashing
    # a value's index depends on its text only: the integer 3, the float 3.0 and "3" agree
    same = [enc.encode_field(j, col)[0] for j, col in
            enumerate([pa.array(["3"]), pa.array([3]), pa.array([3.0])])]
    assert same[0] == same[1] == same[2]
    # training batches hash as valid / test do
    rows = pq.read_table(data / "train" / "part-00000.parquet")
    users = set(zip(category_text(rows["user"]).to_pylist(),
                    enc.encode_field(0, rows["user"]).tolist(), strict=True))
    assert len({u for u, _ in users}) == len(users)  # one index per value
    batch = next(stream.train.stream(900, seed=0, shuffle_buffer=0).epoch_batches(0))
    assert sorted(set(batch.cat[:, 0].tolist())) == sorted({i for _, i in users})


def test_predict_checks_what_it_encodes(data):
    enc = as_served(load_files(data / "schema.yaml", data / "train" / "part-00000.parquet",
                               data / "test.parquet", data / "test.parquet").info)
    bad = pq.read_table(data / "test.parquet").set_column(0, "x0", pa.array([1e300] * 120))
    with pytest.raises(DataError, match=r"in.pq: column 'x0', row 1: inf is not finite after"):
        enc.encode(bad, "in.pq")
    encoded = FeatureEncoding(("x0",), ("c",), (3,))
    with pytest.raises(DataError, match=r"column 'c', row 2: 1.5 is not an integer"):
        encoded.encode(pa.table({"x0": [0.0, 1.0], "c": [1.0, 1.5]}), "in.pq")
    d, c = encoded.encode(pa.table({"x0": [0.5], "c": [2]}), "in.pq")
    assert d.tolist() == [[0.5]] and c.tolist() == [[2]]


def test_fitting_in_blocks_equals_fitting_at_once():
    rng = np.random.default_rng(3)
    x = rng.normal(5, 3, (1000, 3))
    cats = [pa.array([f"v{k}" for k in rng.integers(0, 50, 1000)])]
    whole = EncodingFit(("a", "b", "c"), ("f",), "vocab", standardize=True)
    whole.add(x, cats)
    blocks = EncodingFit(("a", "b", "c"), ("f",), "vocab", standardize=True)
    for s in range(0, 1000, 300):
        blocks.add(x[s : s + 300], [c.slice(s, 300) for c in cats])
    a, b = whole.encoding(), blocks.encoding()
    assert a.vocabularies == b.vocabularies and whole.rows == blocks.rows == 1000
    assert a.vocabularies == (tuple(build_vocabulary(cats[0])),)
    assert a.mean == tuple(x.mean(0)) and a.std == tuple(x.std(0))  # one block: numpy's own
    assert np.allclose(a.mean, b.mean, rtol=1e-12) and np.allclose(a.std, b.std, rtol=1e-12)
    m = RunningMoments(1)
    m.add(np.zeros((0, 1)))
    assert m.n == 0


def test_vocabulary_lookups_agree():
    vocab = build_vocabulary(["10", "-3", "7", "0"])
    ints = pa.array([7, 8, -3, 0, 10, 123456789012], type=pa.int64())
    enc = FeatureEncoding((), ("f",), (len(vocab) + 1,), "vocab", vocabularies=(tuple(vocab),))
    want = encode_categorical([str(v) for v in ints.to_pylist()], vocab)
    assert enc.encode_field(0, ints).tolist() == want.tolist() == [4, 0, 1, 2, 3, 0]
    assert enc.encode_field(0, ints.cast(pa.string())).tolist() == want.tolist()
    assert enc.encode_field(0, pa.array([7, None])).tolist() == [4, 0]  # null -> "" unknown
    # text lookups: a column longer than the vocabulary (pyarrow) and shorter (pandas) agree
    rng = np.random.default_rng(0)
    vocab = build_vocabulary([f"v{k}" for k in range(40)])
    for n in (5, 400):
        values = [None if k % 7 == 0 else f"v{k}" for k in rng.integers(0, 60, n)]
        want = [vocab.index(v) + 1 if v in vocab else 0 for v in values]
        assert encode_categorical(pa.array(values, type=pa.string()), vocab).tolist() == want


def test_encoding_round_trip_and_bad_forms():
    enc = FeatureEncoding(("x",), ("c",), (5,), "hash", mean=(1.0,), std=(2.0,), hash_buckets=4)
    assert FeatureEncoding.from_dict(enc.to_dict()) == enc and enc.raw
    assert not FeatureEncoding(("x",), ("c",), (5,)).raw
    with pytest.raises(ValueError, match="hash_buckets"):
        FeatureEncoding(("x",), ("c",), (9,), "hash", hash_buckets=4)
    with pytest.raises(ValueError, match="vocabulary size"):
        FeatureEncoding((), ("c",), (5,), "vocab", vocabularies=(("a",),))
    with pytest.raises(ValueError, match="mean and std"):
        FeatureEncoding(("x",), (), (), "vocab", mean=(1.0,), vocabularies=())
    with pytest.raises(KeyError):
        FeatureEncoding.from_dict({**enc.to_dict(), "kind": "onehot"})
