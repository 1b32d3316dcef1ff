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
==================  ===============================================  ====================

Every file is written atomically (:mod:`adatt.train.atomic`). Under
distributed training only rank 0 writes (``writes``); every rank reads.

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp() + "/r", writes=True)
    >>> run.check_new(resume=False, overwrite=False, advice="pick another name")
    >>> run.path.mkdir()
    >>> run.append_metrics({"eval": 1})
    >>> run.append_metrics({"eval": 2})
    >>> run.restart_metrics(evals=1)
    >>> run.metrics()
    [{'eval': 1}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adatt.config import RunConfig, dump_config
from adatt.train import distributed as ddp
from adatt.train.atomic import atomic_save, atomic_write

__all__ = ["RunError", "RunDir", "RUN_FILES"]

RUN_FILES = ("config.yaml", "data.json", "metrics.jsonl", "best.pt", "checkpoint.pt",
             "results.json")


class RunError(RuntimeError):
    """A run that cannot start or continue (one line)."""


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
    def check_new(self, resume: bool, overwrite: bool, advice: str) -> None:
        """Refuse a non-empty directory unless the run resumes or overwrites it;
        refuse ``resume`` without a checkpoint."""
        if self.path.exists() and not resume and not overwrite and any(self.path.iterdir()):
            raise RunError(f"{self.path} already exists: {advice}")
        if resume and not self.file("checkpoint.pt").is_file():
            raise RunError(f"{self.file('checkpoint.pt')} not found: nothing to resume")

    def start(self, cfg: RunConfig, splits: Any) -> None:
        """A fresh run: ``config.yaml``, ``data.json``, an empty ``metrics.jsonl``;
        a previous run's ``best.pt``, ``checkpoint.pt`` and ``results.json`` removed."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.writes:
            return
        for stale in ("best.pt", "checkpoint.pt", "results.json"):
            self.file(stale).unlink(missing_ok=True)
        atomic_write(dump_config(cfg), self.file("config.yaml"))
        self.write_data(splits)
        atomic_write("", self.file("metrics.jsonl"))

    def write_data(self, splits: Any) -> None:
        """``data.json``: the data set's name, feature schema and loader facts (for a
        run on the user's files the fitted encoding: vocabularies, dense scaling), so
        that the run can be served and exported without its training data."""
        if self.writes:
            meta = {"name": splits.name, "schema": splits.schema.to_dict(), "info": splits.info}
            atomic_write(json.dumps(meta), self.file("data.json"))

    # ------------------------------------------------------------------ metrics.jsonl
    def append_metrics(self, info: dict[str, Any]) -> None:
        """One evaluation's line."""
        if self.writes:
            with open(self.file("metrics.jsonl"), "a") as f:
                f.write(json.dumps(info) + "\n")

    def restart_metrics(self, evals: int) -> None:
        """Keep the first ``evals`` lines (a resumed run drops the lines written after
        its checkpoint)."""
        if self.writes:
            lines = self.file("metrics.jsonl").read_text().splitlines()[:evals]
            atomic_write("".join(line + "\n" for line in lines), self.file("metrics.jsonl"))

    def metrics(self) -> list[dict[str, Any]]:
        """Every line of ``metrics.jsonl``."""
        return [json.loads(x) for x in self.file("metrics.jsonl").read_text().splitlines()]

    # ------------------------------------------------------------------ weights and state
    def save_best(self, state_dict: dict[str, Any]) -> None:
        if self.writes:
            atomic_save(state_dict, self.file("best.pt"))

    def load_best(self, map_location: Any = "cpu") -> dict[str, Any]:
        return torch.load(self.file("best.pt"), map_location=map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.writes:
            atomic_save(checkpoint, self.file("checkpoint.pt"))

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any]:
        return torch.load(self.file("checkpoint.pt"), map_location=map_location,
                          weights_only=False)

    # ------------------------------------------------------------------ results.json
    def write_results(self, results: dict[str, Any]) -> None:
        if self.writes:
            atomic_write(json.dumps(results, indent=2), self.file("results.json"))

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.file("results.json").read_text())
