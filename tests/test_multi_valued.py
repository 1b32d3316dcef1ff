"""Multi-valued categorical features: reading (CSV, Parquet, shards), pooling, models, serving.

The lists travel in ``cat [B, F + L]`` after the single-valued fields, padded with -1
(:class:`adatt.data.schema.MultiValued`); these tests hold every path to the hand
computation and to the plain path.
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

from adatt.config import load_config
from adatt.data.errors import DataError
from adatt.data.files import load_files, read_file_schema
from adatt.data.schema import FeatureSchema, MultiValued, TaskSpec
from adatt.models import create_model, list_models
from adatt.modules.kernels import plain_mode
from adatt.modules.layers import InputLinear

SCHEMA = """\
dense: [age]
categorical: [user]
multi_valued:
  tags: {pooling: mean, max_length: 4}
  cats: {delimiter: ";", pooling: sum, max_length: 2}
labels:
  click: binary
  watch: regression
"""
MODEL = ["model.name=adatt", "model.embedding_dim=2", "model.expert_sizes=[6]",
         "model.tower_sizes=[3]", "model.shared_experts=1"]
TRAIN = ["train.epochs=1", "runtime.progress=false", "runtime.threads=1", "train.batch_size=64"]
TOL = 1e-5


def _frame(n: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    tags = ["|".join(str(t) for t in rng.integers(0, 20, rng.integers(0, 7))) for _ in range(n)]
    cats = [";".join(f"c{t}" for t in rng.integers(0, 5, rng.integers(0, 3))) for _ in range(n)]
    click = (rng.random(n) < 0.3).astype(int)
    return {"age": rng.normal(40, 10, n).round(2).tolist(),
            "user": [f"u{i}" for i in rng.integers(0, 12, n)], "tags": tags, "cats": cats,
            "click": click.tolist(), "watch": rng.normal(2, 1, n).round(3).tolist()}


def _as_lists(frame: dict[str, list]) -> dict[str, list]:
    """The same rows with list columns (Parquet), an empty list as null every other row."""
    out = dict(frame)
    out["tags"] = [[int(x) for x in t.split("|")] if t else (None if i % 2 else [])
                   for i, t in enumerate(frame["tags"])]
    out["cats"] = [c.split(";") if c else None for c in frame["cats"]]
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mv")
    (d / "schema.yaml").write_text(SCHEMA)
    pacsv.write_csv(pa.table(_frame(300, 0)), d / "train.csv")
    pacsv.write_csv(pa.table(_frame(60, 1)), d / "valid.csv")
    pq.write_table(pa.table(_as_lists(_frame(50, 2))), d / "test.parquet")
    pacsv.write_csv(pa.table(_frame(50, 2)), d / "test.csv")
    return d


def _expected_bags(texts: list[str], delimiter: str, vocab: list[str], width: int) -> list:
    out = []
    for t in texts:
        codes = [vocab.index(x) + 1 if x in vocab else 0 for x in t.split(delimiter) if t]
        out.append((codes + [-1] * width)[:width])
    return out


# --------------------------------------------------------------------------- reading


def test_csv_and_parquet_lists_read_as_the_same_padded_indices(files):
    s = load_files(files / "schema.yaml", files / "train.csv", files / "valid.csv",
                   files / "test.parquet")
    assert s.schema.multi_valued == (MultiValued("tags", 21, "mean", 4),
                                     MultiValued("cats", 6, "sum", 2))
    assert s.schema.cat_width == 1 + 4 + 2 and s.train.cat.shape == (300, 7)
    train = _frame(300, 0)
    tag_vocab = sorted({x for t in train["tags"] if t for x in t.split("|")})
    cat_vocab = sorted({x for t in train["cats"] if t for x in t.split(";")})
    assert s.train.cat[:, 1:5].tolist() == _expected_bags(train["tags"], "|", tag_vocab, 4)
    assert s.train.cat[:, 5:7].tolist() == _expected_bags(train["cats"], ";", cat_vocab, 2)
    csv = load_files(files / "schema.yaml", files / "train.csv", files / "valid.csv",
                     files / "test.csv")
    assert torch.equal(csv.test.cat, s.test.cat)  # Parquet lists (null = []) == CSV strings
    assert (s.test.cat[:, 1:5] == -1).all(1).any()  # empty lists are all padding


def test_parquet_string_column_and_spaces(tmp_path):
    (tmp_path / "s.yaml").write_text("multi_valued: {tags: {max_length: 3}}\n"
                                     "labels: {y: binary}\n")
    pq.write_table(pa.table({"tags": ["a | b", "", None, "b|c|a|d"], "y": [0, 1, 0, 1]}),
                   tmp_path / "t.parquet")
    s = load_files(tmp_path / "s.yaml", tmp_path / "t.parquet", tmp_path / "t.parquet",
                   tmp_path / "t.parquet")
    assert s.train.cat.tolist() == [[1, 2, -1], [-1, -1, -1], [-1, -1, -1], [2, 3, 1]]
    assert s.schema.categorical == () and s.schema.cat_width == 3


def _write(tmp_path: Path, schema: str, csv: str) -> tuple[Path, Path]:
    (tmp_path / "s.yaml").write_text(schema)
    (tmp_path / "t.csv").write_text(csv)
    return tmp_path / "s.yaml", tmp_path / "t.csv"


def test_truncation_on_and_off(tmp_path):
    schema, csv = _write(tmp_path, "multi_valued: {tags: {max_length: 2}}\nlabels: {y: binary}\n",
                         "tags,y\n1|2|3,0\n4,1\n")
    s = load_files(schema, csv, csv, csv)
    assert s.train.cat.tolist() == [[1, 2], [4, -1]]
    schema, _ = _write(tmp_path, "multi_valued: {tags: {max_length: 2, truncate: false}}\n"
                       "labels: {y: binary}\n", "tags,y\n4,1\n1|2|3,0\n")
    with pytest.raises(DataError, match=r"t\.csv: column 'tags', row 2: 3 elements, more than "
                                        r"max_length 2 \(truncate: false\)"):
        load_files(schema, csv, csv, csv)


@pytest.mark.parametrize("cell, message", [
    ("1||2", r"t\.csv: column 'tags', row 2: empty element in '1\|\|2'"),
    ("1|", r"t\.csv: column 'tags', row 2: empty element"),
])
def test_bad_csv_element(tmp_path, cell, message):
    schema, csv = _write(tmp_path, "multi_valued: {tags: null}\nlabels: {y: binary}\n",
                         f"tags,y\n1,0\n{cell},1\n")
    with pytest.raises(DataError, match=message):
        load_files(schema, csv, csv, csv)


def test_bad_parquet_elements(tmp_path):
    (tmp_path / "s.yaml").write_text("multi_valued: {tags: null}\nlabels: {y: binary}\n")
    for i, (col, message) in enumerate([
        (pa.array([[1], [2, None]]), r"column 'tags', row 2: null or empty element"),
        (pa.array([["a"], [""]]), r"column 'tags', row 2: null or empty element"),
        (pa.array([[[1]], [[2]]]), r"column 'tags' has type list<.*: list<.*>>; a multi"),
        (pa.array([1.5, 2.0]), r"column 'tags' has type double"),
    ]):
        path = tmp_path / f"t{i}.parquet"
        pq.write_table(pa.table({"tags": col, "y": [0, 1]}), path)
        with pytest.raises(DataError, match=message):
            load_files(tmp_path / "s.yaml", path, path, path)


@pytest.mark.parametrize("text, message", [
    ("multi_valued: [tags]\n", "'multi_valued' must map each list column"),
    ("multi_valued: {tags: {pool: sum}}\n", "multi_valued 'tags': unknown key 'pool'"),
    ("multi_valued: {tags: {pooling: max}}\n", "pooling must be sum or mean, got 'max'"),
    ("multi_valued: {tags: {max_length: 0}}\n", "max_length must be an integer >= 1"),
    ("multi_valued: {tags: {truncate: 1}}\n", "truncate must be true or false"),
    ("multi_valued: {tags: {delimiter: '||'}}\n", "delimiter must be one character"),
    ("multi_valued: {tags: {delimiter: ','}}\n", "is the CSV field delimiter"),
    ("categorical: [tags]\nmulti_valued: {tags: null}\n", "'tags' is given more than one role"),
    ("multi_valued: {tags: [1]}\n", "options must be a mapping"),
])
def test_schema_errors(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text + "labels: {y: binary}\n")
    with pytest.raises(DataError, match=message):
        read_file_schema(tmp_path / "s.yaml")


def test_schema_defaults(tmp_path):
    (tmp_path / "s.yaml").write_text("multi_valued: {tags: null}\nlabels: {y: binary}\n")
    (m,) = read_file_schema(tmp_path / "s.yaml").multi_valued
    assert (m.delimiter, m.pooling, m.max_length, m.truncate) == ("|", "mean", 50, True)


def test_feature_schema_backward_compatible():
    old = {"dense": ["x"], "categorical": ["c"], "cardinalities": [3],
           "tasks": [{"name": "y", "kind": "binary"}]}
    s = FeatureSchema.from_dict(old)
    assert s.multi_valued == () and s.cat_width == 1
    assert json.loads(json.dumps(s.to_dict())) == old  # saved as before
    s2 = FeatureSchema(("x",), ("c",), (3,), (TaskSpec("y"),), (MultiValued("t", 9, "sum", 5),))
    assert FeatureSchema.from_dict(json.loads(json.dumps(s2.to_dict()))) == s2


# --------------------------------------------------------------------------- pooling


def _lists_input(B: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, 2, generator=g)
    single = torch.stack([torch.randint(0, 3, (B,), generator=g),
                          torch.randint(0, 4, (B,), generator=g)], 1)  # [B, 2]
    a = torch.randint(0, 6, (B, 3), generator=g)
    a[0] = -1  # row 0: both lists empty
    a[1, 1:] = -1
    b = torch.randint(0, 5, (B, 2), generator=g)
    b[0] = -1
    b[2, 0] = -1  # a pad before an element is a pad too
    return dense, torch.cat([single, a, b], 1)  # [B, 2 + 3 + 2]


MV = [(6, "mean", 3), (5, "sum", 2)]


def _hand(lin: InputLinear, dense, cat) -> torch.Tensor:
    """The layer written out row by row."""
    rows = []
    for i in range(cat.shape[0]):
        if lin.embedding is None:
            r = lin.bias + dense[i] @ lin.dense_weight
            r = r + lin.cat_weight[cat[i, 0]] + lin.cat_weight[3 + cat[i, 1]]
            tags = [int(x) for x in cat[i, 2:5] if x >= 0]
            r = r + sum((lin.bag_weight[t] for t in tags), torch.zeros(5)) / max(len(tags), 1)
            r = r + sum((lin.bag_weight[6 + int(x)] for x in cat[i, 5:7] if x >= 0),
                        torch.zeros(5))
        else:
            E, Eb = lin.embedding.weight, lin.bag_embedding.weight
            tags = [int(x) for x in cat[i, 2:5] if x >= 0]
            x = torch.cat([dense[i], E[cat[i, 0]], E[3 + cat[i, 1]],
                           sum((Eb[t] for t in tags), torch.zeros(2)) / max(len(tags), 1),
                           sum((Eb[6 + int(t)] for t in cat[i, 5:7] if t >= 0), torch.zeros(2))])
            r = lin.bias + x @ torch.cat([lin.dense_weight, lin.cat_weight, lin.bag_weight])
        rows.append(r)
    return torch.stack(rows)


@pytest.mark.parametrize("emb", [None, 2], ids=["onehot", "embedding"])
def test_pooling_equals_hand_computation_fast_and_plain(emb):
    torch.manual_seed(0)
    lin = InputLinear(2, [3, 4], emb, 5, multi_valued=MV)
    dense, cat = _lists_input()
    want = _hand(lin, dense, cat)
    torch.testing.assert_close(lin(dense, cat), want, atol=1e-6, rtol=1e-5)
    with plain_mode():
        torch.testing.assert_close(lin(dense, cat), want, atol=1e-6, rtol=1e-5)
    empty = InputLinear(2, [3, 4], emb, 5)  # an empty list adds nothing
    empty.load_state_dict({k: v for k, v in lin.state_dict().items() if "bag" not in k})
    torch.testing.assert_close(lin(dense, cat)[0], empty(dense, cat[:, :2])[0])


@pytest.mark.parametrize("emb", [None, 4], ids=["onehot", "embedding"])
def test_copies_equal_each_copy(emb):
    torch.manual_seed(1)
    lin = InputLinear(2, [3, 4], emb, 5, multi_valued=MV)
    dense, cat = _lists_input(B=16)
    p = {n: torch.stack([t, 2 * t]) for n, t in lin.named_parameters()}
    out = lin.forward_copies(dense, cat, p)
    torch.testing.assert_close(out[0], lin(dense, cat))
    per = lin.forward_copies(dense.expand(2, 16, 2), cat.expand(2, 16, 7), p)
    torch.testing.assert_close(per, out)
    with torch.no_grad():
        for t in lin.parameters():
            t.mul_(2)
    torch.testing.assert_close(out[1], lin(dense, cat))


def test_gradients_reach_only_listed_rows():
    lin = InputLinear(0, [], None, 3, multi_valued=[(6, "mean", 3)])
    lin(torch.zeros(2, 0), torch.tensor([[1, 4, -1], [-1, -1, -1]])).sum().backward()
    g = lin.bag_weight.grad.abs().sum(1)
    assert g.nonzero().flatten().tolist() == [1, 4] and torch.allclose(g[1], g[4])


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_model_takes_lists_fast_equals_plain(name):
    torch.manual_seed(0)
    m = create_model(name, num_tasks=2, dense_dim=2, cat_cardinalities=[3, 4], multi_valued=MV)
    dense, cat = _lists_input(B=12)
    with plain_mode():
        want = m(dense, cat)
    torch.testing.assert_close(m(dense, cat), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(list_models()))
def test_without_lists_models_are_unchanged(name):
    """No multi-valued option: the same parameters, in the same order, and outputs."""
    torch.manual_seed(3)
    a = create_model(name, num_tasks=2, dense_dim=2, cat_cardinalities=[3, 4])
    torch.manual_seed(3)
    b = create_model(name, num_tasks=2, dense_dim=2, cat_cardinalities=[3, 4], multi_valued=())
    assert list(a.state_dict()) == list(b.state_dict())
    dense, cat = _lists_input()
    assert torch.equal(a(dense, cat[:, :2]), b(dense, cat[:, :2]))


# --------------------------------------------------------------------------- runs


def _cfg(files: Path, root: Path, name: str, *extra: str):
    return load_config(None, [
        "data.source=files", f"data.schema={files / 'schema.yaml'}",
        f"data.train={files / 'train.csv'}", f"data.valid={files / 'valid.csv'}",
        f"data.test={files / 'test.parquet'}", *MODEL, *TRAIN, f"out_dir={root}", f"name={name}",
        *extra])


def _quiet_train(cfg, **kw):
    from adatt.train.trainer import train

    threads = torch.get_num_threads()
    try:
        return train(cfg, **kw)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(files, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mv_runs")
    _quiet_train(_cfg(files, root, "r"))
    return root / "r"


def _eager(model, schema, data) -> np.ndarray:
    from adatt.serve.serving import ServingModel

    with torch.no_grad():
        return ServingModel.of_schema(model.eval(), schema)(data.dense, data.cat).numpy()


def test_run_trains_and_predict_matches_eager(run, files, tmp_path):
    from adatt.serve.predict import predict_file
    from adatt.train.trainer import load_run

    res = json.loads((run / "results.json").read_text())
    assert np.isfinite(res["test"]["click"]["auc"])
    _, model, splits = load_run(run)
    assert model.input.multi_valued == [(21, "mean", 4), (6, "sum", 2)]
    want = _eager(model, splits.schema, splits.test)
    for src in ("test.parquet", "test.csv"):
        out = tmp_path / f"p_{src}.parquet"
        predict_file(run, files / src, out, batch_size=16, progress=False)
        got = np.stack([pq.read_table(out)[c].to_numpy() for c in ("click_prob", "watch_pred")],
                       1)
        assert np.abs(got - want).max() <= TOL


@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx"])
def test_every_export_format_takes_lists(run, tmp_path, fmt):
    from adatt.serve.export import SUFFIXES, export_run, load_exported
    from adatt.train.trainer import load_run

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    res = export_run(run, fmt, tmp_path / f"m{SUFFIXES[fmt]}")
    assert res.max_abs_diff <= TOL  # checked on random lists of every length, batches 1/7/512
    side = json.loads(res.sidecar.read_text())
    cat = side["inputs"][1]
    assert cat["shape"] == ["batch", 7]
    assert [m["columns"] for m in cat["multi_valued"]] == [[1, 5], [5, 7]]
    _, model, splits = load_run(run)
    with torch.no_grad():
        got = load_exported(res.path, fmt)(splits.test.dense, splits.test.cat).numpy()
    assert np.abs(got - _eager(model, splits.schema, splits.test)).max() <= TOL


def test_ensemble_copy_equals_its_single_run(files, tmp_path):
    from adatt.train.ensemble import train_ensemble

    ens = train_ensemble(_cfg(files, tmp_path, "ens"), [0, 1])
    sep = _quiet_train(_cfg(files, tmp_path, "sep1", "train.seed=1"))
    assert ens[1]["selected"] == sep["selected"]
    for task, ms in sep["test"].items():
        for k, v in ms.items():
            assert ens[1]["test"][task][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (task, k)


def test_streamed_shards_with_lists(files, tmp_path):
    from adatt.data.stream import load_stream

    (tmp_path / "train").mkdir()
    frame = _as_lists(_frame(300, 0))
    for i in range(3):  # three shards of list columns
        part = {k: v[i * 100:(i + 1) * 100] for k, v in frame.items()}
        pq.write_table(pa.table(part), tmp_path / "train" / f"part-{i}.parquet",
                       row_group_size=40)
    s = load_stream(files / "schema.yaml", tmp_path / "train", files / "valid.csv",
                    files / "test.parquet")
    mem = load_files(files / "schema.yaml", files / "train.csv", files / "valid.csv",
                     files / "test.parquet")
    assert s.schema == mem.schema  # the sample is every row: the same vocabularies
    rows = torch.cat([b.cat for b in s.train.stream(64, seed=0).epoch_batches(0)])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, mem.train.cat.tolist()))
    for enc in ("vocab", "hash"):
        res = _quiet_train(load_config(None, [
            "data.source=stream", f"data.schema={files / 'schema.yaml'}",
            f"data.train={tmp_path / 'train'}", f"data.valid={files / 'valid.csv'}",
            f"data.test={files / 'test.parquet'}", f"data.cat_encoding={enc}",
            "data.hash_buckets=50", *MODEL, *TRAIN, f"out_dir={tmp_path}", f"name=s_{enc}"]))
        assert np.isfinite(res["test"]["watch"]["mse"])


def test_stream_error_names_the_shard_row(files, tmp_path):
    from adatt.data.stream import load_stream

    (tmp_path / "train").mkdir()
    (tmp_path / "s.yaml").write_text(SCHEMA.replace("max_length: 4}", "max_length: 6, "
                                                    "truncate: false}"))
    frame = _as_lists(_frame(100, 0))
    frame["tags"][70] = [1, 2, 3, 4, 5, 6, 7]
    pq.write_table(pa.table(frame), tmp_path / "train" / "p.parquet", row_group_size=40)
    s = load_stream(tmp_path / "s.yaml", tmp_path / "train", files / "valid.csv",
                    files / "test.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: column 'tags', row 71: 7 elements"):
        list(s.train.stream(32, seed=0).epoch_batches(0))


def test_torchrec_refuses_lists(files, tmp_path):
    pytest.importorskip("torchrec")
    from adatt.config import ConfigError
    from adatt.integrations.torchrec import train_torchrec

    with pytest.raises(ConfigError, match="multi-valued features"):
        train_torchrec(_cfg(files, tmp_path, "tr"))


def test_two_processes_equal_one(files, tmp_path):
    """Data-parallel (2 CPU processes under torchrun, gloo): the global batch's lists split
    with their rows; the same evaluations and best weights as one process."""
    import os
    import sys

    from tests.ranks import run_ranks

    extra = ["train.epochs=2", "train.batch_size=100", "model.embedding_dim=null"]
    one = _cfg(files, tmp_path, "one", *extra)
    _quiet_train(one)
    args = ["data.source=files", f"data.schema={files / 'schema.yaml'}",
            f"data.train={files / 'train.csv'}", f"data.valid={files / 'valid.csv'}",
            f"data.test={files / 'test.parquet'}", *MODEL, *TRAIN, *extra,
            f"out_dir={tmp_path}", "name=two"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "adatt", "train", *args]
    p = run_ranks(cmd, {**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    assert a["selected"] == b["selected"]
    for task, ms in a["test"].items():
        for k, v in ms.items():
            assert b["test"][task][k] == pytest.approx(v, abs=1e-5), (task, k)
    wa, wb = (torch.load(tmp_path / n / "best.pt", weights_only=True) for n in ("one", "two"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
