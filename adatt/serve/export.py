"""Export a trained run for serving: TorchScript, ``torch.export`` (.pt2) or ONNX.

Notation: B batch (dynamic in every exported form), Dd dense width, F
categorical fields, T tasks.

Every exported form is :class:`ServingModel`: the run's model followed by the
output transform, so it maps the raw feature tensors ``dense [B, Dd] float32``
and ``cat [B, F] int64`` (per-field indices in ``[0, cardinality)``, 0 the
unknown value) to ``predictions [B, T] float32``: ``sigmoid(logit)`` for a
binary task, for a regression task the model's output in the labels' original
units (``center + scale * output`` when the labels were standardised in training,
:mod:`adatt.data.label_scaling`; the raw output otherwise).

With multi-valued categorical features (:class:`~adatt.data.schema.MultiValued`)
the signature is the same, ``cat`` is wider: ``cat [B, F + L] int64``, after
the F single-valued fields each multi-valued feature's ``max_length`` columns
(schema order, L their sum) holding its list's indices in ``[0, cardinality)``
and -1 in the unused places (an all -1 slot is the empty list, which pools to
zeros). The sidecar lists the features, their columns and pooling.

* ``torchscript``: ``torch.jit.trace`` (deprecated upstream, still working);
  load with ``torch.jit.load(path)``.
* ``export``: ``torch.export.export`` + ``torch.export.save`` (.pt2); load with
  ``torch.export.load(path).module()``.
* ``onnx``: ``torch.onnx.export(dynamo=True)``; run with
  ``onnxruntime.InferenceSession(path)``.

Each artefact is written to a temporary file next to ``output``, loaded back
and checked against the eager model on random inputs of batch sizes other
than the one used to export (1, 7 and 512; 4 at export time), then renamed into
place. The batch dimension is dynamic in every format, at any thread count:
the model's eager-mode shortcuts that depend on the batch size or the number
of threads (:mod:`adatt.modules.layers`) are off while exporting. A JSON
sidecar ``<output>.json`` describes the inputs (names, dtypes, shapes, dense
column names, categorical fields and cardinalities), the outputs (task names,
kinds, transform) and the check. For a run on raw columns (the user's files,
streamed shards), the fitted encoding
(vocabularies or hashing, dense scaling: :mod:`adatt.data.encoding`, as saved
in the run's ``data.json``) is written to ``<output>.preprocess.json``.

:class:`ServingModel`, :func:`output_columns` and :class:`ServeError` live in
:mod:`adatt.serve.serving` (shared with :mod:`adatt.serve.predict`).

ONNX needs ``onnx``, ``onnxscript`` and ``onnxruntime``: ``pip install adatt[serve]``.

Example:
    >>> default_output("runs/census_adatt", "onnx").as_posix()
    'runs/census_adatt/serving/model.onnx'
    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema(("x",), ("c",), (3,), (TaskSpec("click"),))
    >>> describe(s, "export", Path("model.pt2"))["outputs"][0]["tasks"][0]["transform"]
    'sigmoid'
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adatt.data.schema import FeatureSchema
from adatt.serve import FORMATS
from adatt.serve.serving import (
    ServeError,
    ServingModel,
    atomic_target,
    load_for_serving,
    output_columns,
    write_json,
)

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "ServeError",
    "ServingModel",
    "ExportResult",
    "output_columns",
    "example_inputs",
    "export_model",
    "export_run",
    "load_exported",
    "default_output",
]

SUFFIXES = {"torchscript": ".pt", "export": ".pt2", "onnx": ".onnx"}
INPUT_NAMES = ("dense", "cat")
OUTPUT_NAME = "predictions"
EXAMPLE_BATCH = 4  # export-time batch; >= 2 so that torch.export keeps the dimension symbolic
CHECK_BATCHES = (1, 7, 512)  # batch sizes the saved artefact is checked on
TOLERANCE = 1e-5
#: files of a run directory an export must never replace
RUN_FILES = ("config.yaml", "best.pt", "checkpoint.pt", "data.json", "results.json",
             "metrics.jsonl")
INSTALL_HINT = "pip install adatt[serve]  (onnx, onnxscript, onnxruntime)"


def example_inputs(schema: FeatureSchema, batch: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random valid inputs: ``dense [batch, Dd]`` ~ N(0, 1), ``cat [batch, F]`` in range.

    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema(("x", "y"), ("c",), (3,), (TaskSpec("t"),))
    >>> d, c = example_inputs(s, 6)
    >>> tuple(d.shape), d.dtype, tuple(c.shape), c.dtype, bool(((c >= 0) & (c < 3)).all())
    ((6, 2), torch.float32, (6, 1), torch.int64, True)
    """
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, schema.dense_dim, generator=g)
    card = torch.tensor(schema.cardinalities, dtype=torch.float64)  # [F]
    u = torch.rand(batch, len(schema.cardinalities), generator=g, dtype=torch.float64)
    cat = (u * card).long().clamp_max((card - 1).long())  # [B, F], each in [0, card_f)
    if schema.multi_valued:  # per feature lists of 0..max_length indices, -1 after them
        parts = [cat]
        for m in schema.multi_valued:
            n = torch.randint(0, m.max_length + 1, (batch, 1), generator=g)  # [B, 1] lengths
            idx = torch.randint(0, m.cardinality, (batch, m.max_length), generator=g)
            place = torch.arange(m.max_length).expand(batch, m.max_length)  # [B, max_length]
            parts.append(torch.where(place < n, idx, -1))  # [B, max_length]
        cat = torch.cat(parts, dim=1)  # [B, F + L]
    return dense, cat


def default_output(run_dir: str | Path, fmt: str) -> Path:
    """``<run_dir>/serving/model<suffix>`` (``.pt``, ``.pt2``, ``.onnx``)."""
    _check_format(fmt)
    return Path(run_dir) / "serving" / f"model{SUFFIXES[fmt]}"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ServeError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def require_onnx(runtime_only: bool = False) -> Any:
    """Import the ONNX stack (``onnxruntime`` and, to export, ``onnx`` and ``onnxscript``).

    Returns the ``onnxruntime`` module; a missing package is a :class:`ServeError`
    saying how to install it.
    """
    names = ("onnxruntime",) if runtime_only else ("onnx", "onnxscript", "onnxruntime")
    mod = None
    for name in names:
        try:
            mod = __import__(name)
        except ImportError as e:
            raise ServeError(f"ONNX needs the package {name!r}, which is not installed ({e}); "
                             f"install it with: {INSTALL_HINT}") from None
    return mod


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (deprecations, torchvision notes)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                              "onnxscript", "onnx_ir", "torch.fx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels, strict=True):
                lg.setLevel(lv)


def _save_torchscript(serving: ServingModel, args: tuple[Tensor, Tensor], path: Path) -> None:
    with _quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(serving, args)
        torch.jit.save(traced, str(path))


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1)
    return {"dense": {0: batch}, "cat": {0: batch}}


def _save_export(serving: ServingModel, args: tuple[Tensor, Tensor], path: Path) -> None:
    with _quiet_exporters():
        ep = torch.export.export(serving, args, dynamic_shapes=_dynamic_shapes())
        torch.export.save(ep, str(path))


def _save_onnx(serving: ServingModel, args: tuple[Tensor, Tensor], path: Path) -> None:
    require_onnx()
    nbytes = sum(p.numel() * p.element_size() for p in serving.parameters())
    if nbytes >= 2**31 - 2**24:
        raise ServeError(f"the model has {nbytes / 2**30:.2f} GiB of weights; an ONNX file "
                         "holds under 2 GiB inline: use --format export")
    with _quiet_exporters():
        program = torch.onnx.export(
            serving, args, None, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_shapes(), dynamo=True, verbose=False,
        )
        program.save(str(path), external_data=False)


_SAVERS: dict[str, Callable[[ServingModel, tuple[Tensor, Tensor], Path], None]] = {
    "torchscript": _save_torchscript,
    "export": _save_export,
    "onnx": _save_onnx,
}


def load_exported(path: str | Path, fmt: str | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """A function ``(dense [B, Dd], cat [B, F]) -> [B, T]`` running an exported file.

    ``fmt`` defaults to the one its suffix names (``.pt``, ``.pt2``, ``.onnx``).
    """
    path = Path(path)
    if fmt is None:
        by_suffix = {v: k for k, v in SUFFIXES.items()}
        fmt = by_suffix.get(path.suffix.lower())
        if fmt is None:
            raise ServeError(f"{path}: cannot tell the format from the suffix; "
                             f"give one of {', '.join(FORMATS)}")
    _check_format(fmt)
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        return lambda dense, cat: module(dense, cat)
    if fmt == "export":
        module = torch.export.load(str(path)).module()
        return lambda dense, cat: module(dense, cat)
    ort = require_onnx(runtime_only=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(dense: Tensor, cat: Tensor) -> Tensor:
        feeds = {"dense": dense.detach().cpu().numpy(), "cat": cat.detach().cpu().numpy()}
        return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])

    return run


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and how closely it matched the eager model."""

    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float  # over the check batches, vs the eager model


def _transform(kind: str, center: float, scale: float) -> str:
    """The sidecar's description of one output's transform (applied in the model)."""
    if kind == "binary":
        return "sigmoid"
    if (center, scale) == (0.0, 1.0):
        return "identity"
    return f"{center!r} + {scale!r} * output (labels' original units)"


def describe(schema: FeatureSchema, fmt: str, path: Path) -> dict[str, Any]:
    """The sidecar's description of the inputs and outputs of an exported model."""
    import adatt

    return {
        "format": fmt,
        "file": path.name,
        "adatt_version": adatt.__version__,
        "torch_version": torch.__version__,
        "inputs": [
            {"name": "dense", "dtype": "float32", "shape": ["batch", schema.dense_dim],
             "columns": list(schema.dense)},
            {"name": "cat", "dtype": "int64", "shape": ["batch", schema.cat_width],
             "fields": list(schema.categorical), "cardinalities": list(schema.cardinalities),
             "values": "per field an index in [0, cardinality); 0 is the unknown value",
             **_multi_valued_inputs(schema)},
        ],
        "outputs": [
            {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", schema.num_tasks],
             "tasks": [
                 {"name": t.name, "kind": t.kind, "column": col,
                  "transform": _transform(t.kind, t.center, t.scale)}
                 for t, col in zip(schema.tasks, output_columns(schema), strict=True)
             ]},
        ],
    }


def _multi_valued_inputs(schema: FeatureSchema) -> dict[str, Any]:
    """The sidecar's description of the multi-valued columns of ``cat`` (none: nothing)."""
    if not schema.multi_valued:
        return {}
    out, start = [], len(schema.categorical)
    for m in schema.multi_valued:
        out.append({"name": m.name, "columns": [start, start + m.max_length],
                    "cardinality": m.cardinality, "pooling": m.pooling})
        start += m.max_length
    return {"multi_valued": out,
            "multi_valued_values": "columns [a, b): the list's indices in [0, cardinality), "
                                   "-1 in unused places; pooled by sum or mean, empty: zeros"}


def export_model(
    model: nn.Module,
    schema: FeatureSchema,
    fmt: str,
    output: str | Path,
    extra: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` (raw logits) as a :class:`ServingModel` in format ``fmt``.

    The file is written to a temporary path, loaded back and compared with the
    eager model on random inputs of batch sizes :data:`CHECK_BATCHES`; it replaces
    ``output`` only when every output is within :data:`TOLERANCE`. ``extra`` is
    merged into the sidecar ``<output>.json``.
    """
    _check_format(fmt)
    output = Path(output)
    was_training = model.training
    model.eval()
    try:
        serving = ServingModel.of_schema(model, schema).eval()
        args = example_inputs(schema, EXAMPLE_BATCH, seed=0)
        with atomic_target(output) as tmp:
            try:
                _SAVERS[fmt](serving, args, tmp)
            except ServeError:
                raise
            except Exception as e:  # an exporter failure: name the format and the cause
                msg = " ".join(str(e).split())[:300]
                raise ServeError(f"{fmt} export failed: {type(e).__name__}: {msg}") from e
            run = load_exported(tmp, fmt)
            diff = 0.0
            with torch.no_grad():
                for i, b in enumerate(CHECK_BATCHES):
                    dense, cat = example_inputs(schema, b, seed=1 + i)
                    want = serving(dense, cat)  # [b, T]
                    got = run(dense, cat)
                    if tuple(got.shape) != tuple(want.shape):
                        raise ServeError(f"{fmt} export: output shape {tuple(got.shape)} for "
                                         f"batch {b}, expected {tuple(want.shape)}")
                    diff = max(diff, float((got.float() - want).abs().max()))
            if not diff <= TOLERANCE:
                raise ServeError(f"{fmt} export disagrees with the eager model: max abs "
                                 f"difference {diff:.3g} > {TOLERANCE:g}")
        info = describe(schema, fmt, output)
        info["check"] = {"batch_sizes": list(CHECK_BATCHES), "max_abs_diff": diff,
                         "tolerance": TOLERANCE}
        info.update(extra or {})
        sidecar = output.with_name(output.name + ".json")
        write_json(info, sidecar)
    finally:
        model.train(was_training)
    return ExportResult(output, sidecar, fmt, diff)


def export_run(
    run_dir: str | Path, fmt: str, output: str | Path | None = None
) -> ExportResult:
    """Export the selected model of a finished run (``runs/<name>``).

    ``output`` defaults to :func:`default_output`. For a run on raw columns (files,
    stream) the fitted encoding is also written to ``<output>.preprocess.json``.
    """
    _check_format(fmt)
    if fmt == "onnx":
        require_onnx()  # before the (possibly slow) data loading
    cfg, model, schema, data_name, encoding = load_for_serving(run_dir)
    output = Path(output) if output is not None else default_output(run_dir, fmt)
    for name in RUN_FILES:  # the run's own files: the model being exported, its config, ...
        mine = Path(run_dir) / name
        if mine.exists() and output.exists() and os.path.samefile(mine, output):
            raise ServeError(f"{output}: is the run's {name}; write the export to another file")
    extra: dict[str, Any] = {
        "run": str(run_dir),
        "model": cfg.model["name"],
        "data": data_name,
    }
    pre = output.with_name(output.name + ".preprocess.json")
    if encoding.raw:
        categorical = ("1 + position in the training vocabulary (0 unseen)"
                       if encoding.kind == "vocab" else "hashed into 1..hash_buckets")
        extra["encoding"] = {
            "kind": encoding.to_dict()["kind"],
            "file": pre.name,
            "note": f"raw columns -> inputs: dense (x - mean) / std, categorical {categorical}; "
                    "see adatt.serve.predict",
        }
    else:
        extra["encoding"] = {
            "kind": "encoded",
            "note": f"inputs are the {data_name} loader's encoded columns",
        }
    result = export_model(model, schema, fmt, output, extra)
    if encoding.raw:  # written once the model is in place, so a failed export leaves nothing
        write_json(encoding.to_dict(), pre)
    return result
