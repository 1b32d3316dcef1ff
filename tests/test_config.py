"""Config loading: YAML + typed overrides, unknown keys and bad types are one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from adatt.config import RUNTIME_KEYS, ConfigError, dump_config, load_config, load_saved_config

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.optimizer.lr=3e-4", "model.name=ple",
                             "model.experts_per_task=[1,2,1]", "train.bf16=true"])
    assert cfg.train.optimizer.lr == pytest.approx(3e-4)
    assert cfg.model == {"name": "ple", "experts_per_task": [1, 2, 1]}
    assert cfg.train.bf16 is True


@pytest.mark.parametrize("override,message", [
    ("train.epoch=2", "train.epoch: unknown key"),
    ("train.optimizer.learning_rate=1", "train.optimizer.learning_rate: unknown key"),
    ("bogus=1", "bogus: unknown key"),
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("train.optimizer.name=rmsprop", "train.optimizer.name"),
    ("model.experts=2", "model.experts: unknown option of adatt_sp"),
    ("model.experts_per_task=two", "model.experts_per_task"),
    ("model.num_tasks=3", "model.num_tasks: set by the data"),
    ("model.name=nope", "model.name: unknown model 'nope'"),
    ("data.source=nowhere", "data.source"),
    ("train.epochs", "an override is key=value"),
])
def test_bad_keys_and_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as exc:
        load_config(None, [override])
    assert "\n" not in str(exc.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_configs_load_and_name_their_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# adatt ") and str(path.relative_to(path.parents[2])) in first
    cfg = load_config(path)
    again = load_config(None, [])
    assert dump_config(cfg) != dump_config(again)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.name=mmoe", "model.num_experts=3"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("override,message", [
    ("train.optimizer.lr=.inf", "train.optimizer.lr: must be a finite number (got inf)"),
    ("train.optimizer.weight_decay=.nan", "train.optimizer.weight_decay: must be a finite"),
    ("train.optimizer.momentum=.inf", "train.optimizer.momentum: must be a finite"),
    ("train.optimizer.betas=[0.9,.inf]", "train.optimizer.betas[1]: must be a finite"),
    ("train.grad_clip=.inf", "train.grad_clip: must be a finite number"),
    ("train.schedule.gamma=.inf", "train.schedule.gamma: must be a finite"),
    ("train.task_weights=[1.0,.nan]", "train.task_weights[1]: must be a finite number (got nan)"),
    ("train.weighting_options.alpha=.inf", "train.weighting_options.alpha: must be a finite"),
    ("train.optimizer.lr=-.inf", "train.optimizer.lr"),
])
def test_non_finite_hyperparameters_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/tmp/elsewhere", "..", ".", " "])
def test_names_that_leave_out_dir_are_refused(name):
    with pytest.raises(ConfigError, match=r"^name: "):
        load_config(None, [f"name={name}"])


def test_names_inside_out_dir_are_kept():
    assert load_config(None, ["name=group1/seed_0"]).name == "group1/seed_0"


@pytest.mark.parametrize("override,message", [
    ("runtime.device=gpu0", "runtime.device: 'gpu0' is not a device"),
    ("runtime.device=cuda:x", "runtime.device: 'cuda:x' is not a device"),
    ("model.gate_hidden=[-3]", "model.gate_hidden: sizes and counts must be >= 1 (got -3)"),
    ("model.expert_sizes=[[8,-1]]", "model.expert_sizes: sizes and counts must be >= 1"),
    ("model.embedding_dim=0", "model.embedding_dim: sizes and counts must be >= 1 (got 0)"),
])
def test_bad_devices_and_negative_sizes_are_config_errors(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert str(exc.value).startswith(message)


def test_zero_shared_experts_and_gpu_strings_are_accepted():
    cfg = load_config(None, ["model.name=ple", "model.shared_experts=0", "runtime.device=cuda:1"])
    assert cfg.model["shared_experts"] == 0 and cfg.runtime.device == "cuda:1"


def test_execution_settings_live_in_runtime():
    cfg = load_config(None, ["runtime.device=cpu", "runtime.threads=2", "runtime.progress=false"])
    assert (cfg.runtime.threads, cfg.runtime.progress) == (2, False)
    assert not set(RUNTIME_KEYS) & set(cfg.train.model_dump())
    text = dump_config(cfg)
    assert "runtime:\n  device: cpu\n  threads: 2\n" in text
    with pytest.raises(ConfigError, match=r"^runtime\.thread: unknown key \(runtime has: device"):
        load_config(None, ["runtime.thread=2"])


def test_old_train_keys_move_to_runtime_with_a_warning(tmp_path, capsys):
    cfg = load_config(None, ["train.threads=1", "train.tensorboard=true"])
    assert cfg.runtime.threads == 1 and cfg.runtime.tensorboard is True
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: train.threads is deprecated, use runtime.threads (moved to the "
                   "runtime section)",
                   "warning: train.tensorboard is deprecated, use runtime.tensorboard (moved to "
                   "the runtime section)"]
    p = tmp_path / "old.yaml"
    p.write_text("train:\n  epochs: 2\n  progress: false\n  device: cpu\n")
    cfg = load_config(p, ["runtime.progress=true"])  # an override still wins
    assert cfg.train.epochs == 2 and cfg.runtime.progress is True
    assert len(capsys.readouterr().err.splitlines()) == 2
    assert "progress" not in dump_config(cfg).split("runtime:")[0]


def test_saved_config_in_the_old_layout_loads_silently(tmp_path, capsys):
    p = tmp_path / "config.yaml"
    p.write_text("data:\n  source: sim\n  rows: 2000\n  data_dir: null\n  shuffle_buffer: 8\n"
                 "train:\n  epochs: 2\n  threads: 1\n")
    cfg = load_saved_config(p)
    assert cfg.data.rows == 2000 and cfg.runtime.threads == 1 and cfg.train.epochs == 2
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="^data.data_dir: not an option of source sim"):
        load_config(p)  # a user's config must not carry another source's keys


@pytest.mark.parametrize("overrides,message", [
    (["data.rows=5"], "data.rows: not an option of source census (census has: data_dir, "),
    (["data.source=sim", "data.dim=5"], "data.dim: not an option of source sim"),
    (["data.source=mmoe_synthetic", "data.preset=group2"],
     "data.preset: not an option of source mmoe_synthetic"),
    (["data.source=files", "data.train=t.csv"], "data.schema: required by source files"),
])
def test_data_key_of_another_source_is_an_error(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)) as exc:
        load_config(None, overrides)
    assert "\n" not in str(exc.value)


def test_resolved_config_holds_only_the_chosen_sources_keys():
    cfg = load_config(None, ["data.source=sim", "data.rows=1000"])
    assert dump_config(cfg).split("model:")[0] == (
        "name: run\nout_dir: runs\ndata:\n  source: sim\n  standardize_labels: true\n"
        "  valid_fraction: 0.1\n"
        "  test_fraction: 0.1\n  preset: group1\n  rows: 1000\n  seed: 0\n")
