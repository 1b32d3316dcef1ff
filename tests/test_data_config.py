"""DataConfig validation, load_splits dispatch, describe() and the lazy package namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import adatt.data as data
from adatt.data.config import DataConfig, load_splits
from adatt.data.errors import DataError
from adatt.data.info import describe, task_statistics


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"source": "sim", "rows": 0}, "rows: Input should be greater than or equal to 1"),
        ({"source": "kaggle"}, "source: Input should be 'census', 'sim'"),
        ({"instance_weight": "both"}, "instance_weight: Input should be"),
        ({"source": "mmoe_synthetic", "correlation": 1.5},
         "correlation: Input should be less than or equal to 1"),
        ({"source": "sim", "valid_fraction": 0.5, "test_fraction": 0.5},
         "valid_fraction \\+ test_fraction"),
        ({"source": "sim", "preset": "group7"}, "unknown sim preset 'group7'"),
        ({"source": "files", "train": "t.csv"}, "schema: required by source files"),
        ({"sim_rows": 5}, "sim_rows: not an option of source census"),
        # a key of another source names the key and the chosen source
        ({"rows": 5}, "rows: not an option of source census \\(census has: data_dir, "),
        ({"source": "sim", "data_dir": "d"}, "data_dir: not an option of source sim"),
        ({"source": "census", "valid_fraction": 0.2},
         "valid_fraction: not an option of source census"),
        ({"source": "files", "schema": "s", "train": "t", "shuffle_buffer": 3},
         "shuffle_buffer: not an option of source files"),
        ({"source": "stream", "schema": "s", "train": "t", "valid": "v", "test": "t",
          "split_seed": 1}, "split_seed: not an option of source stream"),
    ],
)
def test_bad_config_is_a_one_line_data_error(values: dict, message: str):
    with pytest.raises(DataError, match=message) as e:
        DataConfig.from_dict(values)
    assert "\n" not in str(e.value) and str(e.value).startswith("data config: ")
    with pytest.raises(ValidationError):  # a ValueError too
        DataConfig(**values)


def test_one_model_per_source_holding_only_its_options():
    from adatt.data.config import SOURCES, CensusData, SimData

    assert isinstance(DataConfig(), CensusData) and isinstance(DataConfig(), DataConfig)
    sim = DataConfig(source="sim", rows=10_000)
    assert isinstance(sim, SimData) and sim.preset == "group1"
    assert SimData.from_dict({"rows": 7}).rows == 7  # the subclass supplies its source
    assert set(sim.model_dump()) == {"source", "preset", "rows", "seed", "valid_fraction",
                                     "test_fraction", "standardize_labels"}
    for name, cls in SOURCES.items():
        assert cls.model_fields["source"].default == name


def test_config_knows_every_simulator_preset():
    from adatt.data.config import SIM_PRESETS
    from adatt.data.simulator import PRESETS

    assert set(SIM_PRESETS) == set(PRESETS)


def test_dispatch_sim_and_mmoe():
    s = load_splits({"source": "sim", "preset": "group2", "rows": 10_000, "seed": 1})
    assert s.name == "sim:group2" and s.sizes()["train"] == 8_000
    m = load_splits(DataConfig(source="mmoe_synthetic", rows=2_000, dim=5, correlation=0.2))
    assert m.schema.dense_dim == 5 and m.info["weight_cosine"] == pytest.approx(0.2)


def test_dispatch_files(tmp_path: Path):
    (tmp_path / "s.yaml").write_text("dense: [x]\nlabels: {y: regression}\n")
    rows = "x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(50))
    (tmp_path / "t.csv").write_text(rows)
    cfg = DataConfig(
        source="files", schema=str(tmp_path / "s.yaml"), train=str(tmp_path / "t.csv"), split_seed=2
    )
    s = load_splits(cfg)
    assert s.sizes() == {"train": 40, "valid": 5, "test": 5}
    assert s.info["split_seed"] == 2


def test_describe_reports_rates_and_features():
    s = load_splits({"source": "sim", "preset": "group3", "rows": 10_000})
    text = describe(s)
    assert "train 8,000 rows, valid 1,000 rows, test 1,000 rows" in text
    stats = task_statistics(s)
    view = stats["view"]["valid"]["positive_rate"]
    assert f"{100 * view:.3g}% positive" in text
    assert "watch_time  regression  mean" in text
    assert "user_id 2,001" in text and "log_position" in text
    assert "preset=group3" in text
    assert set(stats["watch_time"]["test"]) == {"mean", "std"}


def test_package_exports_are_lazy():
    assert data.load_splits is load_splits and data.DataError is DataError
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018
    code = (
        "import sys, adatt.data; "
        "heavy = [m for m in ('torch', 'pandas', 'pyarrow', 'pydantic') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
