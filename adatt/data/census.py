"""UCI Census-Income (KDD): the paper's public benchmark (AdaTT, section 4.3).

Source: UCI Machine Learning Repository, "Census-Income (KDD)" (data set 117),
files ``census-income.data`` (199,523 rows) and ``census-income.test``
(99,762 rows), 42 comma-and-space separated columns, no header.

Where the files come from
    :func:`load_census` looks for ``census-income.data[.gz]`` and
    ``census-income.test[.gz]`` in, in order: the ``data_dir`` argument, the
    directory in the environment variable ``ADATT_DATA_DIR``
    (:data:`CENSUS_DIR_ENV`), and ``<cache>/census-income`` (an earlier
    download). When none holds both, it downloads the gzip files from UCI
    (:data:`CENSUS_URLS`) into ``<cache>/census-income`` with a progress bar,
    writing a temporary file that is verified and then renamed into place.
    ``<cache>`` is the ``cache_dir`` argument, else ``ADATT_CACHE_DIR``, else
    ``~/.cache/adatt``. An uncompressed file is preferred to a gzip one when a
    directory has both.

Integrity
    The SHA-256 of the *uncompressed* content of every file read is always
    checked against :data:`CENSUS_SHA256` (the checksums of UCI's files). A
    modified, wrong or truncated file (including a truncated gzip stream) is a
    :class:`~adatt.data.errors.DataError`, never used. Rows are then checked:
    42 fields per line, numbers in the continuous columns, one of the two
    income labels; each problem is a one-line error naming file, column and line.

Tasks (label column order)
    ``income``: the income column is ``50000+.`` (6.2 % of training rows);
    ``never_married``: marital stat is ``Never married`` (43.3 %);
    ``education``: education is a Bachelors, Masters, Prof school or Doctorate
    degree (14.8 %; "at least college" read as "a college degree", so
    Associates degrees and "Some college but no degree" are negatives; unlike
    Aoki et al.'s code, professional-school degrees count). The three
    label-defining columns are not features.

Features (38 = the paper's 40 minus the two label-defining ones)
    UCI's ``census-income.names`` marks 7 columns continuous and everything else
    nominal; that split is kept, so the integer-coded recodes (detailed
    industry / occupation recode, own business or self employed, veterans
    benefits, year) are categorical, and ``num persons worked for employer``
    (0-6) stays continuous.

    * 31 categorical fields (:data:`CATEGORICAL`). Whitespace around values is
      stripped. The vocabulary of a field is the sorted set of values seen in
      the training file; value ``v`` gets index ``1 + position in vocabulary``,
      index 0 is reserved for values never seen in training (none occur in
      UCI's test file, but user-supplied copies may differ). ``?`` (UCI's
      missing marker, in the migration, previous-state and country-of-birth
      columns, mostly the 1994 migration supplement that was not asked) is kept
      as its own category: its presence is informative, not noise.
    * 7 continuous columns (:data:`CONTINUOUS`), min-max scaled to [0, 1] with
      the minimum and maximum of the training rows only. Min-max follows the
      Aoki et al. (BIOKDD 2021) protocol the paper adapted, keeps the scale of
      the heavy-tailed money columns bounded (standardisation would put
      capital gains up to ~40 standard deviations out) and needs no epsilon.
      Validation / test rows use the training statistics (Aoki et al. refit on
      the held-out file, a leak not copied here); values outside the training
      range are not clipped. ``dense_scaling="standard"`` uses z-scores with
      the training mean and standard deviation instead: with learned
      embeddings and no normalisation layer, the near-zero min-max values of
      the money columns are learned from slowly (benchmarks/README.md,
      peers_accuracy).
    * ``instance weight`` (a survey weight that UCI says to ignore for
      classification): dropped by default (``instance_weight="drop"``);
      ``"feature"`` appends it as an 8th dense column, min-max scaled like the
      others (what Aoki et al.'s code does); ``"sample_weight"`` puts it in
      ``Batch.weight`` divided by its training-set mean (so train weights
      average 1; validation / test use the same divisor).

Splits
    ``train`` = the 199,523 rows of ``census-income.data`` in file order. The
    99,762 rows of ``census-income.test`` are permuted with
    ``numpy.random.default_rng(split_seed).permutation`` (``split_seed``
    default 0); the first 49,881 indices (sorted back into file order) are
    ``valid``, the other 49,881 ``test``.

Cache
    The processed splits are saved as an uncompressed ``.npz`` under
    ``<cache>/census/`` keyed by a hash of the expected input checksums, the
    options (``instance_weight``, ``split_seed``) and :data:`FORMAT_VERSION`;
    the file is written to a temporary name and renamed atomically. A cache
    hit does not read the raw files at all (its content was built from
    verified files); an unreadable cache file is rebuilt, and one that cannot
    be written (a full disk, a read-only cache) is a warning: the loaded data is used.

Example:
    >>> len(COLUMNS), len(CATEGORICAL), len(CONTINUOUS)
    (42, 31, 7)
    >>> [t.name for t in TASKS]
    ['income', 'never_married', 'education']
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adatt.data.batch import TensorDataset
from adatt.data.encoding import build_vocabulary, encode_categorical
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits

__all__ = [
    "CENSUS_DIR_ENV",
    "CACHE_DIR_ENV",
    "CENSUS_FILES",
    "CENSUS_SHA256",
    "CENSUS_URLS",
    "FORMAT_VERSION",
    "COLUMNS",
    "CONTINUOUS",
    "CATEGORICAL",
    "TASK_COLUMNS",
    "TASKS",
    "COLLEGE_DEGREES",
    "InstanceWeight",
    "load_census",
    "download_census",
    "find_census_files",
    "read_census_file",
    "default_cache_dir",
]

CENSUS_DIR_ENV = "ADATT_DATA_DIR"
CACHE_DIR_ENV = "ADATT_CACHE_DIR"
FORMAT_VERSION = 1

InstanceWeight = Literal["drop", "feature", "sample_weight"]

#: split name -> file stem (the file may also be gzip-compressed, ``<stem>.gz``)
CENSUS_FILES: dict[str, str] = {"train": "census-income.data", "test": "census-income.test"}
#: SHA-256 of the uncompressed UCI files
CENSUS_SHA256: dict[str, str] = {
    "census-income.data": "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86",
    "census-income.test": "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c",
}
_UCI_BASE = "https://archive.ics.uci.edu/ml/machine-learning-databases/census-income-mld/"
CENSUS_URLS: dict[str, str] = {stem: f"{_UCI_BASE}{stem}.gz" for stem in CENSUS_FILES.values()}

#: UCI's column order (census-income.names), snake_case
COLUMNS: tuple[str, ...] = (
    "age",
    "class_of_worker",
    "detailed_industry_recode",
    "detailed_occupation_recode",
    "education",
    "wage_per_hour",
    "enroll_in_edu_inst_last_wk",
    "marital_stat",
    "major_industry_code",
    "major_occupation_code",
    "race",
    "hispanic_origin",
    "sex",
    "member_of_a_labor_union",
    "reason_for_unemployment",
    "full_or_part_time_employment_stat",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "tax_filer_stat",
    "region_of_previous_residence",
    "state_of_previous_residence",
    "detailed_household_and_family_stat",
    "detailed_household_summary_in_household",
    "instance_weight",
    "migration_code_change_in_msa",
    "migration_code_change_in_reg",
    "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago",
    "migration_prev_res_in_sunbelt",
    "num_persons_worked_for_employer",
    "family_members_under_18",
    "country_of_birth_father",
    "country_of_birth_mother",
    "country_of_birth_self",
    "citizenship",
    "own_business_or_self_employed",
    "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits",
    "weeks_worked_in_year",
    "year",
    "income",
)
WEIGHT_COLUMN = "instance_weight"
#: columns UCI marks "continuous"
CONTINUOUS: tuple[str, ...] = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "dividends_from_stocks",
    "num_persons_worked_for_employer",
    "weeks_worked_in_year",
)
#: columns that define a label (never features)
TASK_COLUMNS: tuple[str, ...] = ("income", "marital_stat", "education")
#: every other column: nominal in UCI's names file
CATEGORICAL: tuple[str, ...] = tuple(
    c for c in COLUMNS if c not in (*CONTINUOUS, WEIGHT_COLUMN, *TASK_COLUMNS)
)
TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("income", "binary"),
    TaskSpec("never_married", "binary"),
    TaskSpec("education", "binary"),
)
INCOME_POSITIVE = "50000+."
INCOME_NEGATIVE = "- 50000."
NEVER_MARRIED = "Never married"
#: education values counted as "at least college" (raw strings, whitespace stripped)
COLLEGE_DEGREES: frozenset[str] = frozenset(
    {
        "Bachelors degree(BA AB BS)",
        "Masters degree(MA MS MEng MEd MSW MBA)",
        "Prof school degree (MD DDS DVM LLB JD)",
        "Doctorate degree(PhD EdD)",
    }
)


# --------------------------------------------------------------------------- locating files


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$ADATT_CACHE_DIR``, else ``~/.cache/adatt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "adatt"


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def find_census_files(directories: Iterable[str | os.PathLike[str]]) -> dict[str, Path] | None:
    """The first directory holding both census files, as ``{split: path}``; None if none does."""
    for d in directories:
        d = Path(d).expanduser()
        found = {split: _file_in(d, stem) for split, stem in CENSUS_FILES.items()}
        if all(p is not None for p in found.values()):
            return found  # type: ignore[return-value]
    return None


def _search_dirs(data_dir: str | os.PathLike[str] | None, cache_root: Path) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(CENSUS_DIR_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(cache_root / "census-income")
    return dirs


# --------------------------------------------------------------------------- download


def _urlopen(url: str, timeout: float):  # indirection so tests can substitute a fake
    return urllib.request.urlopen(url, timeout=timeout)


def _sha256_gzip_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip file ({e})") from e
    return h.hexdigest()


def download_census(
    dest_dir: str | os.PathLike[str],
    *,
    urls: Mapping[str, str] | None = None,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Download the two gzip files into ``dest_dir``; returns ``{split: path}``.

    Each file is streamed to a temporary file in ``dest_dir`` (tqdm progress
    bar), its uncompressed SHA-256 checked, then renamed into place
    atomically, so an interrupted or wrong download never lands under the
    final name. Files already present are not downloaded again.
    """
    from tqdm import tqdm

    urls = dict(CENSUS_URLS if urls is None else urls)
    checksums = dict(CENSUS_SHA256 if checksums is None else checksums)
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for split, stem in CENSUS_FILES.items():
        final = dest / (stem + ".gz")
        out[split] = final
        if final.is_file():
            continue
        url = urls[stem]
        fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=final.name + ".", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    resp = _urlopen(url, timeout)
                except OSError as e:  # URLError, HTTPError, timeouts are OSErrors
                    raise DataError(
                        f"cannot download {url} ({e}); put {stem}.gz in a directory and set "
                        f"{CENSUS_DIR_ENV} or data_dir"
                    ) from e
                with resp:
                    length = resp.headers.get("Content-Length") if resp.headers else None
                    total = int(length) if length else None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=final.name,
                        disable=not progress,
                    ) as bar:
                        try:
                            while chunk := resp.read(1 << 20):
                                f.write(chunk)
                                bar.update(len(chunk))
                        except OSError as e:
                            raise DataError(f"download of {url} failed ({e})") from e
                    if total is not None and f.tell() != total:
                        raise DataError(
                            f"download of {url} is incomplete: {f.tell()} of {total} bytes"
                        )
            got = _sha256_gzip_file(tmp)
            if got != checksums[stem]:
                raise DataError(
                    f"download of {url}: SHA-256 of the uncompressed content is {got}, "
                    f"expected {checksums[stem]}"
                )
            os.chmod(tmp, 0o644)  # mkstemp makes 0600
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- reading


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip file ({e})") from e
    got = hashlib.sha256(raw).hexdigest()
    if got != expected_sha256:
        raise DataError(
            f"{path}: SHA-256 of the uncompressed content is {got}, expected {expected_sha256} "
            "(wrong, modified or truncated file)"
        )
    return raw


def _line_of(data: bytes, text: str | None) -> int | None:
    if not text:
        return None
    pos = data.find(text.encode("utf-8", "replace"))
    return None if pos < 0 else data.count(b"\n", 0, pos) + 1


def read_census_file(path: str | os.PathLike[str], expected_sha256: str) -> dict[str, Any]:
    """Verify and parse one census file.

    Returns a dict with, for ``N`` rows: each categorical column as a pyarrow
    string array (whitespace stripped), each continuous column and
    ``instance_weight`` as ``float64 [N]``, and ``"labels"`` as
    ``float32 [N, 3]`` (income, never_married, education).

    Raises:
        DataError: unreadable file, bad gzip, checksum mismatch, no rows, an
            empty line, a line without 42 fields, a non-number in a continuous
            column, an unknown income label.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    path = Path(path)
    data = _read_verified(path, expected_sha256)
    if not data.strip():
        raise DataError(f"{path}: file has no rows")
    if data.startswith(b"\n") or data.startswith(b"\r\n"):
        raise DataError(f"{path}: line 1 is empty")
    blank = min((p for p in (data.find(b"\n\n"), data.find(b"\n\r\n")) if p >= 0), default=-1)
    if 0 <= blank < len(data.rstrip(b"\r\n")):
        line = data.count(b"\n", 0, blank) + 2
        raise DataError(f"{path}: line {line} is empty")

    bad: list[Any] = []

    def on_invalid(row: Any) -> str:
        bad.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(COLUMNS)),
            parse_options=pacsv.ParseOptions(
                delimiter=",", quote_char=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in COLUMNS},
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: cannot parse as comma-separated text ({e})") from e
    if bad:
        lines = [(r.number or _line_of(data, r.text) or 0, r) for r in bad]
        line, row = min(lines, key=lambda x: x[0])
        where = f"line {line}" if line else f"row {row.text[:60]!r}"
        raise DataError(
            f"{path}: {where} has {row.actual_columns} comma-separated fields, expected "
            f"{len(COLUMNS)}"
        )
    if table.num_rows == 0:
        raise DataError(f"{path}: file has no rows")

    out: dict[str, Any] = {}
    strip = {c: pc.utf8_trim_whitespace(table[c]) for c in COLUMNS}
    for c in CATEGORICAL:
        out[c] = strip[c]
    for c in (*CONTINUOUS, WEIGHT_COLUMN):
        out[c] = _to_float(strip[c], path, c)

    income = strip["income"]
    ok = pc.is_in(income, value_set=pa.array([INCOME_NEGATIVE, INCOME_POSITIVE]))
    if not pc.all(ok).as_py():
        i = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{path}: column 'income', line {i + 1}: {income[i].as_py()!r} is not an income "
            f"label ({INCOME_NEGATIVE!r} or {INCOME_POSITIVE!r})"
        )
    y_income = pc.equal(income, INCOME_POSITIVE).to_numpy(zero_copy_only=False)
    y_married = pc.equal(strip["marital_stat"], NEVER_MARRIED).to_numpy(zero_copy_only=False)
    y_edu = pc.is_in(strip["education"], value_set=pa.array(sorted(COLLEGE_DEGREES)))
    y_edu = y_edu.to_numpy(zero_copy_only=False)
    out["labels"] = np.stack([y_income, y_married, y_edu], axis=1).astype(np.float32)
    return out


def _to_float(col: Any, path: Path, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = col.to_pylist()
        for i, v in enumerate(values):
            try:
                float(v)
            except ValueError:
                raise DataError(
                    f"{path}: column {name!r}, line {i + 1}: {v!r} is not a number"
                ) from None
        raise DataError(f"{path}: column {name!r} cannot be read as numbers") from None
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{path}: column {name!r}, line {i + 1}: {col[i].as_py()!r} is not finite")
    return x


# --------------------------------------------------------------------------- building splits


def _cache_key(checksums: Mapping[str, str], instance_weight: str, split_seed: int,
               dense_scaling: str = "minmax") -> str:
    options = {
        "format_version": FORMAT_VERSION,
        "sha256": {stem: checksums[stem] for stem in CENSUS_FILES.values()},
        "instance_weight": instance_weight,
        "split_seed": int(split_seed),
    }
    if dense_scaling != "minmax":  # min-max caches keep their key
        options["dense_scaling"] = dense_scaling
    blob = json.dumps(options, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _build_arrays(
    train: dict[str, Any], test: dict[str, Any], instance_weight: str, split_seed: int,
    dense_scaling: str = "minmax",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Encode, scale and split; returns the arrays and the metadata (JSON-able)."""
    vocabs = {c: build_vocabulary(train[c]) for c in CATEGORICAL}
    dense_cols = list(CONTINUOUS) + ([WEIGHT_COLUMN] if instance_weight == "feature" else [])
    if dense_scaling == "standard":  # x -> (x - mean) / std
        lo = {c: float(np.mean(train[c])) for c in dense_cols}
        hi = {c: lo[c] + float(np.std(train[c])) for c in dense_cols}
        scaler = {"kind": "standard", "mean": lo, "std": {c: hi[c] - lo[c] for c in dense_cols}}
    else:  # x -> (x - min) / (max - min)
        lo = {c: float(train[c].min()) for c in dense_cols}
        hi = {c: float(train[c].max()) for c in dense_cols}
        scaler = {"kind": "minmax", "min": lo, "max": hi}

    def encode(raw: dict[str, Any]) -> dict[str, np.ndarray]:
        cat = np.stack([encode_categorical(raw[c], vocabs[c]) for c in CATEGORICAL], axis=1)
        dense = np.stack(
            [(raw[c] - lo[c]) / ((hi[c] - lo[c]) or 1.0) for c in dense_cols], axis=1
        ).astype(np.float32)
        out = {"dense": dense, "cat": cat.astype(np.int16), "labels": raw["labels"]}
        if instance_weight == "sample_weight":
            out["weight"] = raw[WEIGHT_COLUMN]
        return out

    tr, te = encode(train), encode(test)
    n_test = te["labels"].shape[0]
    perm = np.random.default_rng(split_seed).permutation(n_test)
    half = n_test // 2
    valid_idx, test_idx = np.sort(perm[:half]), np.sort(perm[half:])
    va = {k: v[valid_idx] for k, v in te.items()}
    te = {k: v[test_idx] for k, v in te.items()}
    meta: dict[str, Any] = {}
    if instance_weight == "sample_weight":
        mean_w = float(tr["weight"].mean())
        for d in (tr, va, te):
            d["weight"] = (d["weight"] / mean_w).astype(np.float32)
        meta["weight_divisor"] = mean_w
    arrays = {
        f"{s}_{k}": v for s, d in (("train", tr), ("valid", va), ("test", te)) for k, v in d.items()
    }
    meta.update(
        {
            "dense": dense_cols,
            "categorical": list(CATEGORICAL),
            "cardinalities": [len(vocabs[c]) + 1 for c in CATEGORICAL],
            "scaler": scaler,
            "vocabularies": vocabs,
        }
    )
    return arrays, meta


def _save_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
            np.savez(f, meta=meta_bytes, **arrays)
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _load_cache(path: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("cache_key") != key or meta.get("format_version") != FORMAT_VERSION:
                return None
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except Exception as e:  # any unreadable cache is rebuilt, never trusted
        warnings.warn(f"{path}: unreadable census cache ({e}); rebuilding it", stacklevel=3)
        return None
    return arrays, meta


def _to_splits(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Splits:
    schema = FeatureSchema(
        dense=tuple(meta["dense"]),
        categorical=tuple(meta["categorical"]),
        cardinalities=tuple(meta["cardinalities"]),
        tasks=TASKS,
    )

    def ds(split: str) -> TensorDataset:
        w = arrays.get(f"{split}_weight")
        return TensorDataset(
            torch.from_numpy(arrays[f"{split}_dense"]),
            torch.from_numpy(arrays[f"{split}_cat"]),
            torch.from_numpy(arrays[f"{split}_labels"]),
            None if w is None else torch.from_numpy(w),
        )

    info = {k: v for k, v in meta.items() if k not in ("dense", "categorical", "cardinalities")}
    return Splits("census", schema, ds("train"), ds("valid"), ds("test"), info)


def load_census(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    instance_weight: InstanceWeight = "drop",
    split_seed: int = 0,
    dense_scaling: str = "minmax",
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    download: bool = True,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Splits:
    """Census-Income (KDD) as train / valid / test splits (see the module docstring).

    Args:
        data_dir: directory holding the two files; default ``$ADATT_DATA_DIR``,
            then the download cache.
        instance_weight: ``"drop"`` (default), ``"feature"`` or ``"sample_weight"``.
        split_seed: seed of the valid / test split of the UCI test file (default 0).
        dense_scaling: ``"minmax"`` (default, the paper's protocol) or ``"standard"``
            (z-scores), both with training-row statistics.
        cache_dir: root of the caches (default ``$ADATT_CACHE_DIR``, else
            ``~/.cache/adatt``).
        use_cache: read and write the processed-split cache (default True).
        download: download from UCI when no directory holds the files (default True).
        checksums: expected SHA-256 per file stem (default :data:`CENSUS_SHA256`);
            for tests on small files.
        progress: show the download progress bar.

    Returns:
        :class:`Splits` with ``dense [N, 7]`` (8 with ``instance_weight="feature"``),
        ``cat [N, 31]``, ``labels [N, 3]`` (income, never_married, education),
        ``weight [N]`` only with ``instance_weight="sample_weight"``.
    """
    if instance_weight not in ("drop", "feature", "sample_weight"):
        raise DataError(
            f"instance_weight must be 'drop', 'feature' or 'sample_weight', got {instance_weight!r}"
        )
    if dense_scaling not in ("minmax", "standard"):
        raise DataError(f"dense_scaling must be 'minmax' or 'standard', got {dense_scaling!r}")
    checksums = dict(CENSUS_SHA256 if checksums is None else checksums)
    cache_root = default_cache_dir(cache_dir)
    key = _cache_key(checksums, instance_weight, split_seed, dense_scaling)
    cache_path = cache_root / "census" / f"census-{key}.npz"
    if use_cache:
        hit = _load_cache(cache_path, key)
        if hit is not None:
            arrays, meta = hit
            splits = _to_splits(arrays, meta)
            splits.info["from_cache"] = True
            splits.info["cache_path"] = str(cache_path)
            return splits

    dirs = _search_dirs(data_dir, cache_root)
    files = find_census_files(dirs)
    if files is None:
        if not download:
            raise DataError(
                "census-income.data(.gz) and census-income.test(.gz) not found in "
                + ", ".join(str(d) for d in dirs)
                + f"; set {CENSUS_DIR_ENV} or data_dir, or allow the download"
            )
        files = download_census(
            cache_root / "census-income", checksums=checksums, progress=progress
        )
    raw = {
        split: read_census_file(path, checksums[CENSUS_FILES[split]])
        for split, path in files.items()
    }
    arrays, meta = _build_arrays(raw["train"], raw["test"], instance_weight, split_seed,
                                 dense_scaling)
    meta.update(
        {
            "source": "census",
            "format_version": FORMAT_VERSION,
            "cache_key": key,
            "split_seed": int(split_seed),
            "instance_weight": instance_weight,
            "dense_scaling": dense_scaling,
            "sha256": {stem: checksums[stem] for stem in CENSUS_FILES.values()},
            "files": {split: str(p) for split, p in files.items()},
        }
    )
    if use_cache:
        try:
            _save_cache(cache_path, arrays, meta)
        except OSError as e:  # a full disk or a read-only cache: the data loaded fine
            warnings.warn(f"{cache_path}: census cache not written ({e.strerror or e}); the "
                          "data loaded fine and is used uncached", stacklevel=2)
            cache_path = None
    splits = _to_splits(arrays, meta)
    splits.info["from_cache"] = False
    splits.info["cache_path"] = str(cache_path) if use_cache and cache_path else None
    return splits
