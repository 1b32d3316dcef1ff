"""A plain-text summary of loaded splits: the output of ``adatt data info``.

It shows the row count per split, per task the positive rate (binary) or the
mean and standard deviation (regression) in each split (of a partial task: over
its labelled rows), the weight column if any, the dense features and the
categorical features with their cardinalities (index 0, unknown, included),
and the scalar facts in ``Splits.info``. When a task may be unlabelled (a
``missing: mask`` or conditional task), a table gives the labelled rows per task
and split, and a task with no labelled row in a split is flagged (``NONE``,
and a line naming it). Regression statistics are in the labels' original units;
standardised labels (:mod:`adatt.data.label_scaling`) are listed with their
center and scale.

Example:
    >>> from adatt.data.mmoe_synthetic import load_mmoe_synthetic
    >>> text = describe(load_mmoe_synthetic(rows=1_000, dim=3))
    >>> print(text.splitlines()[0])
    data set mmoe_synthetic:p=0.5: train 800 rows, valid 100 rows, test 100 rows
    >>> print(text.splitlines()[2])
      name   kind        train                 valid                 test
"""

from __future__ import annotations

from typing import Any

import torch

from adatt.data.splits import Splits

__all__ = ["describe", "task_statistics", "labelled_counts"]


def labelled_counts(splits: Splits) -> dict[str, dict[str, int]]:
    """``{task: {split: rows with a label}}`` (labels not NaN).

    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> y = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, float("nan")]])
    >>> ds = TensorDataset(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.long), y)
    >>> schema = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b", missing="mask")))
    >>> labelled_counts(Splits("toy", schema, ds, ds, ds.subset(torch.tensor([1]))))
    {'a': {'train': 3, 'valid': 3, 'test': 1}, 'b': {'train': 1, 'valid': 1, 'test': 0}}
    """
    counts = {split: (~torch.isnan(ds.labels)).sum(0).tolist() for split, ds in splits.items()}
    return {t.name: {split: int(c[j]) for split, c in counts.items()}
            for j, t in enumerate(splits.schema.tasks)}


def task_statistics(splits: Splits) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {split: stats}}``: ``positive_rate`` (binary) or ``mean`` / ``std`` (regression),
    of a partial task over its labelled rows (``{}`` when it has none)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for j, task in enumerate(splits.schema.tasks):
        out[task.name] = {}
        for split, ds in splits.items():
            y = ds.labels[:, j].double() * task.scale + task.center  # original units
            if task.partial:
                y = y[~torch.isnan(y)]  # the labelled rows
            if len(y) == 0:
                out[task.name][split] = {}
            elif task.kind == "binary":
                out[task.name][split] = {"positive_rate": float(y.mean())}
            else:
                std = float(y.std(unbiased=False))
                out[task.name][split] = {"mean": float(y.mean()), "std": std}
    return out


def _fmt_stat(kind: str, s: dict[str, float]) -> str:
    if not s:
        return "-"
    if kind == "binary":
        r = s["positive_rate"]
        return f"{100 * r:.3g}% positive" if r >= 1e-3 or r == 0 else f"{100 * r:.2g}% positive"
    return f"mean {s['mean']:.3g} sd {s['std']:.3g}"


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def describe(splits: Splits) -> str:
    """Text summary of ``splits`` (see the module docstring)."""
    schema = splits.schema
    sizes = splits.sizes()
    lines = [
        f"data set {splits.name}: " + ", ".join(f"{k} {v:,} rows" for k, v in sizes.items()),
    ]
    stats = task_statistics(splits)
    width = max(len(t.name) for t in schema.tasks) + 2
    lines.append(f"tasks ({schema.num_tasks}):")
    header = f"  {'name':<{width}}{'kind':<12}" + "".join(f"{k:<22}" for k in sizes)
    lines.append(header.rstrip())
    for t in schema.tasks:
        row = f"  {t.name:<{width}}{t.kind:<12}" + "".join(
            f"{_fmt_stat(t.kind, stats[t.name][k]):<22}" for k in sizes
        )
        lines.append(row.rstrip())
    scaled = [t for t in schema.tasks if (t.center, t.scale) != (0.0, 1.0)]
    if scaled:
        lines.append("standardised labels (models learn (y - center) / scale; statistics above "
                     "in original units):")
        lines.extend(_wrap([f"{t.name} center {t.center:.6g} scale {t.scale:.6g}"
                            for t in scaled]))
    if schema.partial:
        lines.extend(_labelled_table(splits, width))
    w = splits.train.weight
    if w is not None and w.dim() == 2:
        lines.append("weight: per task (row weight times task weight); mean over labelled rows:")
        for k, ds in splits.items():
            if ds.weight is None or not len(ds):
                continue
            have = ~torch.isnan(ds.labels)  # [N, T]
            w_sum = (ds.weight.double() * have).sum(0)  # [T]
            means = [f"{t} {float(s) / int(c):.3g}" if int(c) else f"{t} -"
                     for t, s, c in zip(schema.task_names, w_sum, have.sum(0), strict=True)]
            lines.append(f"  {k}: " + ", ".join(means))
    elif w is not None:
        means = ", ".join(
            f"{k} mean {float(ds.weight.double().mean()):.3g}"  # type: ignore[union-attr]
            for k, ds in splits.items()
            if ds.weight is not None and len(ds)
        )
        lines.append(f"weight: per-row loss weight ({means})")
    else:
        lines.append("weight: none")
    lines.append(f"dense features ({schema.dense_dim}):")
    if schema.dense:
        lines.extend(_wrap(list(schema.dense)))
    lines.append(f"categorical features ({len(schema.categorical)}; cardinality incl. index 0):")
    if schema.categorical:
        cats = [f"{n} {c:,}" for n, c in zip(schema.categorical, schema.cardinalities, strict=True)]
        lines.extend(_wrap(cats))
    if schema.multi_valued:  # their lists follow the single-valued fields in cat
        lines.append(f"multi-valued features ({len(schema.multi_valued)}; cardinality incl. "
                     "index 0, pooling, max length):")
        lines.extend(_wrap([f"{m.name} {m.cardinality:,} {m.pooling} {m.max_length}"
                            for m in schema.multi_valued]))
    facts = {k: v for k, v in splits.info.items() if _scalar(v)}
    if facts:
        lines.append("info:")
        lines.extend(_wrap([f"{k}={v}" for k, v in facts.items()]))
    return "\n".join(lines)


def _labelled_table(splits: Splits, width: int) -> list[str]:
    """Labelled rows per task and split; ``NONE`` where a split has none."""
    counts, sizes = labelled_counts(splits), splits.sizes()
    lines = ["labelled rows (a task's loss and metrics use only these):"]
    header = f"  {'name':<{width}}{'condition':<12}" + "".join(f"{k:<22}" for k in sizes)
    lines.append(header.rstrip())
    empty = []
    for t in splits.schema.tasks:
        cells = []
        for k, n in sizes.items():
            c = counts[t.name][k]
            if c == 0 and n:
                empty.append(f"{t.name!r} in {k}")
            cells.append(f"{c:,} ({100 * c / n:.3g}%)" + (" NONE" if c == 0 else "")
                         if n else "-")
        lines.append((f"  {t.name:<{width}}{t.condition or '-':<12}"
                       + "".join(f"{x:<22}" for x in cells)).rstrip())
    if empty:
        lines.append("warning: no labelled row for " + ", ".join(empty))
    return lines


def _wrap(items: list[str], width: int = 96) -> list[str]:
    out, line = [], "  "
    for it in items:
        piece = it + ", "
        if len(line) + len(piece) > width and line.strip():
            out.append(line.rstrip(", "))
            line = "  "
        line += piece
    if line.strip():
        out.append(line.rstrip(", "))
    return out
