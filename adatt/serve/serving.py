"""What exporting and scoring share: a finished run's model and input encoding, the
output transform, one-line errors and atomic file writes.

Notation: B batch, Dd dense width, F categorical fields, T tasks.

:mod:`adatt.serve.export` and :mod:`adatt.serve.predict` both import from here
(and not from each other).

* :func:`load_for_serving`: ``(config, model, schema, data name, encoding)`` of
  a run; the input encoding (:class:`~adatt.data.encoding.FeatureEncoding`) is
  the one saved in the run's ``data.json`` (runs on the user's files and on
  streamed shards: raw columns), or the ``encoded`` one (census, sim,
  mmoe_synthetic: the loader's already-encoded columns).
* :class:`ServingModel`: the model followed by the output transform,
  ``sigmoid(logit)`` for a binary task, for a regression task the output in the
  labels' original units, ``center + scale * output`` (the training split's
  label standardisation saved in the schema, :mod:`adatt.data.label_scaling`;
  the raw output when the labels were not standardised).

Example:
    >>> import torch
    >>> from adatt.models import create_model
    >>> m = create_model("mmoe", num_tasks=2, dense_dim=3, cat_cardinalities=[4],
    ...                  expert_sizes=[[8]], num_experts=2)
    >>> serving = ServingModel(m, ["binary", "regression"]).eval()
    >>> dense, cat = torch.randn(5, 3), torch.zeros(5, 1, dtype=torch.long)
    >>> out = serving(dense, cat)  # [5, 2]
    >>> logits = m(dense, cat)
    >>> bool(torch.equal(out[:, 0], torch.sigmoid(logits[:, 0])))
    True
    >>> bool(torch.equal(out[:, 1], logits[:, 1]))
    True
    >>> scaled = ServingModel(m, ["binary", "regression"], center=[0.0, 30.0],
    ...                       scale=[1.0, 4.0]).eval()
    >>> bool(torch.allclose(scaled(dense, cat)[:, 1], 30.0 + 4.0 * logits[:, 1]))
    True
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adatt.data.encoding import FeatureEncoding
from adatt.data.schema import FeatureSchema
from adatt.data.tempfiles import sweep, temp_name
from adatt.train.rundir import RunError

__all__ = [
    "ServeError",
    "ServingModel",
    "output_columns",
    "atomic_target",
    "write_json",
    "encoding_from_meta",
    "encoding_for_run",
    "load_for_serving",
]

PathLike = str | os.PathLike[str]


class ServeError(RunError):
    """A run that cannot be exported or served (one line)."""


class ServingModel(nn.Module):
    """A multi-task model plus its output transform: raw features -> ``[B, T]``.

    Args:
        model: maps ``dense [B, Dd]``, ``cat [B, F]`` to logits ``[B, T]``.
        task_kinds: per task, ``binary`` (sigmoid) or ``regression``
            (``center + scale * output``).
        center, scale: per task, the label standardisation to undo (default 0 and 1:
            the identity; binary tasks must have 0 and 1). :meth:`of_schema` takes
            them from a schema.
    """

    def __init__(self, model: nn.Module, task_kinds: Sequence[str],
                 center: Sequence[float] | None = None,
                 scale: Sequence[float] | None = None) -> None:
        super().__init__()
        kinds = list(task_kinds)
        if any(k not in ("binary", "regression") for k in kinds):
            raise ValueError(f"task kinds must be binary or regression, got {kinds}")
        center = [0.0] * len(kinds) if center is None else [float(c) for c in center]
        scale = [1.0] * len(kinds) if scale is None else [float(c) for c in scale]
        if len(center) != len(kinds) or len(scale) != len(kinds):
            raise ValueError("one center and one scale per task are required")
        if any(k == "binary" and (c, s) != (0.0, 1.0)
               for k, c, s in zip(kinds, center, scale, strict=True)):
            raise ValueError("binary outputs are probabilities: center 0 and scale 1 only")
        self.model = model
        # python bools: the traced / exported graph has the rescaling only when needed
        self.rescale = any((c, s) != (0.0, 1.0) for c, s in zip(center, scale, strict=True))
        self.register_buffer("center", torch.tensor(center), persistent=False)  # [T]
        self.register_buffer("scale", torch.tensor(scale), persistent=False)  # [T]
        self.all_binary = all(k == "binary" for k in kinds)
        self.any_binary = any(k == "binary" for k in kinds)
        self.register_buffer(
            "binary", torch.tensor([k == "binary" for k in kinds]), persistent=False
        )

    @classmethod
    def of_schema(cls, model: nn.Module, schema: FeatureSchema) -> ServingModel:
        """The serving model of ``schema``'s tasks: kinds and label standardisation."""
        return cls(model, schema.task_kinds, [t.center for t in schema.tasks],
                   [t.scale for t in schema.tasks])

    def forward(self, dense: Tensor, cat: Tensor) -> Tensor:
        z = self.model(dense, cat)  # [B, T] logits / regression outputs
        if self.rescale:  # binary tasks have scale 1, center 0: their logits unchanged
            z = self.center + self.scale * z  # [T] broadcast over [B, T]
        if self.all_binary:
            return torch.sigmoid(z)
        if not self.any_binary:
            return z
        return torch.where(self.binary, torch.sigmoid(z), z)  # [T] mask broadcast over [B, T]


def output_columns(schema: FeatureSchema) -> list[str]:
    """Per task, the output column name: ``<task>_prob`` (binary) or ``<task>_pred``.

    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema(("x",), (), (), (TaskSpec("click"), TaskSpec("time", "regression")))
    >>> output_columns(s)
    ['click_prob', 'time_pred']
    """
    return [f"{t.name}_{'prob' if t.kind == 'binary' else 'pred'}" for t in schema.tasks]


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_target(output: Path) -> Iterator[Path]:
    """A temporary path next to ``output`` (same suffix); renamed to ``output`` on success.

    The temporary name and the sweep of those left by killed processes:
    :mod:`adatt.data.tempfiles`. A file system problem (no permission, ``output``
    a directory) is a :class:`ServeError`.
    """
    if output.is_dir():
        raise ServeError(f"{output}: is a directory; give a file name")
    tmp = temp_name(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        sweep(output.parent)  # temporary files of killed adatt processes (adatt.data.tempfiles)
        tmp.write_bytes(b"")
    except OSError as e:
        raise ServeError(f"{output}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp
        try:
            os.replace(tmp, output)
        except OSError as e:
            raise ServeError(f"{output}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj: Any, path: Path) -> None:
    """``obj`` as indented JSON, written atomically (:func:`atomic_target`)."""
    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------- the run


def _saved_encoding(saved: dict[str, Any], schema: FeatureSchema, where: str) -> FeatureEncoding:
    try:
        enc = FeatureEncoding.from_dict(saved)
    except (KeyError, TypeError, ValueError) as e:
        raise ServeError(f"{where} has an unreadable encoding ({e})") from None
    if (enc.dense, enc.categorical, enc.cardinalities, enc.schema_multi_valued()) != (
        schema.dense, schema.categorical, schema.cardinalities, schema.multi_valued
    ):
        raise ServeError(f"the encoding saved in {where} does not match its schema")
    return enc


def encoding_from_meta(cfg: Any, schema: FeatureSchema,
                       meta: dict[str, Any] | None) -> FeatureEncoding | None:
    """The input encoding saved with a run (its ``data.json``), or None when the
    run predates it and its data has to be loaded again (:func:`encoding_for_run`)."""
    if cfg.data.source not in ("files", "stream"):  # already-encoded columns
        return FeatureEncoding(schema.dense, schema.categorical, schema.cardinalities)
    saved = (meta or {}).get("info", {}).get("encoding")
    if saved is None and cfg.data.source == "stream":
        raise ServeError("the run's data.json holds no input encoding (a data.cat_encoding=hash "
                         "run made before hashed encodings were saved); train it again to "
                         "serve it")
    if saved is None:
        return None
    return _saved_encoding(saved, schema, "the run's data.json")


def encoding_for_run(cfg: Any, splits: Any) -> FeatureEncoding:
    """The input encoding of a run from its config and loaded splits: the encoding the
    loader fitted (``splits.info["encoding"]``: files, stream), else the ``encoded`` one."""
    schema: FeatureSchema = splits.schema
    saved = splits.info.get("encoding")
    if saved is None:
        return FeatureEncoding(schema.dense, schema.categorical, schema.cardinalities)
    return _saved_encoding(saved, schema, f"the {cfg.data.source} loader's output")


def load_for_serving(run_dir: PathLike) -> tuple[Any, nn.Module, FeatureSchema, str,
                                                 FeatureEncoding]:
    """``(config, model, schema, data name, encoding)`` of a finished run.

    Runs with ``data.json`` need no data; older runs load their data again for
    the schema and the encoding (:func:`encoding_for_run`).
    """
    from adatt.train.runs import load_run, load_run_model

    cfg, model, schema, meta = load_run_model(run_dir)
    enc = encoding_from_meta(cfg, schema, meta)
    if enc is not None:
        return cfg, model, schema, (meta or {}).get("name", cfg.data.source), enc
    cfg, model, splits = load_run(run_dir)
    return cfg, model, splits.schema, splits.name, encoding_for_run(cfg, splits)
