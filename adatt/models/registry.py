"""One registry of models and one factory.

``@register_model`` records a model class under its ``name`` (refusing
duplicates); :func:`create_model` builds one by name from keyword arguments,
checking every key against the constructor so a misspelled option is an
error that names the known options.

Example:
    >>> import adatt.models
    >>> m = create_model("mmoe", num_tasks=2, dense_dim=4, num_experts=3, expert_sizes=[[8]])
    >>> type(m).__name__
    'MMoE'
    >>> create_model("nope", num_tasks=2)
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'nope'; known models: adatt, adatt_sp, cross_stitch, ...
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "model_class", "model_options"]

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise ValueError(f"{cls.__name__} needs a `name` class attribute to be registered")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def _ensure_loaded() -> None:
    import adatt.models  # noqa: F401  (registers the built-in models)


def list_models() -> dict[str, str]:
    """Registered model names with their one-line descriptions."""
    _ensure_loaded()
    return {n: _REGISTRY[n].description for n in sorted(_REGISTRY)}


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """Constructor options of model ``name`` (name -> inspect.Parameter)."""
    sig = inspect.signature(model_class(name).__init__)
    return {k: p for k, p in sig.parameters.items() if k != "self"}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name``; an unknown option is a ValueError listing the known ones."""
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"options: {', '.join(options)}"
        )
    return model_class(name)(**kwargs)
