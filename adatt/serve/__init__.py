"""Serving: export a trained run (TorchScript, ``torch.export``, ONNX) and batch-score files.

Notation: B batch, Dd dense width, F categorical fields, T tasks.

* :mod:`adatt.serve.export` -- :func:`~adatt.serve.export.export_run` writes a
  model that maps raw feature tensors ``dense [B, Dd] float32`` and
  ``cat [B, F] int64`` to per-task outputs ``[B, T]`` (probabilities for
  binary tasks, the raw prediction for regression tasks), with a JSON sidecar.
* :mod:`adatt.serve.predict` -- :func:`~adatt.serve.predict.predict_file`
  scores a CSV / Parquet file of raw feature columns with a run's model.
* :mod:`adatt.serve.serving` -- what both use (and neither imports from the
  other): a run's model and input encoding
  (:func:`~adatt.serve.serving.load_for_serving`), the output transform
  (:class:`~adatt.serve.serving.ServingModel`), :class:`~adatt.serve.serving.ServeError`.

ONNX needs the optional extra: ``pip install adatt[serve]``. Submodules are
imported on use, so importing this package is cheap.

Example:
    >>> from adatt.serve import FORMATS
    >>> FORMATS
    ('torchscript', 'export', 'onnx')
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "ServeError", "export_run", "predict_file"]

FORMATS = ("torchscript", "export", "onnx")


def __getattr__(name: str) -> Any:
    if name == "ServeError":
        from adatt.serve import serving

        return serving.ServeError
    if name == "export_run":
        from adatt.serve import export

        return export.export_run
    if name == "predict_file":
        from adatt.serve import predict

        return predict.predict_file
    raise AttributeError(f"module 'adatt.serve' has no attribute {name!r}")
