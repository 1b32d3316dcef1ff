"""The demo: every model trained on the built-in recommender simulator, compared.

Trains AdaTT-sp, AdaTT and the baselines with the same optimizer, learning
rate, batch and budget on the simulator's ``group1`` task group (one
engagement + one consumption task), and returns a table of test AUC per task
and NE difference versus Shared-bottom (the paper's reporting unit).

Example (tiny, for the doctest):
    >>> import tempfile
    >>> table = run_demo(rows=4000, epochs=1, out_dir=tempfile.mkdtemp(),
    ...                  models=["shared_bottom", "adatt_sp"], progress=False)
    >>> "adatt_sp" in table and "NE diff" in table
    True
"""

from __future__ import annotations

from pathlib import Path

from adatt.experiments.common import markdown_table, preset_models, relative_table

__all__ = ["run_demo"]


def run_demo(rows: int = 200_000, epochs: int = 2, out_dir: str = "runs/demo", seed: int = 0,
             models: list[str] | None = None, progress: bool = True) -> str:
    """Train each model on simulated data; the comparison table as markdown."""
    from adatt.config import load_config
    from adatt.data.config import load_splits
    from adatt.train.trainer import train

    base = ["data.source=sim", "data.preset=group1", f"data.rows={rows}", f"data.seed={seed}",
            f"out_dir={out_dir}", f"train.epochs={epochs}", "train.batch_size=512",
            "train.optimizer.lr=1e-3", f"train.seed={seed}", f"runtime.progress={progress}",
            "model.expert_sizes=[64,32]", "model.tower_sizes=[32]", "model.embedding_dim=8"]
    splits = None
    results = {}
    presets = preset_models(num_experts=4, num_tasks=2)
    for name in models or list(presets):
        over = base + [f"model.name={name}", f"name={name}"]
        over += [f"model.{k}={v}" for k, v in presets[name].items()]
        if name == "mmoe":  # one level of two-layer experts
            over.append("model.expert_sizes=[[64,32]]")
        cfg = load_config(None, over)
        if splits is None:
            splits = load_splits(cfg.data)
        results[name] = train(cfg, overwrite=True, splits=splits)
    tasks = list(splits.schema.task_names)
    rel = relative_table(results) if "shared_bottom" in results else None
    header = ["model"] + [f"{t} AUC" for t in tasks]
    if rel:
        header += [f"{t} NE diff" for t in tasks]
    header += ["params", "train ex/s"]
    table = []
    for name, r in results.items():
        row = [name] + [r["test"][t].get("auc", r["test"][t].get("mse")) for t in tasks]
        if rel:
            row += [f"{rel[name][t]:+.2f}%" for t in tasks]
        row += [f"{r['num_parameters']:,}", f"{r['train_examples_per_s']:,.0f}"]
        table.append(row)
    note = (f"Simulator group1, {rows:,} rows, {epochs} epochs, Adam lr 1e-3, batch 512, "
            f"seed {seed}. Runs in {Path(out_dir)}/.")
    return note + "\n\n" + markdown_table(header, table)
