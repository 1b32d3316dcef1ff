"""The run directory: every file of ``<out_dir>/<name>/`` is written here, in one place.

==================  ===============================================  ====================
file                content                                          written by
==================  ===============================================  ====================
``config.yaml``     the resolved run config                          :meth:`RunDir.start`
``data.json``       data set name, feature schema, loader facts      :meth:`RunDir.start`
``metrics.jsonl``   one JSON line per evaluation                     :meth:`RunDir.append_metrics`
``best.pt``         the selected weights (a model state dict)        :meth:`RunDir.save_best`
``checkpoint.pt``   the full training state for ``--resume``         :meth:`RunDir.save_checkpoint`
``results.json``    the run's results (:mod:`adatt.train.results`)   :meth:`RunDir.write_results`
``*.pt.sha256``     the digests of ``best.pt`` / ``checkpoint.pt``   with the ``.pt`` file
==================  ===============================================  ====================

Every file is written atomically (:mod:`adatt.train.atomic`). Under
distributed training only rank 0 writes (``writes``); every rank reads.

Failures are one-line :class:`RunError` messages naming the file:

* ``best.pt`` and ``checkpoint.pt`` are verified on load: each has a
  ``<file>.sha256`` beside it (the digests of the file being replaced and of
  its replacement while a write is under way, so a kill at any moment leaves a
  file whose digest is listed); a file whose digest is not listed, or that
  does not load, is damaged;
* a missing or damaged ``metrics.jsonl`` on resume;
* a full disk while writing (``no space left``; the previous file survives);
* ``--resume`` with a config that differs from the stored one in a key outside
  :data:`RESUMABLE_KEYS` (:meth:`RunDir.check_resume`).

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp() + "/r", writes=True)
    >>> run.check_new(resume=False, overwrite=False, advice="pick another name")
    False
    >>> run.path.mkdir()
    >>> run.append_metrics({"eval": 1})
    >>> run.append_metrics({"eval": 2})
    >>> run.restart_metrics(evals=1)
    >>> run.metrics()
    [{'eval': 1}]
    >>> run.save_best({"w": torch.ones(2)})
    >>> run.load_best()["w"].tolist()
    [1.0, 1.0]
    >>> _ = run.file("best.pt").write_bytes(b"damaged")
    >>> run.load_best()
    Traceback (most recent call last):
    adatt.train.rundir.RunError: .../best.pt is damaged (its checksum does not match ...
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from adatt.config import RunConfig, dump_config
from adatt.train import distributed as ddp
from adatt.train.atomic import atomic_write

__all__ = ["RunError", "RunDir", "RUN_FILES", "RESUMABLE_KEYS", "config_diff"]

RUN_FILES = ("config.yaml", "data.json", "metrics.jsonl", "best.pt", "checkpoint.pt",
             "results.json", "best.pt.sha256", "checkpoint.pt.sha256")


class RunError(RuntimeError):
    """A run that cannot start or continue (one line)."""


#: Dotted config keys that ``--resume`` may change: the training budget, early
#: stopping, and the execution settings (where and how fast, not what is computed).
#: The new values are applied and recorded in ``config.yaml``.
RESUMABLE_KEYS = (
    "train.epochs", "train.max_examples", "train.selection.patience",
    # execution settings and tracking
    "runtime.threads", "runtime.progress", "runtime.device", "runtime.tensorboard",
    "runtime.distributed", "runtime.keep_freed_memory",
    "tracking.backend", "tracking.uri", "tracking.experiment",
    "out_dir",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two dumped configs (sorted).

    >>> config_diff({"train": {"epochs": 2, "optimizer": {"lr": 0.1}}, "name": "r"},
    ...             {"train": {"epochs": 3, "optimizer": {"lr": 0.1}}, "name": "r"})
    ['train.epochs']
    """
    a, b = _flatten(stored), _flatten(requested)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, KeyError) != b.get(k, KeyError))


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``path``: a one-line :class:`RunError`."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RunError(f"no space left on the device writing {path} ({e.strerror}); the "
                       f"previous {path.name} survives intact: free space, then --resume") from None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunDir:
    """The files of one run directory.

    Args:
        path: ``<out_dir>/<name>``.
        writes: whether this process writes the files (default: rank 0 of a
            distributed run, or the only process; decided at each write).
    """

    def __init__(self, path: str | Path, writes: bool | None = None) -> None:
        self.path = Path(path)
        self._writes = writes

    @property
    def writes(self) -> bool:
        return ddp.is_main() if self._writes is None else self._writes

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ starting
    def check_new(self, resume: bool, overwrite: bool, advice: str) -> bool:
        """Refuse a non-empty directory unless the run resumes or overwrites it
        (``advice`` names the ways on); returns whether the run resumes.

        ``resume`` of a directory without ``checkpoint.pt`` (a run killed before its
        first checkpoint: nothing was trained to keep) starts it from scratch, and
        refuses a directory that holds no run's files."""
        exists = self.path.exists() and any(self.path.iterdir())
        if exists and not resume and not overwrite:
            raise RunError(f"{self.path} already exists: {advice}")
        if resume and not self.file("checkpoint.pt").is_file():
            if exists and not self.file("config.yaml").is_file():
                raise RunError(f"{self.path} holds no run (no config.yaml) and nothing to "
                               "resume: pick another name, or --overwrite to replace it")
            return False
        return resume

    def check_resume(self, cfg: RunConfig) -> RunConfig:
        """The config a resumed run continues with: the stored ``config.yaml`` with
        the requested values of :data:`RESUMABLE_KEYS` (recorded in ``config.yaml``);
        any other difference is a one-line :class:`RunError` listing the keys."""
        from adatt.config import load_saved_config

        path = self.file("config.yaml")
        try:
            stored = load_saved_config(path).model_dump(mode="json")
        except Exception as e:  # a damaged config.yaml cannot be compared
            raise RunError(f"{path} is unreadable ({str(e).splitlines()[0]}): "
                           "--overwrite to start the run again") from None
        diff = config_diff(stored, cfg.model_dump(mode="json"))
        fixed = [k for k in diff if k not in RESUMABLE_KEYS]
        if fixed:
            raise RunError(f"--resume with a config that differs from {path} in "
                           f"{', '.join(fixed)} (only {', '.join(RESUMABLE_KEYS[:3])} and "
                           "execution settings may change): restore them, or --overwrite "
                           "to start again, or name=... for a new run")
        if diff and self.writes:
            with _disk_errors(path):
                atomic_write(dump_config(cfg), path)
        return cfg

    def start(self, cfg: RunConfig, splits: Any) -> None:
        """A fresh run: ``config.yaml``, ``data.json``, an empty ``metrics.jsonl``;
        a previous run's ``best.pt``, ``checkpoint.pt`` and ``results.json`` removed."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.writes:
            return
        for stale in ("best.pt", "checkpoint.pt", "results.json", "best.pt.sha256",
                      "checkpoint.pt.sha256"):
            self.file(stale).unlink(missing_ok=True)
        with _disk_errors(self.file("config.yaml")):
            atomic_write(dump_config(cfg), self.file("config.yaml"))
        self.write_data(splits)
        with _disk_errors(self.file("metrics.jsonl")):
            atomic_write("", self.file("metrics.jsonl"))

    def write_data(self, splits: Any) -> None:
        """``data.json``: the data set's name, feature schema and loader facts (for a
        run on the user's files the fitted encoding: vocabularies, dense scaling), so
        that the run can be served and exported without its training data."""
        if self.writes:
            meta = {"name": splits.name, "schema": splits.schema.to_dict(), "info": splits.info}
            with _disk_errors(self.file("data.json")):
                atomic_write(json.dumps(meta), self.file("data.json"))

    # ------------------------------------------------------------------ metrics.jsonl
    def append_metrics(self, info: dict[str, Any]) -> None:
        """One evaluation's line."""
        if self.writes:
            path = self.file("metrics.jsonl")
            with _disk_errors(path), open(path, "a") as f:
                f.write(json.dumps(info) + "\n")

    def restart_metrics(self, evals: int) -> None:
        """Keep the first ``evals`` lines (a resumed run drops the lines written after
        its checkpoint); a missing file, or one with fewer or unreadable lines, is a
        :class:`RunError` naming it."""
        path = self.file("metrics.jsonl")
        if not path.is_file():
            raise RunError(f"{path} not found: the run cannot be resumed without it "
                           "(--overwrite to start it again)")
        lines = path.read_text(errors="replace").splitlines()[:evals]
        try:
            for line in lines:
                json.loads(line)
        except ValueError:
            lines = []
        if len(lines) < evals:
            raise RunError(f"{path} is damaged (its first {evals} evaluations are not all "
                           "readable): --overwrite to start the run again")
        if self.writes:
            with _disk_errors(path):
                atomic_write("".join(line + "\n" for line in lines), path)

    def metrics(self) -> list[dict[str, Any]]:
        """Every line of ``metrics.jsonl``."""
        return [json.loads(x) for x in self.file("metrics.jsonl").read_text().splitlines()]

    # ------------------------------------------------------------------ weights and state
    def _save_verified(self, obj: Any, name: str) -> None:
        """``torch.save`` to ``name`` atomically, its digest in ``<name>.sha256``.

        Order: the sidecar lists the old and the new digest, the file is replaced,
        the sidecar lists the new one; every moment's file has its digest listed."""
        path, side = self.file(name), self.file(name + ".sha256")
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        new = _digest(data)
        old = side.read_text().split() if side.is_file() else []
        with _disk_errors(path):
            atomic_write("\n".join([new, *old[:1]]) + "\n", side)
            tmp = path.with_suffix(path.suffix + ".tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            atomic_write(new + "\n", side)

    def _load_verified(self, name: str, map_location: Any, weights_only: bool) -> Any:
        """``torch.load`` of ``name`` after checking it against ``<name>.sha256`` (when
        present: runs made before it load unchecked); any failure: a :class:`RunError`."""
        path, side = self.file(name), self.file(name + ".sha256")
        if not path.is_file():
            raise RunError(f"{path} not found")
        data = path.read_bytes()
        if side.is_file() and _digest(data) not in side.read_text().split():
            raise RunError(f"{path} is damaged (its checksum does not match {side.name}): "
                           "--overwrite to start the run again")
        try:
            return torch.load(io.BytesIO(data), map_location=map_location,
                              weights_only=weights_only)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunError(f"{path} is damaged or truncated ({msg}): --overwrite to start "
                           "the run again") from None

    def save_best(self, state_dict: dict[str, Any]) -> None:
        if self.writes:
            self._save_verified(state_dict, "best.pt")

    def load_best(self, map_location: Any = "cpu") -> dict[str, Any]:
        return self._load_verified("best.pt", map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.writes:
            self._save_verified(checkpoint, "checkpoint.pt")

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        return self._load_verified("checkpoint.pt", map_location, weights_only=False)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Around loading ``checkpoint.pt``'s states into the run's objects: a state
        that does not fit them (another model, optimizer or weighting) is a one-line
        :class:`RunError` naming the file, not a size-mismatch traceback."""
        try:
            yield
        except (KeyError, RuntimeError, ValueError) as e:
            raise RunError(f"{self.file('checkpoint.pt')} does not fit this run "
                           f"({str(e).splitlines()[0]}): --overwrite to start again") from None

    # ------------------------------------------------------------------ results.json
    def write_results(self, results: dict[str, Any]) -> None:
        if self.writes:
            with _disk_errors(self.file("results.json")):
                atomic_write(json.dumps(results, indent=2), self.file("results.json"))

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.file("results.json").read_text())
