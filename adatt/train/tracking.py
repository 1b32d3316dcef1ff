"""Experiment tracking: one small interface, a no-op when off, TensorBoard and MLflow backends.

Every recipe (:func:`~adatt.train.trainer.train`, single process or DDP;
:func:`~adatt.train.ensemble.train_ensemble`; the TorchRec recipe) makes the
same calls on a :class:`Tracker`:

==========================  ================================================================
call                        when
==========================  ================================================================
:func:`open_tracker`        before the run directory is made: a missing package or a bad
                            URI is a one-line :class:`~adatt.config.ConfigError`, and no
                            directory is left behind
``start(params)``           after the run directory is made: the resolved config, flattened
                            to dotted keys (:func:`flatten`)
``log_metrics(step, m)``    after every evaluation: ``m`` = :func:`eval_metrics` of the
                            ``metrics.jsonl`` line, ``step`` = training examples seen
``log_results(results)``    once, the numbers of ``results.json``
``log_artifact(path)``      ``best.pt``, ``results.json``, ``config.yaml``
``close(status)``           ``"FINISHED"`` (an interrupted run is closed ``"FAILED"`` at exit)
==========================  ================================================================

Backends (config section ``tracking``, :class:`~adatt.config.TrackingConfig`):

* ``none`` (default): :class:`NoTracker`; nothing is tracked and no backend is imported;
* ``tensorboard`` (``pip install 'adatt[tensorboard]'``; also what
  ``runtime.tensorboard=true`` turns on): event files in ``<run>/tb``, or
  ``<tracking.uri>/<name>`` when ``tracking.uri`` is set;
* ``mlflow`` (``pip install 'adatt[mlflow]'``): one MLflow run per training
  run, named after it, in experiment ``tracking.experiment`` of the tracking
  store ``tracking.uri`` (default ``$MLFLOW_TRACKING_URI``, else
  ``sqlite:///<out_dir>/mlflow.db``); a local ``sqlite:`` store keeps the
  artifacts in ``mlartifacts/`` beside the database.

Under distributed training only rank 0 tracks (every other rank gets a
:class:`NoTracker`).

Example:
    >>> flatten({"train": {"optimizer": {"lr": 0.01}, "seed": 0}, "name": "r"})
    {'train.optimizer.lr': 0.01, 'train.seed': 0, 'name': 'r'}
    >>> line = {"eval": 1, "examples": 64, "train_loss": [0.5, 0.25], "score": 0.7,
    ...         "lr": 0.001, "valid": {"ctr": {"auc": 0.7}, "cvr": {"auc": 0.6}}}
    >>> eval_metrics(line, ["ctr", "cvr"])  # doctest: +NORMALIZE_WHITESPACE
    {'score': 0.7, 'lr': 0.001, 'train_loss/ctr': 0.5, 'train_loss/cvr': 0.25,
     'valid/ctr/auc': 0.7, 'valid/cvr/auc': 0.6}
    >>> from adatt.config import load_config
    >>> tracker = open_tracker(load_config(None, []), "runs/r")
    >>> type(tracker).__name__
    'NoTracker'
    >>> tracker.log_metrics(64, {"score": 0.7})  # nothing happens
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adatt.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from adatt.train.progress import Progress
    from adatt.train.rundir import RunDir

__all__ = ["Tracker", "NoTracker", "TensorBoardTracker", "MlflowTracker", "open_tracker",
           "backend_of", "flatten", "eval_metrics", "log_evaluation", "numeric", "finish"]


class Tracker(Protocol):
    """What a recipe tells a tracking backend."""

    def start(self, params: dict[str, Any]) -> None:
        """The run's parameters (dotted keys), once, after the run directory exists."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One evaluation's numbers at ``step`` (training examples seen)."""

    def log_results(self, results: dict[str, Any]) -> None:
        """The final results (``results.json``)."""

    def log_artifact(self, path: str | Path) -> None:
        """A file of the run (``best.pt``, ``results.json``, a report)."""

    def close(self, status: str = "FINISHED") -> None:
        """End the tracked run (``FINISHED`` or ``FAILED``)."""


class NoTracker:
    """Tracking off: every call does nothing."""

    def start(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_results(self, results: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def flatten(tree: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts to one level with ``sep``-joined keys (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + sep, sep))
        else:
            out[key] = v
    return out


def numeric(tree: dict[str, Any], sep: str = "/") -> dict[str, float]:
    """The finite numbers of a nested dict, flattened with ``sep`` (bools, strings,
    lists and None left out)."""
    return {k: float(v) for k, v in flatten(tree, sep=sep).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def eval_metrics(line: dict[str, Any], task_names: Sequence[str]) -> dict[str, float]:
    """The tracked numbers of one ``metrics.jsonl`` line: ``score``, ``lr``,
    ``train_loss/<task>`` and ``valid/<task>/<metric>``."""
    out = {k: float(line[k]) for k in ("score", "lr") if line.get(k) is not None}
    for task, loss in zip(task_names, line.get("train_loss") or [], strict=False):
        out[f"train_loss/{task}"] = float(loss)
    out.update(numeric({"valid": line.get("valid", {})}))
    return out


def log_evaluation(run: RunDir, tracker: Tracker, progress: Progress, task_names: Sequence[str],
                   *, train_loss: list[float], score: float, improved: bool,
                   valid: dict[str, dict[str, float]], lr: float) -> dict[str, Any]:
    """One evaluation's record, the same for every recipe: appended to the run's
    ``metrics.jsonl`` and sent to the tracker; returned for the caller's own use."""
    line = {**progress.at(), "train_loss": train_loss, "score": score, "improved": improved,
            "valid": valid, "lr": lr}
    run.append_metrics(line)
    tracker.log_metrics(progress.examples, eval_metrics(line, task_names))
    return line


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """TensorBoard event files in ``log_dir`` (made by :meth:`start`).

    Params go in as a text summary (``config``), metrics as scalars at the
    step, the results' numbers as scalars ``results/...`` at the last step;
    artifacts stay in the run directory (TensorBoard stores no files).
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tracking.backend=tensorboard needs the tensorboard package: "
                              "pip install 'adatt[tensorboard]'") from None
        self._cls, self.log_dir = SummaryWriter, Path(log_dir)
        self._writer: Any = None
        self._step = 0

    def start(self, params: dict[str, Any]) -> None:
        self._writer = self._cls(str(self.log_dir))
        text = "\n".join(f"    {k}: {v}" for k, v in params.items())  # markdown code block
        self._writer.add_text("config", text, 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._step = step
        for k, v in metrics.items():
            self._writer.add_scalar(k, v, step)

    def log_results(self, results: dict[str, Any]) -> None:
        for k, v in numeric(results).items():
            self._writer.add_scalar(f"results/{k}", v, self._step)

    def log_artifact(self, path: str | Path) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --------------------------------------------------------------------------- MLflow

_MLFLOW_NAME = re.compile(r"[^0-9A-Za-z_\-. /:]")


def _mlflow_key(key: str) -> str:
    """MLflow allows alphanumerics, ``_ - . space / :`` in names; anything else -> ``_``."""
    return _MLFLOW_NAME.sub("_", key)[:250]


class MlflowTracker:
    """One MLflow run in experiment ``experiment`` of the tracking store ``uri``.

    The constructor connects (creating a local ``sqlite:`` store and the
    experiment when missing); :meth:`start` creates the run, named ``run_name``.
    A run that is not closed (an exception, Ctrl-C) is ended ``FAILED`` at exit.
    """

    def __init__(self, uri: str, experiment: str, run_name: str,
                 tags: dict[str, str] | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("tracking.backend=mlflow needs the mlflow package: "
                              "pip install 'adatt[mlflow]'") from None
        for name in ("mlflow", "alembic"):  # store creation chatter (INFO) off
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri, self.run_name, self.tags = uri, run_name, dict(tags or {})
        self.run_id: str | None = None
        try:
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_root(uri, experiment))
            else:
                self.experiment_id = exp.experiment_id
        except Exception as e:  # a bad URI: MlflowException, OSError, SQLAlchemy errors
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"tracking.uri={uri}: MLflow cannot open it ({first})") from None

    def start(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        atexit.register(self._end_unclosed)
        items = [Param(_mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_mlflow_key(k), v, now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_results(self, results: dict[str, Any]) -> None:
        self.log_metrics(int(results.get("train_examples") or 0),
                         {f"results/{k}": v for k, v in numeric(results).items()})
        self.client.log_dict(self.run_id, results, "results.json")

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            atexit.unregister(self._end_unclosed)
            self.run_id = None

    def _end_unclosed(self) -> None:
        try:
            self.close("FAILED")
        except Exception:  # the store may be gone at exit
            pass


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a local ``sqlite:`` store: ``mlartifacts/<experiment>`` beside the
    database (else the store's default)."""
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        db = Path(uri[len("sqlite:///"):]).resolve()
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


# --------------------------------------------------------------------------- opening


def backend_of(cfg: RunConfig) -> str:
    """The tracking backend of ``cfg``: ``tracking.backend``, or ``tensorboard`` when
    it is ``none`` and ``runtime.tensorboard=true``."""
    backend = cfg.tracking.backend
    if backend == "none" and cfg.runtime.tensorboard:
        return "tensorboard"
    return backend


def open_tracker(cfg: RunConfig, run_path: str | Path, main: bool = True,
                 tags: dict[str, str] | None = None) -> Tracker:
    """The configured tracker of the run at ``run_path`` (``main``: this process
    tracks; False on every rank but 0). Call it before the run directory is made:
    a missing package or a store that cannot be opened raises
    :class:`~adatt.config.ConfigError` (one line)."""
    backend = backend_of(cfg)
    if backend == "none" or not main:
        return NoTracker()
    tc = cfg.tracking
    if backend == "tensorboard":
        log_dir = Path(tc.uri) / cfg.name if tc.uri else Path(run_path) / "tb"
        return TensorBoardTracker(log_dir)
    uri = tc.uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(cfg.out_dir).resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowTracker(uri, tc.experiment, cfg.name, tags)


def finish(tracker: Tracker, results: dict[str, Any], files: Sequence[str | Path]) -> None:
    """The end of a tracked run: the results, the existing ``files`` as artifacts, close."""
    tracker.log_results(results)
    for f in files:
        if Path(f).is_file():
            tracker.log_artifact(f)
    tracker.close("FINISHED")
