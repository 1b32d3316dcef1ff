"""Streaming from Parquet shards: writing, bounded reading, shuffling, exact resumption, errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import adatt.data.shards as shards_mod
from adatt.config import ConfigError, load_config
from adatt.data.config import DataConfig, load_splits
from adatt.data.errors import DataError
from adatt.data.files import read_file_schema
from adatt.data.stream import ParquetShards, load_stream, write_sim_shards

SCHEMA = """\
dense: [x0, x1, x2]
categorical: [user, item]
labels: {click: binary, watch: regression}
"""
SHARDS, SHARD_ROWS, GROUP_ROWS = 4, 750, 200


def table(n: int, seed: int) -> pa.Table:
    """A toy data set: strings and integers as categories, a binary and a regression label."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    item = rng.integers(0, 40, n)
    logit = x[:, 0] - x[:, 1] + (item % 3 == 0)
    return pa.table({
        "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2].astype(np.float32),
        "user": [f"u{k}" for k in rng.integers(0, 60, n)],
        "item": item,
        "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64),
        "watch": x[:, 2] + 0.1 * rng.standard_normal(n),
        "ignored": np.zeros(n),
    })


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy")
    (d / "schema.yaml").write_text(SCHEMA)
    (d / "train").mkdir()
    for s in range(SHARDS):
        pq.write_table(table(SHARD_ROWS, s), d / "train" / f"part-{s:05d}.parquet",
                       row_group_size=GROUP_ROWS)
    pq.write_table(table(400, 100), d / "valid.parquet")
    pq.write_table(table(400, 101), d / "test.parquet")
    return d


def load(d: Path, **kw):
    return load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet",
                       **kw)


def all_rows(data: ParquetShards) -> np.ndarray:
    """Every training row, encoded, as one float64 matrix (test only: reads everything)."""
    parts = []
    for s in data.shards:
        d, c, y, _ = data.encode_rows(pq.read_table(s.path), s.path)
        parts.append(np.concatenate([d, c, y], axis=1))
    return np.concatenate(parts)


def rows_of(batches) -> np.ndarray:
    return np.concatenate([np.concatenate([b.dense.numpy(), b.cat.numpy(), b.labels.numpy()],
                                          axis=1) for b in batches])


def sort_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.dense, y.dense) and torch.equal(x.cat, y.cat)
        and torch.equal(x.labels, y.labels) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- writing


def test_write_sim_shards(tmp_path):
    from adatt.data.simulator import Simulator

    out = write_sim_shards(tmp_path / "sim", "group1", rows=2_500, shard_rows=1_000,
                           valid_rows=200, test_rows=300, row_group_rows=400)
    shards = sorted((out / "train").glob("*.parquet"))
    assert [p.name for p in shards] == [f"part-0000{i}.parquet" for i in range(3)]
    assert sorted(p.name for p in (out / "train").iterdir() if p.suffix != ".parquet") == [
        "adatt-manifest.json"]
    md = [pq.ParquetFile(p).metadata for p in shards]
    assert [m.num_rows for m in md] == [1000, 1000, 500]
    assert [md[0].row_group(i).num_rows for i in range(md[0].num_row_groups)] == [400, 400, 200]
    fs = read_file_schema(out / "schema.yaml")
    assert fs.standardize is False and [lab.column for lab in fs.labels] == ["view", "like"]
    # the rows are the simulator's, of a data set of 2500 + 200 + 300 rows
    dense, cat, labels = Simulator("group1", 3_000, 0).arrays(1_000, 2_000)
    t = pq.read_table(shards[1])
    assert np.array_equal(t.column("noise").to_numpy(), dense[:, -1])
    assert np.array_equal(t.column("user_id").to_numpy(), cat[:, 0])
    assert np.array_equal(t.column("like").to_numpy(), labels[:, 1])
    assert pq.read_metadata(out / "test.parquet").num_rows == 300
    s = load_stream(out / "schema.yaml", out / "train", out / "valid.parquet",
                    out / "test.parquet")
    assert s.sizes() == {"train": 2500, "valid": 200, "test": 300}
    with pytest.raises(DataError, match="already holds shards.*--overwrite"):
        write_sim_shards(out, "group1", rows=10)


# --------------------------------------------------------------------------- streaming


def test_an_epoch_is_every_row_once_shuffled(toy):
    s = load(toy)
    assert s.sizes() == {"train": SHARDS * SHARD_ROWS, "valid": 400, "test": 400}
    st = s.train.stream(batch_size=128, seed=0, shuffle_buffer=500)
    batches = list(st.epoch_batches(0))
    n = SHARDS * SHARD_ROWS
    assert [len(b) for b in batches] == [128] * (n // 128) + [n % 128]
    got, want = rows_of(batches), all_rows(s.train)
    assert np.array_equal(sort_rows(got), sort_rows(want))
    assert not np.array_equal(got, want)  # shuffled
    # the next epoch is another order of the same rows
    again = rows_of(st.epoch_batches(1))
    assert np.array_equal(sort_rows(again), sort_rows(want)) and not np.array_equal(again, got)


def test_reading_is_bounded(toy, monkeypatch):
    """Rows decoded but not yet emitted never exceed the buffer plus one record batch."""
    s = load(toy)
    opened: list[str] = []
    decoded = [0]
    open_, encode = shards_mod._open, ParquetShards.encode_rows

    def counting_open(path):
        opened.append(Path(path).name)
        return open_(path)

    def counting_encode(self, t, path, row0=0):
        decoded[0] += t.num_rows
        return encode(self, t, path, row0)

    monkeypatch.setattr(shards_mod, "_open", counting_open)
    monkeypatch.setattr(ParquetShards, "encode_rows", counting_encode)
    st = s.train.stream(batch_size=64, seed=1, shuffle_buffer=300, read_rows=50)
    emitted = 0
    for i, b in enumerate(st.epoch_batches(0)):
        emitted += len(b)
        assert decoded[0] - emitted <= 300 + 50
        if i == 0:
            assert len(set(opened)) == 1  # one shard open for the first batch
    assert emitted == SHARDS * SHARD_ROWS


def test_same_seed_same_batches(toy):
    s = load(toy)
    a = list(s.train.stream(100, seed=3, shuffle_buffer=400).epoch_batches(0))
    b = list(s.train.stream(100, seed=3, shuffle_buffer=400).epoch_batches(0))
    c = list(s.train.stream(100, seed=4, shuffle_buffer=400).epoch_batches(0))
    assert same(a, b) and not same(a, c)
    fresh = load(toy)  # a new process would fit the same encoding
    assert same(a, list(fresh.train.stream(100, seed=3, shuffle_buffer=400).epoch_batches(0)))


@pytest.mark.parametrize("cut", [1, 9, 17, 23, 24, 26])
def test_resumed_stream_yields_the_same_batches(toy, cut):
    """Stop after ``cut`` batches (filling, steady, draining, epoch end, next epoch), save the
    state through torch.save, continue in a new stream: the rest is the same."""
    s = load(toy)
    per_epoch = -(-SHARDS * SHARD_ROWS // 128)  # 24
    ref = s.train.stream(128, seed=7, shuffle_buffer=1000)
    run = list(ref.epoch_batches(0)) + list(ref.epoch_batches(1))
    assert len(run) == 2 * per_epoch

    first, seen = s.train.stream(128, seed=7, shuffle_buffer=1000), []
    for epoch in (0, 1):
        it = first.epoch_batches(epoch)
        while len(seen) < cut and (b := next(it, None)) is not None:
            seen.append(b)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)

    second = load(toy).train.stream(128, seed=7, shuffle_buffer=1000)
    second.load_state_dict(state)
    epoch, batch = divmod(cut, per_epoch)  # the trainer's position
    rest = list(second.epoch_batches(epoch, batch))
    if epoch == 0:
        rest += list(second.epoch_batches(1))
    assert same(seen + rest, run)


def test_starting_mid_epoch_without_a_state_replays_it(toy):
    s = load(toy)
    run = list(s.train.stream(128, seed=2, shuffle_buffer=500).epoch_batches(1))
    late = list(s.train.stream(128, seed=2, shuffle_buffer=500).epoch_batches(1, 5, limit=300))
    assert [len(b) for b in late] == [128, 128, 44]
    assert same(late[:2], run[5:7])
    assert torch.equal(late[2].cat, run[7].cat[:44]) and torch.equal(late[2].dense,
                                                                     run[7].dense[:44])


def test_rank_sharding_partitions_rows(toy):
    s = load(toy)
    parts = [rows_of(s.train.stream(128, seed=0, rank=r, world=3).epoch_batches(0))
             for r in range(3)]
    assert [len(p) for p in parts] == [2 * SHARD_ROWS, SHARD_ROWS, SHARD_ROWS]
    assert [s.train.rows_for(r, 3) for r in range(3)] == [len(p) for p in parts]
    assert np.array_equal(sort_rows(np.concatenate(parts)), sort_rows(all_rows(s.train)))
    with pytest.raises(DataError, match="4 training shards cannot feed 5 ranks"):
        s.train.stream(128, rank=0, world=5)


# --------------------------------------------------------------------------- encoding


def test_valid_test_share_the_training_encoding(toy, tmp_path):
    s = load(toy, fit_rows=100)  # 25 rows of each shard
    vocab = s.train.encoder.vocabularies
    assert vocab is not None and s.schema.cardinalities == (len(vocab[0]) + 1, len(vocab[1]) + 1)
    # the integer fast path and the text path agree, for train and for valid
    enc = s.train.encoder
    items = pa.array([0, 5, 39, 12345])
    as_text = items.cast(pa.string())
    assert enc.encode_field(1, items).tolist() == enc.encode_field(1, as_text).tolist()
    valid = pq.read_table(toy / "valid.parquet")
    assert s.valid.cat[:, 1].tolist() == enc.encode_field(1, valid.column("item")).tolist()
    known = [str(v) for v in valid.column("user").to_pylist()]
    assert s.valid.cat[:, 0].tolist() == [vocab[0].index(v) + 1 if v in vocab[0] else 0
                                         for v in known]
    assert s.info["unseen_categories"]["valid"]["user"] == sum(v not in vocab[0] for v in known)
    # dense scaled by the sample's statistics, valid included
    assert s.info["standardize"]["mean"]["x0"] == pytest.approx(float(enc.mean[0]))
    h = load(toy, cat_encoding="hash", hash_buckets=16)
    assert h.schema.cardinalities == (17, 17)
    cat = torch.cat([b.cat for b in h.train.stream(500).epoch_batches(0)])
    assert int(cat.min()) >= 1 and int(cat.max()) <= 16
    # the same value hashes to the same index in every split
    u = h.train.encoder.encode_field(0, pa.array(["u3", "u3", "u7"]))
    assert u[0] == u[1] and h.valid.cat.max() <= 16


# --------------------------------------------------------------------------- bad input


def copy_toy(toy: Path, dst: Path) -> Path:
    (dst / "train").mkdir(parents=True)
    for p in (toy / "train").iterdir():
        (dst / "train" / p.name).write_bytes(p.read_bytes())
    for f in ("schema.yaml", "valid.parquet", "test.parquet"):
        (dst / f).write_bytes((toy / f).read_bytes())
    return dst


def test_bad_input_is_one_line_naming_the_file(toy, tmp_path):
    d = copy_toy(toy, tmp_path / "d")
    part2 = d / "train" / "part-00002.parquet"

    def err(train, **kw) -> str:
        with pytest.raises(DataError) as e:
            load_stream(d / "schema.yaml", train, d / "valid.parquet", d / "test.parquet", **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "missing.parquet: file not found" in err(d / "train" / "missing.parquet")
    assert "no file matches" in err(str(d / "train" / "nope-*.parquet"))
    (d / "empty").mkdir()
    assert "no .parquet / .pq files" in err(d / "empty")
    # a shard without a column
    pq.write_table(table(50, 9).drop_columns(["x1"]), part2)
    assert err(d / "train").startswith(f"{part2}: column 'x1' (dense) is missing")
    # a shard whose column types differ
    pq.write_table(table(50, 9).set_column(4, "item", pa.array([str(i) for i in range(50)])),
                   part2)
    msg = err(d / "train")
    assert msg.startswith(f"{part2}: column 'item' has type string, but part-00000.parquet has")
    # a list-typed categorical column
    t = table(50, 9)
    pq.write_table(t.set_column(3, "user", pa.array([[u] for u in t.column("user").to_pylist()])),
                   part2)
    msg = err(d / "train")
    assert msg.startswith(f"{part2}: column 'user' has type list<") and msg.endswith(
        "which cannot be read as categories (one string or number per row)")
    # not Parquet
    part2.write_text("hello")
    assert err(d / "train").startswith(f"{part2}: cannot read as Parquet")
    # a bad label deep in a shard is found while streaming, with its row in the file
    t = table(SHARD_ROWS, 2)
    click = t.column("click").to_numpy().copy()
    click[613] = 2
    pq.write_table(t.set_column(5, "click", pa.array(click)), part2, row_group_size=GROUP_ROWS)
    s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet",
                    fit_rows=40)
    with pytest.raises(DataError, match=rf"^{part2}: column 'click', row 614: binary label 2 "):
        list(s.train.stream(64, shuffle_buffer=100).epoch_batches(0))
    # a shard removed after loading
    part2.unlink()
    with pytest.raises(DataError, match=rf"^{part2}: file not found$"):
        list(s.train.stream(64, shuffle_buffer=100).epoch_batches(0))


def test_config(toy):
    with pytest.raises(DataError, match="^data config: valid: required by source stream; "
                                        "test: required by source stream$"):
        DataConfig.from_dict({"source": "stream", "schema": "s.yaml", "train": "d"})
    stream = ["data.source=stream", "data.schema=s", "data.train=t", "data.valid=v", "data.test=t"]
    with pytest.raises(ConfigError, match="data.shuffle_bufer: not an option of source stream"):
        load_config(None, [*stream, "data.shuffle_bufer=10"])
    with pytest.raises(ConfigError, match="data.cat_encoding"):
        load_config(None, [*stream, "data.cat_encoding=onehot"])
    cfg = DataConfig.from_dict({"source": "stream", "schema": str(toy / "schema.yaml"),
                                "train": str(toy / "train" / "part-*.parquet"),
                                "valid": str(toy / "valid.parquet"),
                                "test": str(toy / "test.parquet"), "shuffle_buffer": 77})
    s = load_splits(cfg)
    assert s.name == "stream:train" and s.train.shuffle_buffer == 77 and len(s.train) == 3000


# --------------------------------------------------------------------------- the trainer


def run_args(toy: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data.source=stream", f"data.schema={toy / 'schema.yaml'}", f"data.train={toy / 'train'}",
        f"data.valid={toy / 'valid.parquet'}", f"data.test={toy / 'test.parquet'}",
        "data.shuffle_buffer=700", "model.name=mmoe", "model.expert_sizes=[[8]]",
        "model.num_experts=2", "model.tower_sizes=[4]", "model.embedding_dim=4",
        "train.batch_size=128", "runtime.progress=false", "runtime.threads=1",
        f"out_dir={out}", *extra,
    ]


def test_trainer_resume_after_kill_equals_uninterrupted(toy, tmp_path):
    """Killed after its second checkpoint (mid-epoch, buffer full), resumed: same numbers."""
    from adatt.train.trainer import train
    from tests.test_trainer import train_killed_after

    common = ["train.epochs=2", "train.eval_every=700"]
    full = train(load_config(None, run_args(toy, tmp_path, *common, "name=full")))
    assert full["train_examples"] == 6000
    over = run_args(toy, tmp_path, *common, "name=killed")
    train_killed_after(over)
    ck = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    pos = ck["state"]["source"]
    assert pos["epoch"] == 0 and 0 < pos["batch"] < 24 and pos["count"] == 700
    resumed = train(load_config(None, over), resume=True)
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    a = torch.load(tmp_path / "full" / "best.pt")
    b = torch.load(tmp_path / "killed" / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_max_examples(toy, tmp_path):
    from adatt.train.trainer import train

    res = train(load_config(None, run_args(toy, tmp_path, "train.epochs=5",
                                           "train.max_examples=1000", "name=m")))
    assert res["train_examples"] == 1000 and res["data"] == "stream"
    # served with the vocabularies and scaling saved in data.json: valid encodes as in training
    from adatt.serve.predict import Predictor

    enc = Predictor.from_run(tmp_path / "m").encoding
    dense, cat = enc.encode(enc.read(toy / "valid.parquet"), toy / "valid.parquet")
    s = load(toy)
    assert np.array_equal(cat, s.valid.cat.numpy()) and np.array_equal(dense, s.valid.dense.numpy())


# --------------------------------------------------------------------------- integrity


def _damage(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of ``path`` in place (its size unchanged)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _flip_in_values(path: Path) -> None:
    """Flip bytes inside the first data page's values (the page header intact)."""
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = col.data_page_offset
    _damage(path, start + col.total_compressed_size // 2, b"\x5a\xa5\x5a\xa5")


def _epoch(out: Path, fit_rows: int = 1_000_000):
    s = load_stream(out / "schema.yaml", out / "train", out / "valid.parquet",
                    out / "test.parquet", fit_rows=fit_rows)
    return list(s.train.stream(256, seed=0, shuffle_buffer=512).epoch_batches(0))


@pytest.fixture
def shards_dir(tmp_path):
    from adatt.data import manifest

    out = write_sim_shards(tmp_path / "sim", "group1", rows=2_000, shard_rows=1_000,
                           valid_rows=200, test_rows=200, row_group_rows=500)
    yield out
    for p in out.rglob("*.parquet"):
        manifest.forget(p)


def test_manifest_lists_every_file_with_its_checksum(shards_dir):
    import hashlib
    import json

    doc = json.loads((shards_dir / "train" / "adatt-manifest.json").read_text())
    assert doc["format"] == "adatt-manifest" and doc["algorithm"] == "sha256"
    assert sorted(doc["files"]) == ["part-00000.parquet", "part-00001.parquet"]
    p = shards_dir / "train" / "part-00001.parquet"
    assert doc["files"][p.name] == {"bytes": p.stat().st_size,
                                    "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    top = json.loads((shards_dir / "adatt-manifest.json").read_text())
    assert sorted(top["files"]) == ["schema.yaml", "test.parquet", "valid.parquet"]


def test_flipped_bytes_in_a_shard_are_an_error_naming_it(shards_dir):
    clean = _epoch(shards_dir)
    bad = shards_dir / "train" / "part-00001.parquet"
    _flip_in_values(bad)
    with pytest.raises(DataError, match=r"part-00001\.parquet: damaged: its SHA-256 differs"):
        _epoch(shards_dir)
    # without the manifest (shards of another tool) the same bytes are read unverified
    (shards_dir / "train" / "adatt-manifest.json").unlink()
    try:
        got = _epoch(shards_dir)
    except DataError as e:  # or the damage breaks decoding: still named
        assert "part-00001.parquet" in str(e)
    else:
        assert not same(got, clean)


def test_damaged_page_header_is_named_without_a_manifest(shards_dir):
    (shards_dir / "train" / "adatt-manifest.json").unlink()
    bad = shards_dir / "train" / "part-00000.parquet"
    col = pq.ParquetFile(bad).metadata.row_group(1).column(3)
    _damage(bad, col.data_page_offset, b"\xff" * 12)
    with pytest.raises(DataError, match=r"part-00000\.parquet: damaged, cannot decode"):
        _epoch(shards_dir)  # the encoding's sample reads it
    with pytest.raises(DataError, match=r"part-00000\.parquet, row group 1: damaged, cannot "
                                        r"decode \(.*page header") as e:
        _epoch(shards_dir, fit_rows=10)  # the sample stops in row group 0: the stream finds it
    assert "\n" not in str(e.value)


def test_changed_size_is_found_before_training(shards_dir):
    bad = shards_dir / "train" / "part-00000.parquet"
    bad.write_bytes(bad.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"part-00000\.parquet: damaged: .* bytes, but "
                                        r"adatt-manifest\.json"):
        load_stream(shards_dir / "schema.yaml", shards_dir / "train",
                    shards_dir / "valid.parquet", shards_dir / "test.parquet")


def test_damaged_validation_file_and_manifest(shards_dir):
    _flip_in_values(shards_dir / "valid.parquet")
    with pytest.raises(DataError, match=r"valid\.parquet: damaged: its SHA-256"):
        _epoch(shards_dir)
    (shards_dir / "train" / "adatt-manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"adatt-manifest\.json: damaged manifest"):
        _epoch(shards_dir)


def test_a_foreign_manifest_file_is_ignored(shards_dir):
    clean = _epoch(shards_dir)
    (shards_dir / "train" / "adatt-manifest.json").write_text('{"files": "someone else\'s"}')
    assert same(_epoch(shards_dir), clean)
