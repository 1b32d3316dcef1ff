"""``results.json``: what every recipe reports about a finished run, built in one place.

Keys: ``name, model, data, tasks`` (task kinds), ``selected`` (the selected
evaluation: ``{eval, epoch, step, examples}``), ``selection_metric``,
``selection_score``, ``valid`` and ``test`` (per task every metric of the
selected weights), ``num_parameters``, ``train_examples``,
``train_examples_per_s``, ``wall_time_s``, ``seed``, ``nonfinite_skipped``
(batches skipped for a non-finite loss under ``train.nonfinite=skip``,
:mod:`adatt.train.guard`), ``labelled`` (only for a schema with partial
tasks: per split per task the number of labelled rows, ``{split: {task:
n}}``; each task's metrics are over those rows), then the recipe's own
keys (an ensemble's size, TorchRec's sharding plan, ...).

Example:
    >>> from adatt.config import load_config
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> from adatt.train.selection import Selection
    >>> cfg = load_config(None, ["name=r"])
    >>> schema = FeatureSchema((), (), (), (TaskSpec("a"),))
    >>> res = build_results(cfg, schema, Selection(0.7, {"eval": 1}), valid={}, test={},
    ...     num_parameters=10, examples=100, examples_per_s=50.0, wall_time_s=3.0, flag=1)
    >>> list(res)[:4], res["selection_score"], res["flag"]
    (['name', 'model', 'data', 'tasks'], 0.7, 1)
"""

from __future__ import annotations

from typing import Any

from adatt.config import RunConfig
from adatt.data.schema import FeatureSchema
from adatt.train.selection import Selection

__all__ = ["build_results"]


def build_results(cfg: RunConfig, schema: FeatureSchema, selection: Selection, *,
                  valid: dict[str, Any], test: dict[str, Any], num_parameters: int,
                  examples: int, examples_per_s: float, wall_time_s: float,
                  model: str | None = None, nonfinite_skipped: int = 0,
                  labelled: dict[str, dict[str, int]] | None = None,
                  compiled: bool = False, compile_s: float = 0.0,
                  **extra: Any) -> dict[str, Any]:
    """The results dict of a run of ``cfg`` (``model``: the reported model name,
    default ``cfg.model["name"]``; ``compiled``, ``compile_s``: whether the step ran
    through ``torch.compile`` and the seconds its compilation took,
    :mod:`adatt.train.compiled`); ``extra`` keys come last."""
    out = {
        "name": cfg.name,
        "model": cfg.model["name"] if model is None else model,
        "data": cfg.data.source,
        "tasks": {t.name: t.kind for t in schema.tasks},
        "selected": selection.best_eval,
        "selection_metric": cfg.train.selection.metric,
        "selection_score": selection.best_score,
        "valid": valid,
        "test": test,
        "num_parameters": num_parameters,
        "train_examples": examples,
        "train_examples_per_s": examples_per_s,
        "wall_time_s": wall_time_s,
        "seed": cfg.train.seed,
        "nonfinite_skipped": nonfinite_skipped,
        "compiled": compiled,
        "compile_s": compile_s,
    }
    if labelled:  # partial tasks: the labelled rows behind each task's metrics
        out["labelled"] = labelled
    return {**out, **extra}
