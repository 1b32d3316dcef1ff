"""A run's model and data from its config, and a finished run read back from its directory.

* :func:`build_model`: the configured model for a data schema;
* :func:`load_splits_for`: the configured data;
* :func:`load_run_model` / :func:`load_run`: a finished run's config and
  selected model (and data), for evaluation, serving and export;
* :func:`finished_results`: a finished run's results when it was made with the
  same config (experiments skip those seeds).

Example:
    >>> from adatt.config import load_config
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> cfg = load_config(None, ["model.name=mmoe", "model.expert_sizes=[[8]]"])
    >>> schema = FeatureSchema(("x",), ("c",), (5,), (TaskSpec("a"), TaskSpec("b")))
    >>> type(build_model(cfg.model, schema)).__name__
    'MMoE'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from adatt.config import ConfigError, RunConfig
from adatt.data.schema import FeatureSchema
from adatt.train.rundir import RunDir, RunError

__all__ = ["build_model", "load_splits_for", "load_run", "load_run_model", "finished_results",
           "EXECUTION_KEYS"]


def build_model(model_cfg: dict[str, Any], schema: FeatureSchema) -> nn.Module:
    """The configured model for a data schema."""
    from adatt.models import create_model

    opts = {k: v for k, v in model_cfg.items() if k != "name"}
    if schema.multi_valued:  # their padded lists follow the single-valued fields in cat
        opts["multi_valued"] = schema.bag_specs
    try:
        return create_model(
            model_cfg["name"],
            num_tasks=schema.num_tasks,
            dense_dim=schema.dense_dim,
            cat_cardinalities=list(schema.cardinalities),
            **opts,
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None


def load_splits_for(cfg: RunConfig) -> Any:
    """The train/valid/test splits of ``cfg.data``."""
    from adatt.data.config import load_splits

    return load_splits(cfg.data)


def _check_finished(run_dir: Path) -> None:
    for f in ("config.yaml", "best.pt"):
        if not (run_dir / f).is_file():
            raise RunError(f"{run_dir / f} not found: not a finished run directory")


def load_run_model(run_dir: str | Path) -> tuple[RunConfig, nn.Module, FeatureSchema, Any]:
    """``(config, model with the selected weights, schema, data meta)`` of a
    finished run, without loading its data when the run has ``data.json``
    (runs made before it existed load their data for the schema; meta None)."""
    from adatt.config import load_saved_config

    run_dir = Path(run_dir)
    meta_path = run_dir / "data.json"
    if not meta_path.is_file():
        cfg, model, splits = load_run(run_dir)
        return cfg, model, splits.schema, None
    _check_finished(run_dir)
    cfg = load_saved_config(run_dir / "config.yaml")
    try:
        meta = json.loads(meta_path.read_text())
        schema = FeatureSchema.from_dict(meta["schema"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{meta_path}: unreadable ({e})") from None
    model = build_model(cfg.model, schema)
    model.load_state_dict(RunDir(run_dir).load_best("cpu"))
    return cfg, model, schema, meta


def load_run(run_dir: str | Path) -> tuple[RunConfig, nn.Module, Any]:
    """(config, model with the selected weights, splits) of a finished run."""
    from adatt.config import load_saved_config

    run_dir = Path(run_dir)
    _check_finished(run_dir)
    cfg = load_saved_config(run_dir / "config.yaml")
    splits = load_splits_for(cfg)
    model = build_model(cfg.model, splits.schema)
    model.load_state_dict(RunDir(run_dir).load_best("cpu"))
    return cfg, model, splits


# Settings that change how a run is executed, not what it computes.
EXECUTION_KEYS = {"runtime": ("threads", "progress", "tensorboard", "distributed",
                             "keep_freed_memory"),
                  "tracking": ("backend", "uri", "experiment")}


def finished_results(run_dir: str | Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The results of a finished run at ``run_dir`` made with ``cfg``, else None.

    A run counts as finished when it has ``results.json``; it is the same run
    when its saved ``config.yaml`` equals ``cfg`` apart from the output location
    and execution settings (threads, progress bar, TensorBoard, distributed, memory,
    tracking).
    Used to skip seeds that are already done when an experiment is resumed or extended.
    """
    from adatt.config import load_saved_config

    run_dir = Path(run_dir)
    res_path, cfg_path = run_dir / "results.json", run_dir / "config.yaml"
    if not (res_path.is_file() and cfg_path.is_file()):
        return None
    try:
        saved = load_saved_config(cfg_path).model_dump(mode="json")
        results = json.loads(res_path.read_text())
    except Exception:  # an unreadable leftover is simply trained again
        return None
    want = cfg.model_dump(mode="json")
    for d in (saved, want):
        d.pop("out_dir", None)
        for section, keys in EXECUTION_KEYS.items():
            for k in keys:
                d.get(section, {}).pop(k, None)
    return results if saved == want else None
