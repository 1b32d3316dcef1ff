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
(``num_tasks``, ``dense_dim``, ``cat_cardinalities`` and ``multi_valued`` come from
the data and may not be set).

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
import types
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
           "check_finite", "check_name", "check_device", "REFERENCE_COMMAND",
           "config_rows", "model_option_rows", "reference_text", "reference_markdown"]

FROM_DATA = ("num_tasks", "dense_dim", "cat_cardinalities", "multi_valued")

#: The configs shipped inside the package (``configs/`` in a clone links here).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A bad config key or value (one line, naming the key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(_Strict):
    """Optimizer from torch.optim: adam, adamw, sgd or adagrad."""

    name: Literal["adam", "adamw", "sgd", "adagrad"] = Field(
        "adam", description="optimizer from torch.optim")
    lr: float = Field(1e-3, gt=0, description="learning rate (the peak of the schedule)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (L2; decoupled for adamw)")
    momentum: float = Field(0.0, ge=0, description="momentum (sgd only)")
    betas: tuple[float, float] = Field((0.9, 0.999),
                                       description="moment decay rates (adam / adamw only)")


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped every optimizer step."""

    name: Literal["constant", "step", "cosine"] = Field(
        "constant", description="learning-rate schedule, stepped every optimizer step")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many steps, "
                                                   "then the schedule")
    step_size: int = Field(1000, ge=1,
                           description="step: multiply the rate by gamma every step_size steps")
    gamma: float = Field(0.1, gt=0, description="step: the factor applied every step_size steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1,
                                description="cosine: the floor, as a fraction of lr")


class SelectionConfig(_Strict):
    """Checkpoint selection on the validation split (never on test).

    ``metric``: ``auc`` (mean AUC over binary tasks, higher is better),
    ``ne``/``logloss`` (mean over binary tasks, lower is better), ``mse``
    (mean over regression tasks, lower is better) or ``loss`` (mean of ne over
    binary and mse / label variance over regression tasks, lower is better).
    With ``auc`` and no binary task, ``mse`` is used.
    """

    metric: Literal["auc", "ne", "logloss", "mse", "loss"] = Field(
        "auc", description="validation metric that picks best.pt (auc: higher is better, "
                           "others lower; auc without binary tasks: mse)")
    patience: int | None = Field(None, ge=1, description="early stopping after this many "
                                 "evaluations without improvement (null: never)")


class TrainConfig(_Strict):
    """Training loop options."""

    seed: int = Field(0, description="seed of the model initialisation and batch order")
    batch_size: int = Field(512, ge=1, description="training examples per optimizer step")
    epochs: int = Field(10, ge=1, description="passes over the training split")
    max_examples: int | None = Field(None, ge=1,
                                     description="stop after this many training examples")
    eval_every: int | None = Field(None, ge=1, description="evaluate on the validation split "
                                   "every N training examples (null: after each epoch)")
    eval_batch_size: int = Field(8192, ge=1, description="examples per batch when evaluating")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="the optimizer")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="the learning-rate schedule")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm "
                                    "to this value (null: no clipping)")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a step with a non-finite loss: stop the run (an error) or skip "
                            "the batch and count it")
    weighting: str = Field("equal", description="loss weighting method: equal, uncertainty, "
                           "gradnorm, dwa or pcgrad (adatt.train.weighting)")
    weighting_options: dict[str, Any] = Field({}, description="options of the weighting method")
    task_weights: list[float] | None = Field(None, description="static per-task loss weights, "
                                             "one per task (null: all 1)")
    selection: SelectionConfig = Field(SelectionConfig(),
                                       description="checkpoint selection and early stopping")
    bf16: bool = Field(False, description="bfloat16 autocast for the forward pass")
    flush_denormal: bool = Field(True, description="flush denormal floats to zero on CPU "
                                 "(adatt.train.denormal): several times faster late in "
                                 "training; false keeps IEEE gradual underflow")
    compile: bool | Literal["auto"] = Field(
        "auto", description="the training step through torch.compile (adatt.train.compiled): "
                            "true, false, or auto (on where measured faster than eager: "
                            "docs/performance.md)")


class RuntimeConfig(_Strict):
    """How and where a run executes; none of it changes what the run computes on CPU."""

    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N, ...")
    threads: int | None = Field(None, ge=1, description="torch threads "
                                "(null: cores / local processes)")
    keep_freed_memory: bool = Field(True, description="reuse freed memory instead of "
                                    "re-faulting fresh pages every step (adatt.train.memory)")
    distributed: bool | None = Field(None, description="data-parallel training "
                                     "(docs/distributed.md): null = when torchrun starts several "
                                     "processes, true = always, false = never")
    progress: bool = Field(True, description="progress bar in a terminal, one line per "
                           "evaluation otherwise")
    tensorboard: bool = Field(False, description="write TensorBoard event files "
                              "(the tensorboard extra)")


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

    backend: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="experiment tracking backend (none: nothing tracked)")
    uri: str | None = Field(None, description="TensorBoard log root (default <run>/tb) or "
                            "MLflow tracking URI (default $MLFLOW_TRACKING_URI, else "
                            "sqlite:///<out_dir>/mlflow.db)")
    experiment: str = Field("adatt", min_length=1, description="the MLflow experiment name")


class RunConfig(_Strict):
    """A whole run: data, model options, training options, execution, where to write."""

    name: str = Field("run", description="run directory name under out_dir "
                      "(a relative path)")
    out_dir: str = Field("runs", description="directory that holds the run directories")
    data: AnyDataConfig = Field(CensusData(), description="the data source and its options")
    model: dict[str, Any] = Field({"name": "adatt_sp"}, description="model name and "
                                  "constructor options (adatt.models)")
    train: TrainConfig = Field(TrainConfig(), description="the training recipe")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="how and where the run executes")
    tracking: TrackingConfig = Field(TrackingConfig(), description="experiment tracking")

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
    data options of other sources are dropped. A config saved before
    ``data.standardize_labels`` existed reads it as false (how that run was trained),
    and so does one saved before ``train.flush_denormal`` existed; so a resumed
    experiment never takes such a run as made with the current defaults.
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
            # saved before regression labels were standardised by default: trained on raw ones
            raw["data"].setdefault("standardize_labels", False)
        if saved and isinstance(raw.get("train"), dict):
            # saved before denormals were flushed by default: trained without flushing
            raw["train"].setdefault("flush_denormal", False)
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


# ---------------------------------------------------------------------------------------
# The config reference: every key with its type, default and meaning, generated from the
# typed models above, the data sources' models and the model constructors.

#: the command that regenerates ``docs/config.md``
REFERENCE_COMMAND = "python -m adatt config show --all --format markdown > docs/config.md"

#: marks a constructor option or key without a default
_REQUIRED = object()

_RST = re.compile(r":(?:class|func|mod|meth|data):`~?([^`]+)`|``([^`]*)``|`([^`]*)`")


def _plain(text: str) -> str:
    """reST markup to plain text on one line: ``x`` -> x, :class:`X` -> X."""
    text = _RST.sub(lambda m: next(g for g in m.groups() if g is not None), text)
    return re.sub(r"\s+", " ", text).strip()


def _type_name(tp: Any) -> str:
    """A type annotation as users write it: ``int | null``, ``adam | sgd``, ``list[float]``."""
    if tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _constraints(field: Any) -> str:
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >="}
    out = []
    for m in field.metadata:
        for attr, op in ops.items():
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{op} {v}")
    return f" ({', '.join(out)})" if out else ""


def _default_text(value: Any) -> str:
    if value is _REQUIRED:
        return "required"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = _listify(value)
    return yaml.safe_dump(_listify(value), default_flow_style=True, width=10_000).strip() \
        .removesuffix("\n...").removesuffix("...").strip()


def _listify(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_listify(v) for v in value]
    return value


def _section_rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) of every leaf key of a typed section."""
    rows = []
    for key, field in model.model_fields.items():
        path = f"{prefix}{key}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _section_rows(ann, f"{path}.")
            continue
        default = _REQUIRED if field.is_required() else field.get_default(
            call_default_factory=True)
        rows.append((path, _type_name(ann) + _constraints(field), _default_text(default),
                     field.description or ""))
    return rows


def _docstring_args(doc: str) -> tuple[dict[str, str], str]:
    """The ``Args:`` section of a docstring: {name: meaning} of its items, and its free
    text when it is written inline (``Args: as :class:`AdaTTSp`, plus ...``)."""
    lines = (doc or "").splitlines()
    items: dict[str, str] = {}
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("Args:")]
    if not starts:
        return items, ""
    i = starts[0]
    line = lines[i]
    rest = line.strip().removeprefix("Args:").strip()
    if rest:  # inline: the paragraph that starts here
        para = [rest]
        for nxt in lines[i + 1:]:
            if not nxt.strip():
                break
            para.append(nxt.strip())
        return items, " ".join(para)
    base = None
    names: list[str] = []
    for nxt in lines[i + 1:]:
        if not nxt.strip():
            break
        indent = len(nxt) - len(nxt.lstrip())
        base = indent if base is None else base
        if indent < base:
            break
        m = re.match(r"\s*([\w, ]+):\s*(.*)", nxt) if indent == base else None
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                items[n] = m.group(2)
        else:
            for n in names:
                items[n] += " " + nxt.strip()
    return items, ""


def _first_sentence(text: str) -> str:
    """One line of an ``Args:`` item: its first sentence, with YAML's ``null`` for None."""
    text = _plain(text)
    text = re.split(r"(?<=[a-z)\]])\.(?:\s|$)", text)[0].rstrip(".")
    text = re.sub(r";\s*the other options .*$", "", text)
    return re.sub(r"^None:", "null:", text)


def _option_meaning(cls: type, key: str, seen: set[type] | None = None) -> str:
    """The meaning of constructor option ``key`` of ``cls``: its ``Args:`` item, else the
    item of a class its ``Args:`` points to (``as :class:`X```) or of a base class, else
    the parenthesis after ````key```` in the inline ``Args:`` text."""
    seen = set() if seen is None else seen
    seen.add(cls)
    items, inline = _docstring_args(cls.__doc__ or "")
    if key in items:
        return _first_sentence(items[key])
    refs = re.findall(r":class:`~?([\w.]+)`", inline + " ".join(items.values()))
    module = sys.modules[cls.__module__]
    linked = [getattr(module, r.rsplit(".", 1)[-1], None) for r in refs]
    for other in [c for c in linked if isinstance(c, type)] + list(cls.__mro__[1:]):
        if other not in seen and other.__doc__:
            found = _option_meaning(other, key, seen)
            if found:
                return found
    m = re.search(rf"``{key}`` \(((?:[^()]|\([^()]*\))*)\)", inline)
    return _first_sentence(m.group(1)) if m else ""


def model_option_rows(name: str) -> list[tuple[str, str, str, str]]:
    """(``model.<option>``, type, default, meaning) of model ``name``'s config options,
    from its constructor's signature, type hints and docstring ``Args:``.

    Example:
        >>> rows = {r[0]: r for r in model_option_rows("mmoe")}
        >>> rows["model.num_experts"][1:]
        ('int', '6', 'n experts per level')
    """
    from adatt.models import model_class, model_options

    cls = model_class(name)
    hints = typing.get_type_hints(cls.__init__)
    rows = [("model.name", "str", "adatt_sp", "the model (`adatt models` lists them)")]
    for key, param in model_options(name).items():
        if key in FROM_DATA:
            continue
        default = _REQUIRED if param.default is param.empty else param.default
        rows.append((f"model.{key}", _type_name(hints[key]).replace("NoneType", "null"),
                     _default_text(default), _option_meaning(cls, key)))
    return rows


def config_rows(source: str = "census", model: str = "adatt_sp"
                ) -> list[tuple[str, str, str, str]]:
    """Every key of a run config with data source ``source`` and model ``model``:
    (dotted key, type, default, meaning), in the order of the sections.

    Example:
        >>> rows = {r[0]: r for r in config_rows("files", "mmoe")}
        >>> rows["train.selection.patience"][1:3]
        ('int | null (>= 1)', 'null')
        >>> "data.rows" in rows, "data.schema" in rows, "model.num_experts" in rows
        (False, True, True)
    """
    from adatt.models import list_models

    if source not in SOURCES:
        raise ConfigError(f"--source: unknown data source {source!r} "
                          f"(sources: {', '.join(SOURCES)})")
    if model not in list_models():
        raise ConfigError(f"--model: unknown model {model!r} "
                          f"(models: {', '.join(list_models())})")
    rows = []
    for key, field in RunConfig.model_fields.items():
        if key == "data":
            rows += _section_rows(SOURCES[source], "data.")
        elif key == "model":
            rows += model_option_rows(model)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += _section_rows(field.annotation, f"{key}.")
        else:
            rows.append((key, _type_name(field.annotation), _default_text(field.default),
                         field.description or ""))
    return rows


def _text_table(rows: list[tuple[str, str, str, str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{w[0]}}  {t:<{w[1]}}  {d:<{w[2]}}  {m}".rstrip()
                     for k, t, d, m in rows)


def _md_table(rows: list[tuple[str, str, str, str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{k}` | {cell(t)} | `{cell(d)}` | {cell(m)} |" for k, t, d, m in rows]
    return "\n".join(out)


def reference_text(source: str | None = "census", model: str | None = "adatt_sp") -> str:
    """``adatt config show``: one line per key, ``key  type  default  meaning``.

    ``source=None`` / ``model=None``: the keys of every source / model, each under a
    ``# data source: S`` / ``# model: M`` line.
    """
    from adatt.models import list_models

    if source is not None and model is not None:
        return _text_table(config_rows(source, model)) + "\n"
    rows = config_rows(source or "census", model or "adatt_sp")
    blocks = [_text_table([r for r in rows if not r[0].startswith(("data.", "model."))])]
    for s in [source] if source else list(SOURCES):
        blocks.append(f"# data source: {s}\n" + _text_table(_section_rows(SOURCES[s], "data.")))
    for m in [model] if model else list(list_models()):
        blocks.append(f"# model: {m}\n" + _text_table(model_option_rows(m)))
    return "\n\n".join(blocks) + "\n"


def reference_markdown(sources: list[str] | None = None, models: list[str] | None = None
                       ) -> str:
    """The config reference as markdown (``docs/config.md``: every source and model)."""
    from adatt.models import list_models

    sources = list(SOURCES) if sources is None else sources
    models = list(list_models()) if models is None else models
    base = [r for r in config_rows(sources[0], models[0])
            if not r[0].startswith(("data.", "model."))]
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for r in base:
        sections.setdefault(r[0].split(".")[0] if "." in r[0] else "", []).append(r)
    out = ["# Configuration reference", "",
           f"<!-- generated by `{REFERENCE_COMMAND}`; do not edit -->", "",
           "Every key of a run config, with its type, default and meaning. A config is a "
           "YAML file (or a shipped config's name, `adatt config list`) with "
           "`dotted.key=value` overrides on the command line. `adatt config show "
           "[--source S] [--model M]` prints the keys of one data source and one model.", ""]
    out += ["## Top level", "", _md_table(sections.pop("")), ""]
    out += ["## data", "", "The keys of the chosen `data.source` only: a key of another "
            "source is an error.", ""]
    for s in sources:
        out += [f"### source: {s}", "", _md_table(_section_rows(SOURCES[s], "data.")), ""]
    out += ["## model", "", "`model.name` picks the model; the other keys are its "
            "constructor's options (`num_tasks`, `dense_dim` and `cat_cardinalities` come "
            "from the data).", ""]
    for m in models:
        out += [f"### model: {m}", "", _md_table(model_option_rows(m)), ""]
    for name, rows in sections.items():
        out += [f"## {name}", "", _md_table(rows), ""]
    return "\n".join(out).rstrip() + "\n"
