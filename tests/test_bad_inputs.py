"""A corpus of bad inputs and faults against the real ``adatt`` command line.

Every case is an ``adatt ...`` command line with an expectation:

* ``error``: a user-facing failure: exit status 2, the last line on stderr
  starts with ``error:`` and (when given) contains a text naming the problem,
  no traceback, and the case's own check holds (the input file untouched,
  nothing written outside ``out_dir``, no temporary file left, ...);
* ``ok``: a command that used to fail and must work (exit 0, its check holds).

The corpus runs in one subprocess (``python tests/test_bad_inputs.py``: one
torch import for all cases, each case through :func:`adatt.cli.main` with its
stdout / stderr captured, an escaping exception counted as a traceback); a
few cases run as separate ``python -m adatt`` processes, killed with SIGKILL
mid-write where the case is about a kill. Small data, tiny models: the whole
module takes well under a minute.

Run against another checkout to count what it handles (``before`` counts)::

    PYTHONPATH=OTHER_CHECKOUT python tests/test_bad_inputs.py --summary
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE_SECONDS = 60  # no case takes more than a few seconds when handled
SIM = ["data.source=sim", "data.rows=2000", "train.epochs=1", "runtime.progress=false",
       "runtime.threads=1", "model.expert_sizes=[8,4]", "model.tower_sizes=[4]"]


@dataclass
class Case:
    """One command line (``{root}`` is the corpus's scratch directory) and what must happen."""

    name: str
    argv: list[str]
    expect: str = "error"  # or "ok"
    says: str = ""  # text the error line must contain
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path], str | None] | None = None  # None when fine, else what is wrong
    tags: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- fixtures


SCHEMA = """\
dense: [age, price]
categorical: [user, item]
labels:
  click: binary
  watch: regression
"""


def _csv(n: int, seed: int, header: str = "age,price,user,item,click,watch") -> str:
    import random

    r = random.Random(seed)
    rows = [header]
    for _ in range(n):
        rows.append(f"{r.gauss(40, 10):.2f},{r.random() * 9:.3f},u{r.randrange(12)},"
                    f"{r.randrange(9)},{int(r.random() < 0.3)},{r.gauss(2, 1):.3f}")
    return "\n".join(rows) + "\n"


P_SCHEMA = """\
dense: [age, price]
categorical: [user, item]
labels:
  click: binary
  buy: {kind: binary, missing: mask, condition: click, weight: bw}
  watch: regression
weight: w
"""


def _pcsv(root: Path, name: str, edit: Callable[[list[list[str]]], None] | None = None,
          schema: str = P_SCHEMA) -> None:
    """``name`` (CSV) and ``name``.yaml: partial labels (``buy`` given ``click``, masked,
    weighted by ``bw``) and a row weight; ``edit`` changes the rows (lists of fields)."""
    import random

    r = random.Random(5)
    rows = [["age", "price", "user", "item", "click", "buy", "watch", "bw", "w"]]
    for _ in range(120):
        click = int(r.random() < 0.4)
        buy = str(int(r.random() < 0.5)) if click and r.random() < 0.8 else ""
        rows.append([f"{r.gauss(40, 10):.2f}", f"{r.random() * 9:.3f}", f"u{r.randrange(12)}",
                     str(r.randrange(9)), str(click), buy, f"{r.gauss(2, 1):.3f}",
                     f"{r.random() + 0.5:.2f}" if buy else "", "1"])
    if edit is not None:
        edit(rows)
    (root / name).write_text("\n".join(",".join(x) for x in rows) + "\n")
    (root / (name + ".yaml")).write_text(schema)


def _labelled_row(rows: list[list[str]]) -> list[str]:
    return next(x for x in rows[1:] if x[5])


def _pset(name: str, edit: Callable[[list[list[str]]], None] | None = None,
          schema: str = P_SCHEMA) -> Callable[[Path], None]:
    return lambda root: _pcsv(root, name, edit, schema)


def _pinfo(name: str) -> list[str]:
    return ["data", "info", "files", "--schema", "{root}/" + name + ".yaml", "--train",
            "{root}/" + name]


def _ptrain(name: str) -> list[str]:
    return ["train", *SIM[2:], "data.source=files", "data.schema={root}/" + name + ".yaml",
            "data.train={root}/" + name, "out_dir={root}/runs", f"name=p_{name[:-4]}"]


def _set(col: int, value: str) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        _labelled_row(rows)[col] = value
    return edit


def build_fixtures(root: Path) -> None:
    """Tiny runs and files every case refers to (made with the adatt being tested)."""
    from adatt.cli import main

    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.yaml").write_text(SCHEMA)
    (root / "train.csv").write_text(_csv(300, 0))
    (root / "in.csv").write_text(_csv(40, 1))
    (root / "empty.csv").write_text("")
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (root / "a_file").write_text("not a directory\n")
    (root / "bad.yaml").write_text("train: [1, 2\n")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        main(["train", *SIM, f"out_dir={root / 'runs'}", "name=sim"])
        main(["train", "data.source=files", f"data.schema={root / 'schema.yaml'}",
              f"data.train={root / 'train.csv'}", "model.name=adatt", "model.embedding_dim=2",
              "model.expert_sizes=[6]", "model.tower_sizes=[3]", "model.shared_experts=1",
              "train.epochs=1", "runtime.progress=false", "runtime.threads=1",
              "train.batch_size=64", f"out_dir={root / 'runs'}", "name=files"])
        main(["data", "write-shards", "sim", "--out", str(root / "shards"), "--rows", "2000",
              "--shard-rows", "1000", "--row-group-rows", "500", "--valid-rows", "300",
              "--test-rows", "300", "--no-progress"])
        main(["predict", "--run", str(root / "runs" / "sim"), "--input",
              str(root / "in.csv"), "--output", str(root / "never.parquet"), "--no-progress"])
    import pyarrow.parquet as pq

    from adatt.serve.predict import dataset_table  # an encoded input for the sim run
    from adatt.train.trainer import load_run

    _, _, splits = load_run(root / "runs" / "sim")
    pq.write_table(dataset_table(splits.test, splits.schema), root / "sim_in.parquet")


def _copy_shards(root: Path, name: str) -> Path:
    import shutil

    dst = root / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(root / "shards", dst)
    return dst


def _flip_values(path: Path) -> None:
    import pyarrow.parquet as pq

    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    with open(path, "r+b") as f:
        f.seek(col.data_page_offset + col.total_compressed_size // 2)
        f.write(b"\x5a\xa5\x5a\xa5")


def _damage_header(path: Path) -> None:
    import pyarrow.parquet as pq

    col = pq.ParquetFile(path).metadata.row_group(1).column(3)
    with open(path, "r+b") as f:
        f.seek(col.data_page_offset)
        f.write(b"\xff" * 12)


def _shards_flipped(root: Path) -> None:
    d = _copy_shards(root, "shards_flipped")
    _flip_values(d / "train" / "part-00001.parquet")


def _shards_header(root: Path) -> None:
    d = _copy_shards(root, "shards_header")
    (d / "train" / "adatt-manifest.json").unlink(missing_ok=True)  # as written by another tool
    _damage_header(d / "train" / "part-00000.parquet")


def _stream(name: str) -> list[str]:
    return ["out_dir={root}/runs", f"name=stream_{name}",
            "data.source=stream", "data.schema={root}/" + name + "/schema.yaml",
            "data.train={root}/" + name + "/train",
            "data.valid={root}/" + name + "/valid.parquet",
            "data.test={root}/" + name + "/test.parquet"]


def _unchanged(name: str) -> tuple[Callable[[Path], None], Callable[[Path], str | None]]:
    def setup(root: Path) -> None:
        (root / name).write_text(_csv(40, 1))

    def check(root: Path) -> str | None:
        return None if (root / name).read_text() == _csv(40, 1) else f"{name} was changed"

    return setup, check


def _no_file(rel: str) -> Callable[[Path], str | None]:
    def check(root: Path) -> str | None:
        return f"{rel} was written" if (root / rel).exists() else None
    return check


def _stale_temp(where: str, name: str) -> Callable[[Path], None]:
    """A temporary file a killed process (pid 999999999 never runs) left in ``where``."""
    def setup(root: Path) -> None:
        (root / where).mkdir(parents=True, exist_ok=True)
        (root / where / f".{name}.adatt-999999999.tmp{Path(name).suffix}").write_text("x")
    return setup


def _no_temp(where: str) -> Callable[[Path], str | None]:
    def check(root: Path) -> str | None:
        left = [p.name for p in (root / where).iterdir() if ".tmp" in p.name]
        return f"temporary files left in {where}: {left}" if left else None
    return check


def _symlink_in(root: Path) -> None:
    (root / "link_in.csv").unlink(missing_ok=True)
    (root / "link_in.csv").symlink_to(root / "in_link_target.csv")
    (root / "in_link_target.csv").write_text(_csv(40, 1))


def _link_unchanged(root: Path) -> str | None:
    ok = (root / "in_link_target.csv").read_text() == _csv(40, 1)
    return None if ok else "the symlinked input was changed"


def _dup_csv(root: Path) -> None:
    text = _csv(20, 2, header="age,price,user,item,click,watch,age")
    (root / "dup.csv").write_text("\n".join(
        ln + (",1" if i else "") for i, ln in enumerate(text.splitlines())) + "\n")


def _lists(root: Path) -> None:
    """Files with a multi-valued column: row 3 has an empty element, row 4 five tags."""
    (root / "schema_mv.yaml").write_text(
        "multi_valued: {tags: {max_length: 4, truncate: false}}\nlabels: {click: binary}\n")
    (root / "schema_mv_pool.yaml").write_text(
        "multi_valued: {tags: {pooling: max}}\nlabels: {click: binary}\n")
    (root / "mv.csv").write_text("tags,click\n1|2,0\n,1\n3|4|5|6|7,1\n")
    (root / "mv_empty.csv").write_text("tags,click\n1|2,0\n,1\n3||4,1\n")


def _dirs(root: Path) -> None:
    (root / "adir").mkdir(exist_ok=True)
    (root / "emptyrun").mkdir(exist_ok=True)


def _escape_check(root: Path) -> str | None:
    bad = [p for p in (root / "escaped", Path(f"{root}_abs_run")) if p.exists()]
    return f"wrote outside out_dir: {bad}" if bad else None


def _exported(fmt_suffix: str, run: str) -> Callable[[Path], str | None]:
    def check(root: Path) -> str | None:
        out = root / f"exp_{run}{fmt_suffix}"
        return None if out.is_file() else f"{out.name} missing"
    return check


_BYTES: dict[str, bytes] = {}  # file contents a case's check compares with
in_same = _unchanged("same.csv")
in_rel = _unchanged("rel.csv")

CASES: list[Case] = [
    # ---- data info
    Case("info: schema file missing", ["data", "info", "files", "--schema", "{root}/nope.yaml",
                                       "--train", "{root}/train.csv"], says="nope.yaml"),
    Case("info: schema not YAML", ["data", "info", "files", "--schema", "{root}/bad.yaml",
                                   "--train", "{root}/train.csv"], says="bad.yaml"),
    Case("info: repeated CSV header name", ["data", "info", "files", "--schema",
                                            "{root}/schema.yaml", "--train", "{root}/dup.csv"],
         says="'age' appears twice", setup=_dup_csv),
    Case("info: train is a directory", ["data", "info", "files", "--schema", "{root}/schema.yaml",
                                        "--train", "{root}/adir"], setup=_dirs),
    Case("info: empty CSV", ["data", "info", "files", "--schema", "{root}/schema.yaml",
                             "--train", "{root}/empty.csv"], says="empty"),
    Case("info: not Parquet", ["data", "info", "files", "--schema", "{root}/schema.yaml",
                               "--train", "{root}/garbage.parquet"], says="garbage.parquet"),
    Case("info: sim rows negative", ["data", "info", "sim", "--rows", "-5"]),
    Case("info: unknown preset", ["data", "info", "sim", "--preset", "nope"], says="nope"),
    Case("info: correlation out of range", ["data", "info", "mmoe_synthetic",
                                            "--correlation", "2"]),
    Case("info: correlation nan", ["data", "info", "mmoe_synthetic", "--correlation", "nan"]),
    Case("info: schema with an unknown key", ["data", "info", "files", "--schema",
                                              "{root}/schema_bad_key.yaml", "--train",
                                              "{root}/train.csv"], says="schema_bad_key.yaml",
         setup=lambda r: (r / "schema_bad_key.yaml").write_text(SCHEMA + "dense_cols: [x]\n")),
    Case("info: stream shards glob matches nothing",
         ["data", "info", "files", "--schema", "{root}/schema.yaml", "--train",
          "{root}/nothing/*.csv"]),
    # ---- data info and train: partial labels, conditions, per-task weights
    Case("info: partial labels, conditions and task weights are described",
         _pinfo("p_ok.csv"), expect="ok", setup=_pset("p_ok.csv")),
    Case("info: unknown key in a label's long form", _pinfo("p_key.csv"),
         says="label 'buy': unknown key 'mising'",
         setup=_pset("p_key.csv", schema=P_SCHEMA.replace("missing:", "mising:"))),
    Case("info: missing is neither error nor mask", _pinfo("p_miss.csv"),
         says="'missing' must be error or mask",
         setup=_pset("p_miss.csv", schema=P_SCHEMA.replace("missing: mask", "missing: skip"))),
    Case("info: condition names an unknown label", _pinfo("p_cond.csv"),
         says="condition 'clik' is not a label",
         setup=_pset("p_cond.csv", schema=P_SCHEMA.replace("condition: click",
                                                           "condition: clik"))),
    Case("info: condition names a regression label", _pinfo("p_creg.csv"),
         says="a condition must be a binary label",
         setup=_pset("p_creg.csv", schema=P_SCHEMA.replace("condition: click",
                                                           "condition: watch"))),
    Case("info: condition names the label itself", _pinfo("p_self.csv"),
         says="condition 'buy' is the label itself",
         setup=_pset("p_self.csv", schema=P_SCHEMA.replace("condition: click",
                                                           "condition: buy"))),
    Case("info: task weight column missing from the file", _pinfo("p_nobw.csv"),
         says="column 'bw' (weight of label 'buy') is missing",
         setup=_pset("p_nobw.csv", lambda rows: rows[0].__setitem__(7, "bw2"))),
    Case("info: negative task weight", _pinfo("p_negw.csv"),
         says="column 'bw', row", setup=_pset("p_negw.csv", _set(7, "-1"))),
    Case("info: infinite task weight", _pinfo("p_infw.csv"),
         says="weight inf is not a finite number", setup=_pset("p_infw.csv", _set(7, "inf"))),
    Case("info: task weight missing where the task is labelled", _pinfo("p_gapw.csv"),
         says="missing weight where label 'buy' has a value",
         setup=_pset("p_gapw.csv", _set(7, ""))),
    Case("info: non-finite row weight", _pinfo("p_rowinf.csv"),
         says="column 'w', row 2: weight inf", setup=_pset("p_rowinf.csv", _set(8, "inf"))),
    Case("info: negative row weight", _pinfo("p_rowneg.csv"),
         says="column 'w', row 2: weight -2.0", setup=_pset("p_rowneg.csv", _set(8, "-2"))),
    Case("info: masked binary label not 0 or 1", _pinfo("p_two.csv"),
         says="binary label 2 is not 0 or 1", setup=_pset("p_two.csv", _set(5, "2"))),
    Case("info: label missing where missing is error", _pinfo("p_noclick.csv"),
         says="column 'click', row", setup=_pset("p_noclick.csv", _set(4, ""))),
    Case("info: conditional label missing where its condition is 1 (no mask)",
         _pinfo("p_gap.csv"), says="its condition 'click' is 1 here",
         setup=_pset("p_gap.csv", _set(5, ""), P_SCHEMA.replace("missing: mask, ", ""))),
    Case("train: condition names an unknown label", _ptrain("p_tcond.csv"),
         says="condition 'clik'", check=_no_file("runs/p_p_tcond"),
         setup=_pset("p_tcond.csv", schema=P_SCHEMA.replace("condition: click",
                                                            "condition: clik"))),
    Case("train: negative task weight", _ptrain("p_tnegw.csv"), says="column 'bw', row",
         setup=_pset("p_tnegw.csv", _set(7, "-0.5")), check=_no_file("runs/p_p_tnegw")),
    Case("train: label missing where missing is error", _ptrain("p_tnoclick.csv"),
         says="column 'click', row", setup=_pset("p_tnoclick.csv", _set(4, "")),
         check=_no_file("runs/p_p_tnoclick")),
    Case("info: multi-valued list longer than max_length", [
        "data", "info", "files", "--schema", "{root}/schema_mv.yaml", "--train", "{root}/mv.csv"],
         says="mv.csv: column 'tags', row 3: 5 elements, more than max_length 4", setup=_lists),
    Case("info: multi-valued empty element", [
        "data", "info", "files", "--schema", "{root}/schema_mv.yaml", "--train",
        "{root}/mv_empty.csv"], says="column 'tags', row 3: empty element", setup=_lists),
    Case("info: multi-valued unknown pooling", [
        "data", "info", "files", "--schema", "{root}/schema_mv_pool.yaml", "--train",
        "{root}/mv.csv"], says="pooling must be sum or mean", setup=_lists),
    # ---- data write-shards
    Case("write-shards: --out is a file", ["data", "write-shards", "sim", "--out",
                                           "{root}/a_file", "--rows", "100", "--no-progress"],
         says="not a directory"),
    Case("write-shards: --out under a file", ["data", "write-shards", "sim", "--out",
                                              "{root}/a_file/sub", "--rows", "100",
                                              "--no-progress"]),
    Case("write-shards: rows 0", ["data", "write-shards", "sim", "--out", "{root}/ws0",
                                  "--rows", "0", "--no-progress"]),
    Case("write-shards: shard rows negative", ["data", "write-shards", "sim", "--out",
                                               "{root}/ws1", "--rows", "100", "--shard-rows",
                                               "-1", "--no-progress"]),
    Case("write-shards: valid rows 0", ["data", "write-shards", "sim", "--out", "{root}/ws2",
                                        "--rows", "100", "--valid-rows", "0", "--no-progress"]),
    Case("write-shards: unknown preset", ["data", "write-shards", "sim", "--out", "{root}/ws3",
                                          "--rows", "100", "--preset", "nope", "--no-progress"]),
    Case("write-shards: existing shards, no --overwrite",
         ["data", "write-shards", "sim", "--out", "{root}/shards", "--rows", "100",
          "--no-progress"], says="--overwrite"),
    Case("write-shards: unwritable --out", ["data", "write-shards", "sim", "--out",
                                            "/proc/adatt_corpus", "--rows", "100",
                                            "--no-progress"]),
    Case("write-shards: a killed run's temporary files are swept",
         ["data", "write-shards", "sim", "--out", "{root}/ws_sweep", "--rows", "200",
          "--shard-rows", "100", "--valid-rows", "50", "--test-rows", "50", "--no-progress"],
         expect="ok", setup=_stale_temp("ws_sweep/train", "part-00000.parquet"),
         check=_no_temp("ws_sweep/train")),
    # ---- train: data integrity and config
    Case("train: flipped bytes inside a shard", ["train", *SIM[2:], *_stream("shards_flipped")],
         says="part-00001.parquet: damaged", setup=_shards_flipped),
    Case("train: damaged page header, no manifest",
         ["train", *SIM[2:], *_stream("shards_header"), "data.fit_rows=10"],
         says="part-00000.parquet", setup=_shards_header),
    Case("train: shards pattern matches nothing",
         ["train", *SIM[2:], *_stream("shards"), "data.train={root}/shards/none-*.parquet"]),
    Case("train: infinite learning rate", ["train", *SIM, "train.optimizer.lr=.inf",
                                           "out_dir={root}/runs", "name=inf_lr"],
         says="train.optimizer.lr", check=_no_file("runs/inf_lr")),
    Case("train: nan weight decay", ["train", *SIM, "train.optimizer.weight_decay=.nan",
                                     "out_dir={root}/runs", "name=nan_wd"],
         says="train.optimizer.weight_decay"),
    Case("train: infinite clip norm", ["train", *SIM, "train.grad_clip=.inf",
                                       "out_dir={root}/runs", "name=inf_clip"],
         says="train.grad_clip"),
    Case("train: nan task weight", ["train", *SIM, "train.task_weights=[1.0,.nan]",
                                    "out_dir={root}/runs", "name=nan_tw"],
         says="train.task_weights"),
    Case("train: 'inf' as text", ["train", *SIM, "train.optimizer.lr=inf",
                                  "out_dir={root}/runs", "name=inf_text"],
         says="train.optimizer.lr"),
    Case("train: name with ../", ["train", *SIM, "out_dir={root}/runs", "name=../escaped"],
         says="name", check=_escape_check),
    Case("train: absolute name", ["train", *SIM, "out_dir={root}/runs",
                                  "name={root}_abs_run"],
         says="name", check=_escape_check),
    Case("train: invalid device string", ["train", *SIM, "runtime.device=gpu0",
                                          "out_dir={root}/runs", "name=dev"],
         says="runtime.device"),
    Case("train: negative gate width", ["train", *SIM, "model.name=mmoe",
                                        "model.expert_sizes=[[8,4]]", "model.gate_hidden=[-3]",
                                        "out_dir={root}/runs", "name=gate"],
         says="model.gate_hidden"),
    Case("train: zero expert size", ["train", *SIM, "model.expert_sizes=[0,4]",
                                     "out_dir={root}/runs", "name=zero"],
         says="expert"),
    Case("train: config file missing", ["train", "--config", "{root}/nope.yaml"],
         says="nope.yaml"),
    Case("train: override without =", ["train", "train.epochs"], says="key=value"),
    Case("train: bf16 with learned embeddings (shipped sim config)",
         ["train", "--config", str(REPO / "configs" / "sim" / "adatt_sp.yaml"),
          "data.rows=2000", "train.bf16=true", "runtime.progress=false", "runtime.threads=1",
          "out_dir={root}/runs", "name=bf16"], expect="ok"),
    # ---- eval
    Case("eval: unknown split", ["eval", "--run", "{root}/runs/sim", "--splits", "bogus"],
         says="bogus"),
    Case("eval: one unknown split of two", ["eval", "--run", "{root}/runs/sim", "--splits",
                                            "valid,tset"], says="tset"),
    Case("eval: run missing", ["eval", "--run", "{root}/runs/nope"]),
    Case("eval: run directory empty", ["eval", "--run", "{root}/emptyrun"], setup=_dirs),
    Case("eval: baseline missing", ["eval", "--run", "{root}/runs/sim", "--baseline",
                                    "{root}/runs/nope"], says="nope"),
    # ---- predict
    Case("predict: output is the input", ["predict", "--run", "{root}/runs/files", "--input",
                                          "{root}/same.csv", "--output", "{root}/same.csv",
                                          "--no-progress"],
         says="input", setup=in_same[0], check=in_same[1]),
    Case("predict: output is the input by another relative path",
         ["predict", "--run", "{root}/runs/files", "--input", "{root}/rel.csv", "--output",
          "{root}/adir/../rel.csv", "--no-progress"], says="input",
         setup=lambda r: (_dirs(r), in_rel[0](r)), check=in_rel[1]),
    Case("predict: output is a symlink to the input",
         ["predict", "--run", "{root}/runs/files", "--input", "{root}/in_link_target.csv",
          "--output", "{root}/link_in.csv", "--no-progress"], says="input",
         setup=_symlink_in, check=_link_unchanged),
    Case("predict: input missing", ["predict", "--run", "{root}/runs/files", "--input",
                                    "{root}/nope.csv", "--output", "{root}/o.csv"],
         says="nope.csv", check=_no_file("o.csv")),
    Case("predict: output suffix", ["predict", "--run", "{root}/runs/files", "--input",
                                    "{root}/in.csv", "--output", "{root}/o.txt"]),
    Case("predict: batch size 0", ["predict", "--run", "{root}/runs/files", "--input",
                                   "{root}/in.csv", "--output", "{root}/o.csv",
                                   "--batch-size", "0"], check=_no_file("o.csv")),
    Case("predict: run missing", ["predict", "--run", "{root}/runs/nope", "--input",
                                  "{root}/in.csv", "--output", "{root}/o.csv"]),
    Case("predict: id column missing", ["predict", "--run", "{root}/runs/files", "--input",
                                        "{root}/in.csv", "--output", "{root}/o.csv",
                                        "--id-column", "uid", "--no-progress"], says="uid",
         check=_no_file("o.csv")),
    Case("predict: output is a directory", ["predict", "--run", "{root}/runs/files",
                                            "--input", "{root}/in.csv", "--output",
                                            "{root}/adir.csv", "--no-progress"],
         setup=lambda r: (r / "adir.csv").mkdir(exist_ok=True)),
    Case("predict: repeated header name in the input",
         ["predict", "--run", "{root}/runs/files", "--input", "{root}/dup.csv", "--output",
          "{root}/o.csv", "--no-progress"], says="'age' appears twice", setup=_dup_csv,
         check=_no_file("o.csv")),
    Case("predict: input is a directory", ["predict", "--run", "{root}/runs/files", "--input",
                                           "{root}/adir", "--output", "{root}/o.csv"],
         setup=_dirs),
    Case("predict: input empty", ["predict", "--run", "{root}/runs/files", "--input",
                                  "{root}/empty.csv", "--output", "{root}/o.csv"]),
    Case("predict: input not Parquet", ["predict", "--run", "{root}/runs/sim", "--input",
                                        "{root}/garbage.parquet", "--output",
                                        "{root}/o.parquet"], says="garbage.parquet"),
    Case("predict: a killed run's temporary file is swept",
         ["predict", "--run", "{root}/runs/sim", "--input", "{root}/sim_in.parquet",
          "--output", "{root}/pout/p.parquet", "--no-progress"], expect="ok",
         setup=_stale_temp("pout", "p.parquet"), check=_no_temp("pout")),
    # ---- export
    Case("export: run missing", ["export", "--run", "{root}/runs/nope", "--format",
                                 "torchscript"]),
    Case("export: output is a directory", ["export", "--run", "{root}/runs/sim", "--format",
                                           "torchscript", "--output", "{root}/adir"],
         setup=_dirs),
    Case("export: output under a file", ["export", "--run", "{root}/runs/sim", "--format",
                                         "torchscript", "--output", "{root}/a_file/m.pt"]),
    Case("export: --format export, simulator run",
         ["export", "--run", "{root}/runs/sim", "--format", "export", "--output",
          "{root}/exp_sim.pt2"], expect="ok", check=_exported(".pt2", "sim")),
    Case("export: --format export, files run",
         ["export", "--run", "{root}/runs/files", "--format", "export", "--output",
          "{root}/exp_files.pt2"], expect="ok", check=_exported(".pt2", "files")),
    Case("export: --format export, learned embeddings of 16 (bf16 run)",
         ["export", "--run", "{root}/runs/bf16", "--format", "export", "--output",
          "{root}/exp_bf16.pt2"], expect="ok", check=_exported(".pt2", "bf16")),
    Case("export: output is the run's own weights",
         ["export", "--run", "{root}/runs/sim", "--format", "torchscript", "--output",
          "{root}/runs/sim/best.pt"], says="best.pt",
         setup=lambda r: _BYTES.__setitem__("best", (r / "runs/sim/best.pt").read_bytes()),
         check=lambda r: None if (r / "runs/sim/best.pt").read_bytes() == _BYTES["best"]
         else "the run's best.pt was replaced"),
    # ---- experiment option checks
    Case("experiment: unknown name", ["experiment", "nope"], says="nope"),
    Case("experiment: rows below the floor", ["experiment", "ablation", "--rows", "5"],
         says="--rows"),
    Case("experiment: zero threads", ["experiment", "ablation", "--threads", "0"],
         says="--threads"),
    Case("experiment: option it does not take", ["experiment", "ablation", "--groups", "A"],
         says="--groups"),
    Case("experiment: unknown model", ["experiment", "task-groups", "--models", "Nope"],
         says="Nope"),
    Case("experiment: nothing to run", ["experiment", "ablation", "--no-census", "--no-sim"]),
    Case("experiment: zero seeds", ["experiment", "ablation", "--seeds", "0"], says="--seeds"),
    Case("experiment: negative workers", ["experiment", "census-table5", "--workers", "-1"],
         says="--workers"),
    Case("experiment: tune seeds without the tuned protocol",
         ["experiment", "census-table5", "--tune-seeds", "2"], says="--tune-seeds"),
    Case("experiment: out-dir is a file", ["experiment", "ablation", "--quick", "--out-dir",
                                           "{root}/a_file"], says="a_file"),
]


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    name: str
    handled: bool
    code: int | None
    last_line: str
    why: str


def run_case(case: Case, root: Path) -> Result:
    """Run one case through ``adatt.cli.main`` in this process; judge it."""
    from adatt.cli import main

    argv = [a.replace("{root}", str(root)) for a in case.argv]
    why = ""
    if case.setup is not None:
        case.setup(root)
    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    tb = ""
    def too_long(signum, frame):  # a check that did not fail fast ran the command for real
        raise TimeoutError(f"still running after {CASE_SECONDS} s")

    old_handler = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(CASE_SECONDS)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # a traceback
            tb = traceback.format_exc()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old_handler)
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if tb or "Traceback (most recent call last)" in text:
        why = "traceback: " + (tb or text).strip().splitlines()[-1][:200]
    elif case.expect == "error":
        if code != 2:
            why = f"exit {code}, expected 2"
        elif not last.startswith("error:"):
            why = f"last stderr line does not start with 'error:': {last[:120]!r}"
        elif case.says and case.says not in last:
            why = f"the error does not name {case.says!r}: {last[:160]!r}"
    elif code != 0:
        why = f"exit {code}, expected 0: {last[:160]!r}"
    if not why and case.check is not None:
        why = case.check(root) or ""
    return Result(case.name, not why, code, last, why)


def run_corpus(root: Path, log: bool = False) -> list[Result]:
    build_fixtures(root)
    results = []
    for c in CASES:
        t = time.perf_counter()
        r = run_case(c, root)
        results.append(r)
        if log:
            print(f"{time.perf_counter() - t:5.1f} s {'ok  ' if r.handled else 'FAIL'} {c.name}: "
                  f"{r.why or r.last_line[:110]}", file=sys.stderr, flush=True)
    return results


def _main() -> int:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="adatt_corpus_") as tmp:
        try:
            results = run_corpus(Path(tmp), log="--summary" in sys.argv)
        finally:
            import shutil

            shutil.rmtree(f"{tmp}_abs_run", ignore_errors=True)  # an absolute run name
    if "--summary" in sys.argv:
        print(f"handled {sum(r.handled for r in results)} of {len(results)}")
    else:
        print(json.dumps([r.__dict__ for r in results]))
    return 0


# --------------------------------------------------------------------------- tests


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_corpus_every_case_handled(tmp_path):
    """Every case handled; nothing written in the working directory (tmp_path) either."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(CASES) >= 50
    failed = [f"{r['name']}: {r['why']}" for r in results if not r["handled"]]
    assert not failed, f"{len(failed)} of {len(results)} cases not handled: " + "; ".join(failed)
    assert list(tmp_path.iterdir()) == []


def _adatt(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adatt", *args], env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_real_command_one_line_error_exit_2(tmp_path):
    p = _adatt("train", "data.source=sim", "train.optimizer.lr=.inf")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.strip().splitlines() == ["error: train.optimizer.lr: must be a finite number "
                                        "(got inf)"]


def _kill_while_writing(proc: subprocess.Popen, directory: Path, pattern: str,
                        timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` once a temporary file matching ``pattern`` shows in ``directory``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if directory.is_dir() and any(directory.glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    return False


def test_killed_write_shards_leaves_no_temporary_file_after_the_next_run(tmp_path):
    out = tmp_path / "shards"
    args = ["data", "write-shards", "sim", "--out", str(out), "--rows", "400000",
            "--shard-rows", "400000", "--row-group-rows", "20000", "--no-progress"]
    p = _adatt(*args)
    assert _kill_while_writing(p, out / "train", ".part-*.adatt-*.tmp*"), "never caught writing"
    assert list((out / "train").glob(".part-*.tmp*"))  # the killed process's temporary file
    assert not (out / "train" / "adatt-manifest.json").exists()  # written last: not yet
    small = ["data", "write-shards", "sim", "--out", str(out), "--rows", "300",
             "--shard-rows", "100", "--valid-rows", "50", "--test-rows", "50", "--no-progress"]
    q = _adatt(*small)
    q.communicate(timeout=120)
    assert q.returncode == 0
    left = [p.name for d in (out, out / "train") for p in d.iterdir() if ".tmp" in p.name]
    assert left == [] and (out / "train" / "adatt-manifest.json").is_file()


if __name__ == "__main__":
    sys.exit(_main())


def _sim_configs() -> list[Path]:
    return sorted((REPO / "configs" / "sim").glob("*.yaml"))


def test_bf16_trains_every_shipped_sim_config(tmp_path):
    """``train.bf16=true`` with the shipped simulator configs (learned embeddings of 16)."""
    import math

    import torch

    from adatt.config import load_config
    from adatt.train.trainer import train

    threads = torch.get_num_threads()
    try:
        for path in _sim_configs():
            cfg = load_config(path, ["data.rows=2000", "train.bf16=true", "runtime.progress=false",
                                     "runtime.threads=1", f"out_dir={tmp_path}"])
            assert cfg.model.get("embedding_dim"), path.name  # learned embeddings
            res = train(cfg)
            losses = [m.get("ne", m.get("mse")) for m in res["valid"].values()]
            assert all(math.isfinite(v) for v in losses), (path.name, res["valid"])
    finally:
        torch.set_num_threads(threads)
