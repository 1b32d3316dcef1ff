"""The config reference (``adatt config show``, ``docs/config.md``): generated from the typed
config models and the model constructors, complete, and committed up to date."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from adatt.cli import main
from adatt.config import (
    FROM_DATA,
    REFERENCE_COMMAND,
    RunConfig,
    config_rows,
    dump_config,
    load_config,
    model_option_rows,
    reference_markdown,
)
from adatt.data.config import SOURCES
from adatt.models import list_models, model_options

DOCS = Path(__file__).parent.parent / "docs" / "config.md"


def _sections(model: type[BaseModel], prefix: str = ""):
    for key, field in model.model_fields.items():
        yield f"{prefix}{key}", field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{prefix}{key}.")


@pytest.mark.parametrize("model", [RunConfig, *SOURCES.values()], ids=lambda m: m.__name__)
def test_every_key_has_a_one_line_description(model):
    for key, field in _sections(model):
        assert field.description, f"{model.__name__}.{key} has no Field(description=...)"
        assert "\n" not in field.description, key


@pytest.mark.parametrize("name", list(list_models()))
def test_model_options_come_from_the_constructor(name):
    rows = {r[0]: r for r in model_option_rows(name)}
    params = {k: p for k, p in model_options(name).items() if k not in FROM_DATA}
    assert set(rows) == {"model.name"} | {f"model.{k}" for k in params}
    for key, p in params.items():
        _, tp, default, meaning = rows[f"model.{key}"]
        assert meaning, f"{name}: option {key} has no meaning in its docstring's Args:"
        assert "\n" not in meaning and tp
        # the default shown is the constructor's, as YAML
        want = p.default
        want = [list(w) if isinstance(w, tuple) else w for w in want] if isinstance(
            want, tuple) else want
        assert yaml.safe_load(default) == want, (key, default)


def test_meaning_follows_args_references():
    # PLE's docstring: "Args: as AdaTT without native_fusion"; AdaTT's: "as AdaTTSp, plus
    # shared_experts (m_s >= 0; ...)"
    ple = {r[0]: r[3] for r in model_option_rows("ple")}
    assert ple["model.tower_sizes"] == "task tower hidden widths"
    assert ple["model.shared_experts"].startswith("m_s >= 0")
    assert "model.native_fusion" not in ple


def test_rows_hold_the_chosen_source_and_model_only():
    keys = [r[0] for r in config_rows("files", "mmoe")]
    assert "data.schema" in keys and "data.rows" not in keys and "data.preset" not in keys
    assert "model.num_experts" in keys and "model.experts_per_task" not in keys
    for key in ("train.selection.patience", "train.task_weights", "train.schedule.name",
                "runtime.tensorboard", "tracking.backend", "train.optimizer.lr"):
        assert key in keys
    census = {r[0]: r for r in config_rows()}
    assert census["data.source"][2] == "census" and census["train.batch_size"][1:3] == (
        "int (>= 1)", "512")
    assert census["data.instance_weight"][1] == "drop | feature | sample_weight"


def test_docs_config_md_is_up_to_date():
    assert DOCS.is_file(), f"docs/config.md is missing; regenerate it: {REFERENCE_COMMAND}"
    assert DOCS.read_text() == reference_markdown(), (
        f"docs/config.md is out of date; regenerate it: {REFERENCE_COMMAND} (or make config-docs)")


def test_markdown_has_every_source_and_model():
    md = reference_markdown()
    for s in SOURCES:
        assert f"### source: {s}" in md
    for m in list_models():
        assert f"### model: {m}" in md


def test_cli_show(capsys):
    assert main(["config", "show", "--source", "sim", "--model", "ple"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = [line.split()[0] for line in out]
    assert len(keys) == len(set(keys)) == len(config_rows("sim", "ple"))
    assert "data.preset" in keys and "model.shared_experts" in keys and "data.schema" not in keys
    line = next(x for x in out if x.startswith("train.selection.patience "))
    assert "int | null" in line and "null" in line and "early stopping" in line
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "data.data_dir" in out and "model.experts_per_task" in out


def test_cli_show_markdown_and_all(capsys):
    assert main(["config", "show", "--all", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == reference_markdown()
    assert main(["config", "show", "--format", "markdown", "--source", "stream"]) == 0
    out = capsys.readouterr().out
    assert "### source: stream" in out and "### source: census" not in out
    assert main(["config", "show", "--all"]) == 0
    out = capsys.readouterr().out
    assert out.count("# data source: ") == len(SOURCES)
    assert out.count("# model: ") == len(list_models())


@pytest.mark.parametrize("args,message", [
    (["--source", "csv"], "error: --source: unknown data source 'csv'"),
    (["--model", "adatt-sp"], "error: --model: unknown model 'adatt-sp'"),
    (["--format", "html"], "error: --format: 'html' is not text or markdown"),
])
def test_cli_show_bad_values(capsys, args, message):
    assert main(["config", "show", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_train_help_points_to_config_show(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "adatt config show" in capsys.readouterr().out


def test_dumped_config_holds_only_what_applies():
    cfg = load_config(None, ["data.source=files", "data.schema=s.yaml", "data.train=t.csv",
                             "model.name=mmoe", "model.num_experts=4"])
    saved = yaml.safe_load(dump_config(cfg))
    assert set(saved["data"]) == set(SOURCES["files"].model_fields)
    assert saved["model"] == {"name": "mmoe", "num_experts": 4}
    options = {f"model.{k}" for k in model_options("mmoe")} | {"model.name"}
    assert {f"model.{k}" for k in saved["model"]} <= options
    # every saved key is one of the reference's keys for that source and model
    keys = {r[0] for r in config_rows("files", "mmoe")}

    def leaves(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict) and k not in ("weighting_options",):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert set(leaves(saved)) <= keys


def test_hints_render_as_yaml_types():
    rows = {r[0]: r for r in config_rows("census", "adatt")}
    assert rows["model.embedding_dim"][1] == "int | null"
    assert rows["model.expert_sizes"][1:3] == ("Sequence[int | Sequence[int]]", "[128, 64]")
    assert rows["data.data_dir"][1] == "str | null"
    assert rows["train.optimizer.betas"][2] == "[0.9, 0.999]"
