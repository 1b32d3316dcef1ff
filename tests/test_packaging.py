"""Packaging: the shipped configs are package data addressable by name, the wheel carries them,
and pyproject.toml states ranges whose exact CI versions constraints.txt pins.

The whole install (a wheel built by the Makefile, installed into a fresh venv, its ``adatt``
command run) is ``make wheel-check``, a step of ``.ci/run``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from adatt.cli import main
from adatt.config import CONFIG_DIR, ConfigError, load_config, packaged_configs, resolve_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
                 for p in CONFIG_DIR.rglob("*.yaml"))


def test_top_level_configs_is_a_link_into_the_package():
    link = ROOT / "configs"
    assert link.is_symlink() and link.resolve() == CONFIG_DIR
    assert (ROOT / "configs" / "census" / "adatt_sp.yaml").is_file()
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-s", "configs"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout:
        pytest.skip("not a git checkout")
    assert out.stdout.split()[0] == "120000", "git must store configs as a symlink"


def test_packaged_configs_name_every_shipped_file_with_a_one_line_description():
    configs = packaged_configs()
    assert list(configs) == SHIPPED
    assert {"census/adatt_sp", "census/mmoe_b", "sim/adatt"} <= set(configs)
    for name, desc in configs.items():
        assert desc and "\n" not in desc and "(" not in desc, name
        assert name.split("/")[0] in ("census", "sim")
    assert configs["sim/ple"] == "PLE on the recommender simulator, the paper's industrial sizes"


@pytest.mark.parametrize("ref", ["census/adatt_sp", "census/adatt_sp.yaml",
                                 "configs/census/adatt_sp.yaml", "./configs/census/adatt_sp"])
def test_a_name_resolves_to_the_packaged_file_from_any_directory(ref, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(ref) == CONFIG_DIR / "census" / "adatt_sp.yaml"
    assert load_config(ref) == load_config(CONFIG_DIR / "census" / "adatt_sp.yaml")


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "census").mkdir()
    (tmp_path / "census" / "adatt_sp").write_text("name: mine\nmodel: {name: mmoe}\n")
    assert resolve_config("census/adatt_sp") == Path("census/adatt_sp")
    cfg = load_config("census/adatt_sp")
    assert cfg.name == "mine" and cfg.model["name"] == "mmoe"
    assert load_config("census/adatt_sp.yaml").name == "census_adatt_sp"


def test_an_unknown_name_is_one_line_listing_the_close_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_config("census/adatt_s")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("census/adatt_s: config file not found")
    closest = re.search(r"closest: ([^;]+);", msg).group(1).split(", ")
    assert closest[0] == "census/adatt_sp" and set(closest) <= set(SHIPPED)
    with pytest.raises(ConfigError, match=r"^xyz: config file not found, nor a packaged config "
                       r"name \(all: adatt config list\)$"):
        load_config("xyz")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "census" / "adatt_sp.yaml")  # an absolute path is never a name


def test_cli_config_list_and_train_with_a_bad_name(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    assert lines[SHIPPED.index("census/adatt_sp")].split(None, 1)[1] == (
        "AdaTT-sp on UCI Census-Income, the paper's group A sizes, Aoki et al.'s training protocol")
    assert main(["train", "--config", "sim/adatt_spp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: sim/adatt_spp: config file not found")
    assert "closest: sim/adatt_sp" in err


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_pyproject_states_ranges_and_constraints_pin_a_version_inside_each():
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    pins = _constraints()
    assert {"mkdocs", "mkdocs-material", "mkdocstrings-python"} <= {
        r.name for r in map(Requirement, project["optional-dependencies"]["docs"])}
    for req in reqs:
        ops = {s.operator for s in req.specifier}
        assert "==" not in ops and ">=" in ops, f"{req}: a range with a tested lower bound"
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name}: not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req}"
    assert pins["torch"] == "2.13.0" and pins["torchrec"] == "1.8.0"


def test_make_and_ci_install_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    lines = [line for line in makefile.splitlines() if not line.startswith("#")]
    assert "PIP = $(1)/pip install -q -c constraints.txt" in lines
    installs = [line for line in lines if "pip install" in line or "$(call PIP" in line]
    assert len(installs) >= 6 and all("-c constraints.txt" in line or "$(call PIP" in line
                                      for line in installs)
    assert "--no-deps torchrec==1.8.0" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(f"make {target}" in ci for target in ("test", "docs", "wheel-check"))


def test_the_wheel_carries_every_shipped_config(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the build backend pyproject.toml names
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("adatt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"adatt/configs/{n}.yaml" for n in SHIPPED} <= names
    assert "adatt/cli.py" in names and not any(n.startswith(("tests/", "configs/"))
                                               for n in names)


def test_the_api_reference_names_the_public_packages_only():
    """Pages reference packages, never a file inside one, so that moving files keeps them."""
    pages = sorted((ROOT / "docs" / "reference").glob("*.md"))
    targets = [line.split()[1] for p in pages for line in p.read_text().splitlines()
               if line.startswith(":::")]
    assert sorted(targets) == ["adatt.data", "adatt.models", "adatt.modules", "adatt.serve",
                               "adatt.train"]
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    for page in ["index.md", "data.md", "distributed.md", "torchrec.md", "serving.md",
                 "experiments.md", "results/index.md", *(f"reference/{p.name}" for p in pages)]:
        assert f" {page}" in mkdocs, f"{page} is not in the site's nav"


def test_docstring_extension_fences_doctests_and_flattens_sphinx_roles():
    pytest.importorskip("griffe")  # the `docs` extra
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "griffe_examples", ROOT / "docs" / "hooks" / "griffe_examples.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    text = "Sum.\n\n>>> [b for b in x]\n[4, 1]\n\nMore text.\n\nExample:\n    >>> 1\n    1"
    assert ext._fence_doctests(text) == (
        "Sum.\n\n```pycon\n>>> [b for b in x]\n[4, 1]\n```\n\nMore text.\n\nExample:\n"
        "    >>> 1\n    1")
    assert ext._ROLE.sub(ext._role, "A :class:`~adatt.data.Batch` of :mod:`adatt.data`") == (
        "A `Batch` of `adatt.data`")
