"""Run configuration: a typed tree loaded from YAML with ``key=value`` overrides.

A run config has five sections::

    name: census_adatt_sp        # run directory name under out_dir
    out_dir: runs
    data:  {source: census, ...}             # one model per source, adatt.data.config
    model: {name: adatt_sp, expert_sizes: [128, 64], ...}   # constructor options
    train: {batch_size: 512, epochs: 10, optimizer: {name: adam, lr: 1e-3}, ...}
    runtime: {device: cpu, threads: 2, progress: true, ...}  # how and where it runs

``train`` is the recipe (what a run computes); ``runtime`` is how it is
executed (device, threads, memory reuse, data parallelism, progress bar,
TensorBoard). The ``data`` keys are those of the chosen ``source``: a key of
another source is an error naming the key and the source.

The execution keys used to live under ``train`` (``train.device``, ...): in a
YAML file or an override they are still accepted, moved to ``runtime`` with a
one-line deprecation warning on stderr; :func:`load_saved_config` reads a
run's saved ``config.yaml`` in that old layout silently.

Overrides are ``dotted.key=value`` with the value parsed as YAML
(``train.optimizer.lr=3e-4``, ``model.expert_sizes=[96,48]``). Every key is
checked: an unknown key or a value of the wrong type is a :class:`ConfigError`
naming the key. Numbers that cannot train are refused at load time: any
non-finite number (``inf``, ``nan``: learning rate, weight decay, clip norm,
task weights, weighting and model options, ...), a negative integer in a model
option (sizes and counts), an invalid ``runtime.device`` string, and a ``name``
that would leave ``out_dir`` (an absolute path or a ``..`` component). Model
options are checked against the model constructor's signature and type hints
(``num_tasks``, ``dense_dim`` and ``cat_cardinalities`` come from the data and
may not be set).

A config is a YAML file given by path, or one of the configs shipped inside
the package given by name (``census/adatt_sp``; :func:`packaged_configs`
lists them, ``adatt config list`` prints them). A path that exists wins over a
name.

Example:
    >>> cfg = load_config(None, ["model.name=mmoe", "model.num_experts=4", "train.epochs=2"])
    >>> cfg.model["name"], cfg.model["num_experts"], cfg.train.epochs
    ('mmoe', 4, 2)
    >>> load_config(None, ["train.epoch=2"])
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: train.epoch: unknown key (train has: ...)
    >>> load_config(None, ["train.optimizer.lr=.inf"])
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: train.optimizer.lr: must be a finite number (got inf)
    >>> load_config(None, ["name=../elsewhere"])
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: name: '../elsewhere' leaves out_dir (no '..' or absolute path)
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import typing
from pathlib import Path, PurePath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from adatt.data.config import SOURCES, AnyDataConfig, CensusData, format_validation_error

__all__ = ["ConfigError", "OptimizerConfig", "ScheduleConfig", "SelectionConfig", "TrainConfig",
           "RuntimeConfig", "TrackingConfig", "RunConfig", "RUNTIME_KEYS", "load_saved_config",
           "load_config", "apply_overrides", "validate_model_options", "dump_config",
           "CONFIG_DIR", "packaged_configs", "resolve_config",
           "check_finite", "check_name", "check_device"]

FROM_DATA = ("num_tasks", "dense_dim", "cat_cardinalities")

#: The configs shipped inside the package (``configs/`` in a clone links here).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A bad config key or value (one line, naming the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(_Strict):
    """Optimizer from torch.optim: adam, adamw, sgd or adagrad."""

    name: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0)  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped every optimizer step."""

    name: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0, then the schedule
    step_size: int = Field(1000, ge=1)  # step: multiply by gamma every step_size steps
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine: floor as a fraction of lr


class SelectionConfig(_Strict):
    """Checkpoint selection on the validation split (never on test).

    ``metric``: ``auc`` (mean AUC over binary tasks, higher is better),
    ``ne``/``logloss`` (mean over binary tasks, lower is better), ``mse``
    (mean over regression tasks, lower is better) or ``loss`` (mean of ne over
    binary and mse / label variance over regression tasks, lower is better).
    With ``auc`` and no binary task, ``mse`` is used.
    """

    metric: Literal["auc", "ne", "logloss", "mse", "loss"] = "auc"
    patience: int | None = Field(None, ge=1)  # early stopping after this many bad evaluations


class TrainConfig(_Strict):
    """Training loop options."""

    seed: int = 0
    batch_size: int = Field(512, ge=1)
    epochs: int = Field(10, ge=1)
    max_examples: int | None = Field(None, ge=1)  # stop after this many training examples
    eval_every: int | None = Field(None, ge=1)  # evaluate every N examples (default: each epoch)
    eval_batch_size: int = Field(8192, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm
    # a step with a non-finite loss: stop the run (an error) or skip the batch and count it
    nonfinite: Literal["stop", "skip"] = "stop"
    weighting: str = "equal"  # loss weighting method, see `adatt.train.weighting`
    weighting_options: dict[str, Any] = {}
    task_weights: list[float] | None = None  # static per-task loss weights
    selection: SelectionConfig = SelectionConfig()
    bf16: bool = False  # bfloat16 autocast for the forward pass


class RuntimeConfig(_Strict):
    """How and where a run executes; none of it changes what the run computes on CPU."""

    device: str = "cpu"
    threads: int | None = Field(None, ge=1)  # torch threads (default: cores / local processes)
    # reuse freed memory instead of re-faulting fresh pages every step (adatt.train.memory)
    keep_freed_memory: bool = True
    # data-parallel training (docs/distributed.md): None = when launched by torchrun with
    # several processes, true = always join torchrun's group, false = never
    distributed: bool | None = None
    progress: bool = True
    tensorboard: bool = False


#: The keys of :class:`RuntimeConfig`, formerly under ``train``.
RUNTIME_KEYS = tuple(RuntimeConfig.model_fields)


class TrackingConfig(_Strict):
    """Experiment tracking (:mod:`adatt.train.tracking`, docs/tracking.md).

    ``backend``: ``none`` (nothing tracked), ``tensorboard`` (the
    ``tensorboard`` extra) or ``mlflow`` (the ``mlflow`` extra). ``uri``:
    TensorBoard's log root (default ``<run>/tb``) or MLflow's tracking URI
    (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<out_dir>/mlflow.db``).
    ``experiment``: the MLflow experiment name.
    """

    backend: Literal["none", "tensorboard", "mlflow"] = "none"
    uri: str | None = None
    experiment: str = Field("adatt", min_length=1)


class RunConfig(_Strict):
    """A whole run: data, model options, training options, execution, where to write."""

    name: str = "run"
    out_dir: str = "runs"
    data: AnyDataConfig = CensusData()
    model: dict[str, Any] = {"name": "adatt_sp"}
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, raw: Any) -> Any:
        data = raw.get("data") if isinstance(raw, dict) else None
        if isinstance(data, dict) and "source" not in data:
            raw = {**raw, "data": {"source": "census", **raw["data"]}}
        return raw


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _deprecated(old: str, new: str, quiet: bool) -> None:
    if not quiet:
        print(f"warning: {old} is deprecated, use {new} (moved to the runtime section)",
              file=sys.stderr)


def _move_runtime_keys(raw: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """Move execution keys written under ``train`` (the old layout) to ``runtime``."""
    train = raw.get("train")
    if not isinstance(train, dict):
        return raw
    for k in RUNTIME_KEYS:
        if k in train:
            runtime = raw.setdefault("runtime", {})
            if not isinstance(runtime, dict):
                raise ConfigError("runtime: must be a mapping")
            _deprecated(f"train.{k}", f"runtime.{k}", quiet)
            runtime.setdefault(k, train.pop(k))
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``dotted.key=value`` pairs in a nested dict (values parsed as YAML).

    ``train.<key>`` of an execution setting (the old layout) sets ``runtime.<key>``,
    with a deprecation warning on stderr.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: an override is key=value")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if len(parts) == 2 and parts[0] == "train" and parts[1] in RUNTIME_KEYS:
            _deprecated(key.strip(), f"runtime.{parts[1]}", quiet=False)
            parts[0] = "runtime"
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {p} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(text)
    return raw


def _describe(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    if e["loc"][:1] == ("data",) and (len(e["loc"]) == 1 or e["loc"][1] in SOURCES
                                       or e["type"].startswith("union_tag")):
        one = ValidationError.from_exception_data(err.title, [{**e, "loc": e["loc"][1:]}])
        return format_validation_error(one, prefix="data").replace("data: ", "data.", 1)
    loc = ".".join(str(x) for x in e["loc"])
    loc = f"{prefix}{loc}" if loc else prefix.rstrip(".")
    if e["type"] == "extra_forbidden":
        section = loc.rsplit(".", 1)[0] if "." in loc else "the config"
        return f"{loc}: unknown key ({section} has: ...)"
    return f"{loc}: {e['msg']} (got {e.get('input')!r})"


def validate_model_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check model options against the named model's constructor; returns them coerced."""
    from adatt.models import model_class, model_options

    options = dict(options)
    name = options.get("name")
    if not isinstance(name, str):
        raise ConfigError("model.name: required (a registered model name)")
    try:
        cls = model_class(name)
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    params = model_options(name)
    hints = typing.get_type_hints(cls.__init__)
    out: dict[str, Any] = {"name": name}
    for key, value in options.items():
        if key == "name":
            continue
        if key in FROM_DATA:
            raise ConfigError(f"model.{key}: set by the data, not the config")
        if key not in params:
            known = ", ".join(k for k in params if k not in FROM_DATA)
            raise ConfigError(f"model.{key}: unknown option of {name} (options: {known})")
        try:
            out[key] = TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as err:
            raise ConfigError(f"model.{key}: {err.errors()[0]['msg']} (got {value!r})") from None
        _check_counts(f"model.{key}", out[key], zero_ok=key in ZERO_OK)
    return out


def _description(text: str) -> str:
    """A config's description: its opening comment less the command line, first clause.

    Parenthesised details are dropped and the text ends at the first ``;`` or
    sentence end, so that it fits one line.
    """
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        line = line.lstrip("#").strip()
        if line and not line.startswith("adatt "):
            lines.append(line)
    desc, depth = "", 0
    for ch in " ".join(lines):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and ch != ")":
            desc += ch
    desc = re.split(r";|\.(?:\s|$)", desc)[0]
    return re.sub(r"\s+", " ", desc).replace(" ,", ",").strip(" ,")


def packaged_configs() -> dict[str, str]:
    """The shipped configs: name (``census/adatt_sp``) -> first line of its description.

    Example:
        >>> configs = packaged_configs()
        >>> "census/adatt_sp" in configs and "sim/adatt" in configs
        True
        >>> configs["census/adatt_sp"]
        "AdaTT-sp on UCI Census-Income, the paper's group A sizes, Aoki et al.'s training protocol"
    """
    out = {}
    for p in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        out[name] = _description(p.read_text())
    return out


def resolve_config(ref: str | Path) -> Path:
    """The YAML file a ``--config`` value names: a path when it exists, else a shipped config.

    A name may carry the ``.yaml`` suffix and the ``configs/`` prefix of a
    clone's paths, so ``configs/census/adatt_sp.yaml`` also works outside a
    clone. Neither a file nor a name is a :class:`ConfigError` listing the
    closest names.

    Example:
        >>> resolve_config("census/adatt_sp").relative_to(CONFIG_DIR).as_posix()
        'census/adatt_sp.yaml'
        >>> resolve_config("census/adatt_s")
        Traceback (most recent call last):
        ...
        adatt.config.ConfigError: census/adatt_s: ... (closest: census/adatt_sp, ...)
    """
    p = Path(ref)
    if p.is_file():
        return p
    names = packaged_configs()
    name = p.as_posix()
    if not p.is_absolute():
        name = name.removeprefix("./").removeprefix("configs/")
        for suffix in (".yaml", ".yml"):
            name = name.removesuffix(suffix)
        if name in names:
            return CONFIG_DIR / f"{name}.yaml"
    close = difflib.get_close_matches(name, list(names), n=4, cutoff=0.6)
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise ConfigError(f"{ref}: config file not found, nor a packaged config name "
                      f"({hint}all: adatt config list)")


#: model options whose integers may be 0 (a count of optional experts)
ZERO_OK = ("shared_experts",)


def _check_counts(key: str, value: Any, zero_ok: bool) -> None:
    """Integers in a model option are sizes or counts: >= 1 (>= 0 for ``ZERO_OK``)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        low = 0 if zero_ok else 1
        if value < low:
            raise ConfigError(f"{key}: sizes and counts must be >= {low} (got {value})")
    elif isinstance(value, list | tuple):
        for v in value:
            _check_counts(key, v, zero_ok)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate everything.

    ``path`` is a file or the name of a shipped config (:func:`resolve_config`).
    """
    return _load(path, overrides, saved=False)


def load_saved_config(path: str | Path) -> RunConfig:
    """A run's saved ``config.yaml``, in the current layout or the old one.

    The old layout (execution keys under ``train``, every source's options under
    ``data``) is read without a warning: execution keys move to ``runtime`` and
    data options of other sources are dropped.
    """
    return _load(path, None, saved=True)


def _load(path: str | Path | None, overrides: list[str] | None, saved: bool) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        p = resolve_config(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        raw = _move_runtime_keys(raw, quiet=saved)
        if saved and isinstance(raw.get("data"), dict):
            data = raw["data"]
            own = SOURCES.get(data.get("source", "census"))
            if own is not None:
                raw["data"] = {k: v for k, v in data.items() if k in own.model_fields}
    raw = apply_overrides(raw, list(overrides or []))
    if isinstance(raw.get("model", {}), dict):
        raw.setdefault("model", {}).setdefault("name", "adatt_sp")
    check_finite(raw)  # before the range checks, which would say "nan > 0" less clearly
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        msg = _describe(err)
        if "unknown key" in msg:
            loc = msg.split(":")[0]
            msg = _unknown_key_message(loc)
        raise ConfigError(msg) from None
    cfg.model = validate_model_options(cfg.model)
    check_finite(cfg.model_dump(mode="python"))
    check_name(cfg.name)
    check_device(cfg.runtime.device)
    return cfg


def check_finite(tree: Any, prefix: str = "") -> None:
    """A :class:`ConfigError` naming the first non-finite number (inf, nan) in ``tree``.

    >>> check_finite({"train": {"task_weights": [1.0, float("nan")]}})
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: train.task_weights[1]: must be a finite number (got nan)
    """
    if isinstance(tree, dict):
        for k, v in tree.items():
            check_finite(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            check_finite(v, f"{prefix}[{i}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ConfigError(f"{prefix}: must be a finite number (got {tree})")


def check_name(name: str) -> None:
    """A run ``name`` is a relative path that stays inside ``out_dir``.

    >>> check_name("census/seed_0")
    >>> check_name("/tmp/x")
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: name: '/tmp/x' leaves out_dir (no '..' or absolute path)
    """
    p = PurePath(name)
    if not name.strip() or p.parts in ((), (".",)):
        raise ConfigError(f"name: {name!r} is empty; give the run directory's name")
    if p.is_absolute() or ".." in p.parts or "\\" in name or p.drive:
        raise ConfigError(f"name: {name!r} leaves out_dir (no '..' or absolute path)")


def check_device(device: str) -> None:
    """``runtime.device`` must be a device string torch understands (``cpu``, ``cuda``,
    ``cuda:1``, ...); whether it is available is checked when the run starts.

    >>> check_device("gpu0")
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: runtime.device: 'gpu0' is not a device (cpu, cuda, cuda:N, ...)
    """
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"runtime.device: {device!r} is not a device (cpu, cuda, cuda:N, ...)"
                          ) from None


def _unknown_key_message(loc: str) -> str:
    parts = loc.split(".")
    model: type[BaseModel] = RunConfig
    for p in parts[:-1]:
        field = model.model_fields.get(p)
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    section = ".".join(parts[:-1]) or "the config"
    return f"{loc}: unknown key ({section} has: {', '.join(model.model_fields)})"


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what a run saves as ``config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
