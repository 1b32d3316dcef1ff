"""Census-Income loader: the real files (skipped when absent), tiny files in the real layout."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from adatt.data import census, encoding
from adatt.data.census import CATEGORICAL, COLUMNS, CONTINUOUS, load_census
from adatt.data.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CENSUS_DIR = Path(
    os.environ.get(census.CENSUS_DIR_ENV) or REPO.parent / "shared" / "data" / "census-income"
)


def _have_census() -> bool:
    return census.find_census_files([CENSUS_DIR]) is not None


needs_census = pytest.mark.skipif(
    not _have_census(),
    reason=f"UCI census files not found in {CENSUS_DIR} (set {census.CENSUS_DIR_ENV})",
)


# --------------------------------------------------------------------------- the real data


@pytest.fixture(scope="session")
def census_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("census-cache")


@pytest.fixture(scope="session")
def real(census_cache: Path):
    return load_census(CENSUS_DIR, cache_dir=census_cache)


@needs_census
def test_real_row_counts_and_schema(real):
    assert real.sizes() == {"train": 199_523, "valid": 49_881, "test": 49_881}
    assert real.schema.task_names == ["income", "never_married", "education"]
    assert real.schema.dense == CONTINUOUS
    assert real.schema.categorical == CATEGORICAL
    assert real.train.dense.shape == (199_523, 7) and real.train.cat.shape == (199_523, 31)
    assert real.train.weight is None


@needs_census
def test_real_label_columns_are_not_features(real):
    features = set(real.schema.dense) | set(real.schema.categorical)
    for col in ("income", "marital_stat", "education", "instance_weight"):
        assert col not in features
    assert len(features) == 38  # the paper's 40 minus marital stat and education


@needs_census
def test_real_positive_counts_and_rates(real):
    # UCI training file: 12,382 incomes above 50K, 86,485 never married,
    # 19,865 + 6,541 + 1,793 + 1,263 bachelors / masters / prof school / doctorates
    assert real.train.labels.sum(0).long().tolist() == [12_382, 86_485, 29_462]
    for _, ds in real.items():
        rates = ds.labels.mean(0)
        assert 0.055 < rates[0] < 0.07
        assert 0.42 < rates[1] < 0.445
        assert 0.14 < rates[2] < 0.155


@needs_census
def test_real_scaling_and_indices(real):
    d = real.train.dense
    assert torch.equal(d.min(0).values, torch.zeros(7))
    assert torch.equal(d.max(0).values, torch.ones(7))
    card = torch.tensor(real.schema.cardinalities)
    for _, ds in real.items():
        assert bool((ds.cat < card).all())
        assert bool((ds.cat >= 1).all())  # UCI's test file has no value unseen in training
    # '?' (not asked) is its own category, never the unknown index
    vocab = real.info["vocabularies"]["migration_code_change_in_msa"]
    assert "?" in vocab


@needs_census
def test_real_second_load_comes_from_the_cache(real, census_cache: Path):
    again = load_census(CENSUS_DIR, cache_dir=census_cache)
    assert again.info["from_cache"] is True
    for (_, a), (_, b) in zip(real.items(), again.items(), strict=True):
        assert torch.equal(a.dense, b.dense) and torch.equal(a.cat, b.cat)
        assert torch.equal(a.labels, b.labels)


# --------------------------------------------------------------------------- tiny files

ROW = (
    "73, Not in universe, 0, 0, High school graduate, 0, Not in universe, Widowed, Not in "
    "universe or children, Not in universe, White, All other, Female, Not in universe, Not in "
    "universe, Not in labor force, 0, 0, 0, Nonfiler, Not in universe, Not in universe, Other "
    "Rel 18+ ever marr not in subfamily, Other relative of householder, 1700.09, ?, ?, ?, Not "
    "in universe under 1 year old, ?, 0, Not in universe, United-States, United-States, "
    "United-States, Native- Born in the United States, 0, Not in universe, 2, 0, 95, - 50000."
)


def row(**values: str) -> str:
    fields = [f.strip() for f in ROW.split(",")]
    assert len(fields) == 42
    for k, v in values.items():
        fields[COLUMNS.index(k)] = v
    return ", ".join(fields)


TRAIN_ROWS = [
    row(age="20", marital_stat="Never married", weeks_worked_in_year="10"),
    row(age="40", income="50000+.", education="Doctorate degree(PhD EdD)", race="Black"),
    row(age="60", education="Associates degree-academic program", instance_weight="100"),
    row(age="30", education="Bachelors degree(BA AB BS)", country_of_birth_self="?"),
    row(age="50", education="Prof school degree (MD DDS DVM LLB JD)", weeks_worked_in_year="52"),
    row(age="80", education="Masters degree(MA MS MEng MEd MSW MBA)", instance_weight="2900"),
]
TEST_ROWS = [row(age=str(a)) for a in (21, 22, 23, 24, 25, 26)] + [
    row(age="90", race="Martian", class_of_worker="Never worked")
]


def write_census(
    directory: Path, train: list[str], test: list[str], gz: bool = True
) -> dict[str, str]:
    """Write both files (gzip or plain) and return their checksums."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for stem, rows in (("census-income.data", train), ("census-income.test", test)):
        data = "".join(r + "\n" for r in rows).encode()
        sums[stem] = hashlib.sha256(data).hexdigest()
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return sums


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(census.CENSUS_DIR_ENV, raising=False)
    monkeypatch.delenv(census.CACHE_DIR_ENV, raising=False)
    sums = write_census(tmp_path / "data", TRAIN_ROWS, TEST_ROWS)
    return tmp_path / "data", tmp_path / "cache", sums


def load_tiny(tiny, **kw):
    data, cache, sums = tiny
    kw.setdefault("checksums", sums)
    return load_census(data, cache_dir=cache, download=False, **kw)


def test_tiny_labels_features_and_split(tiny):
    s = load_tiny(tiny)
    assert s.sizes() == {"train": 6, "valid": 3, "test": 4}
    assert s.train.labels.tolist() == [
        [0, 1, 0],  # never married
        [1, 0, 1],  # income > 50K, doctorate
        [0, 0, 0],  # associates degree: not "at least college"
        [0, 0, 1],  # bachelors
        [0, 0, 1],  # prof school counts as college
        [0, 0, 1],  # masters
    ]
    age = s.schema.dense.index("age")
    assert s.train.dense[:, age].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1 / 6, 0.5, 1])
    # valid and test split the UCI test rows without overlap
    ages = sorted(
        round(float(x) * 60 + 20) for x in torch.cat([s.valid.dense, s.test.dense])[:, age]
    )
    assert ages == [21, 22, 23, 24, 25, 26, 90]
    assert s.test.dense[:, age].max() > 1 or s.valid.dense[:, age].max() > 1  # not refitted


def test_tiny_unknown_category_is_zero_and_question_mark_is_a_category(tiny):
    s = load_tiny(tiny)
    race = s.schema.categorical.index("race")
    worker = s.schema.categorical.index("class_of_worker")
    held_out = torch.cat([s.valid.cat, s.test.cat])
    martian = held_out[:, race] == 0
    assert int(martian.sum()) == 1  # 'Martian' was never seen in training
    assert int((held_out[:, worker] == 0).sum()) == 1  # nor 'Never worked'
    assert int((s.train.cat == 0).sum()) == 0
    country = s.schema.categorical.index("country_of_birth_self")
    assert s.train.cat[3, country] != 0 and s.train.cat[3, country] != s.train.cat[0, country]
    assert s.info["vocabularies"]["race"] == ["Black", "White"]
    assert s.schema.cardinalities[race] == 3


def test_tiny_split_seed_is_deterministic_and_matters(tiny):
    a, b, c = load_tiny(tiny), load_tiny(tiny), load_tiny(tiny, split_seed=1)
    assert torch.equal(a.valid.dense, b.valid.dense)
    assert not torch.equal(a.valid.dense, c.valid.dense)
    assert a.info["cache_key"] != c.info["cache_key"]


def test_tiny_instance_weight_modes(tiny):
    drop = load_tiny(tiny)
    feat = load_tiny(tiny, instance_weight="feature")
    samp = load_tiny(tiny, instance_weight="sample_weight")
    assert drop.schema.dense_dim == 7 and drop.train.weight is None
    assert feat.schema.dense[-1] == "instance_weight" and feat.schema.dense_dim == 8
    assert feat.train.dense[:, -1].min() == 0 and feat.train.dense[:, -1].max() == 1
    assert samp.schema.dense_dim == 7
    assert float(samp.train.weight.mean()) == pytest.approx(1.0)
    assert samp.valid.weight is not None and samp.test.weight is not None
    with pytest.raises(DataError, match="instance_weight"):
        load_tiny(tiny, instance_weight="bogus")


def test_tiny_dense_scaling_standard(tiny):
    mm, z = load_tiny(tiny), load_tiny(tiny, dense_scaling="standard")
    assert mm.info["cache_key"] != z.info["cache_key"]
    assert z.info["scaler"]["kind"] == "standard"
    assert torch.allclose(z.train.dense.double().mean(0), torch.zeros(7, dtype=torch.float64),
                          atol=1e-6)
    std = z.train.dense.double().std(0, unbiased=False)
    assert torch.allclose(std[std > 0], torch.ones_like(std[std > 0]), atol=1e-5)
    assert torch.equal(mm.train.cat, z.train.cat) and torch.equal(mm.test.labels, z.test.labels)
    with pytest.raises(DataError, match="dense_scaling"):
        load_tiny(tiny, dense_scaling="zscore")


def test_tiny_plain_files_and_cache(tiny, tmp_path: Path):
    data, cache, _ = tiny
    sums = write_census(tmp_path / "plain", TRAIN_ROWS, TEST_ROWS, gz=False)
    first = load_census(tmp_path / "plain", cache_dir=cache, checksums=sums, download=False)
    assert first.info["from_cache"] is False
    second = load_census(None, cache_dir=cache, checksums=sums, download=False)  # no files needed
    assert second.info["from_cache"] is True
    assert torch.equal(first.train.cat, second.train.cat)
    assert list((cache / "census").glob("*.tmp")) == []


def test_tiny_corrupt_cache_is_rebuilt(tiny):
    first = load_tiny(tiny)
    Path(first.info["cache_path"]).write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable census cache"):
        again = load_tiny(tiny)
    assert again.info["from_cache"] is False
    assert torch.equal(first.train.dense, again.train.dense)


def test_checksum_mismatch(tiny):
    data, cache, sums = tiny
    wrong = dict(sums, **{"census-income.test": "0" * 64})
    with pytest.raises(DataError, match=r"census-income\.test\.gz: SHA-256 .* expected 0000"):
        load_census(data, cache_dir=cache, checksums=wrong, download=False, use_cache=False)


def test_real_checksums_reject_other_files(tiny):
    data, cache, _ = tiny
    with pytest.raises(DataError, match="SHA-256"):
        load_census(data, cache_dir=cache, download=False)  # the UCI checksums


def test_truncated_gzip(tiny):
    data, cache, sums = tiny
    f = data / "census-income.data.gz"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"census-income\.data\.gz: truncated or corrupt gzip"):
        load_census(data, cache_dir=cache, checksums=sums, download=False, use_cache=False)


def _bad(tmp_path: Path, train: list[str]) -> None:
    sums = write_census(tmp_path / "bad", train, TEST_ROWS)
    load_census(tmp_path / "bad", checksums=sums, download=False, use_cache=False)


def test_wrong_column_count(tmp_path: Path):
    rows = list(TRAIN_ROWS)
    rows[2] = rows[2].rsplit(",", 1)[0]  # 41 fields
    with pytest.raises(DataError, match=r"data\.gz: line 3 has 41 comma-separated fields"):
        _bad(tmp_path, rows)


def test_non_number_in_continuous_column(tmp_path: Path):
    rows = list(TRAIN_ROWS)
    rows[1] = row(age="forty")
    with pytest.raises(DataError, match=r"column 'age', line 2: 'forty' is not a number"):
        _bad(tmp_path, rows)


def test_unknown_income_label(tmp_path: Path):
    rows = [*TRAIN_ROWS, row(income="maybe")]
    with pytest.raises(DataError, match=r"column 'income', line 7: 'maybe' is not an income"):
        _bad(tmp_path, rows)


def test_empty_file_and_blank_line(tmp_path: Path):
    with pytest.raises(DataError, match="no rows"):
        _bad(tmp_path, [])
    with pytest.raises(DataError, match="line 2 is empty"):
        _bad(tmp_path, [TRAIN_ROWS[0], "", TRAIN_ROWS[1]])


def test_missing_files_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(census.CENSUS_DIR_ENV, raising=False)
    with pytest.raises(DataError, match="not found in"):
        load_census(tmp_path / "nowhere", cache_dir=tmp_path / "c", download=False)


def test_env_var_directory_is_used(tiny, monkeypatch: pytest.MonkeyPatch):
    data, cache, sums = tiny
    monkeypatch.setenv(census.CENSUS_DIR_ENV, str(data))
    s = load_census(None, cache_dir=cache, checksums=sums, download=False)
    assert s.sizes()["train"] == 6


# --------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server:
    """A local HTTP server over a directory (the download code runs unmodified against it)."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_from_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(census.CENSUS_DIR_ENV, raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    sums = write_census(tmp_path / "www", TRAIN_ROWS, TEST_ROWS)
    cache = tmp_path / "cache"
    with _Server(tmp_path / "www") as base:
        urls = {stem: base + stem + ".gz" for stem in census.CENSUS_FILES.values()}
        monkeypatch.setattr(census, "CENSUS_URLS", urls)
        s = load_census(None, cache_dir=cache, checksums=sums, progress=False, use_cache=False)
    assert s.sizes()["train"] == 6
    got = sorted(p.name for p in (cache / "census-income").iterdir())
    assert got == ["census-income.data.gz", "census-income.test.gz"]  # no partial files left
    # the downloaded copy is found again without the network
    monkeypatch.setattr(census, "_urlopen", _refuse)
    assert load_census(None, cache_dir=cache, checksums=sums, use_cache=False).sizes()["test"] == 4


def _refuse(url: str, timeout: float):
    raise urllib.error.URLError("no network")


class _FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, length: int | None = None):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body) if length is None else length)}


def test_download_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sums = write_census(tmp_path / "src", TRAIN_ROWS, TEST_ROWS)
    good = (tmp_path / "src" / "census-income.data.gz").read_bytes()
    dest = tmp_path / "dl"

    monkeypatch.setattr(census, "_urlopen", _refuse)
    with pytest.raises(DataError, match="cannot download .*no network"):
        census.download_census(dest, checksums=sums, progress=False)

    monkeypatch.setattr(census, "_urlopen", lambda url, timeout: _FakeResponse(good, len(good) + 9))
    with pytest.raises(DataError, match="incomplete"):
        census.download_census(dest, checksums=sums, progress=False)

    monkeypatch.setattr(census, "_urlopen", lambda url, timeout: _FakeResponse(good[:-30]))
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        census.download_census(dest, checksums=sums, progress=False)

    other = gzip.compress(b"something else\n")
    monkeypatch.setattr(census, "_urlopen", lambda url, timeout: _FakeResponse(other))
    with pytest.raises(DataError, match="SHA-256"):
        census.download_census(dest, checksums=sums, progress=False)
    assert list(dest.iterdir()) == []  # nothing bad ever lands in the cache


def test_vocabulary_helpers():
    vocab = encoding.build_vocabulary(["b", "a", "?", "b"])
    assert vocab == ["?", "a", "b"]
    assert encoding.encode_categorical(["a", "new", "?"], vocab).tolist() == [2, 0, 1]
    assert np.asarray(encoding.encode_categorical([], vocab)).shape == (0,)
