"""Whole models, registered by name and built from config.

>>> from adatt.models import list_models
>>> sorted(list_models())
['adatt', 'adatt_sp', 'cross_stitch', 'ml_mmoe', 'mmoe', 'ple', 'shared_bottom']
"""

from adatt.models.base import MultiTaskModel
from adatt.models.fused import PLE, AdaTT, AdaTTSp, MLMMoE, MMoE
from adatt.models.registry import create_model, list_models, model_class, model_options
from adatt.models.simple import CrossStitch, SharedBottom

__all__ = [
    "MultiTaskModel", "AdaTTSp", "AdaTT", "PLE", "MMoE", "MLMMoE", "SharedBottom", "CrossStitch",
    "create_model", "list_models", "model_class", "model_options",
]
