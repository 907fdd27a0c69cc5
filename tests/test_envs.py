"""Conda env files exist for every rule, parse, and pin the same versions as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}


def pip_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    pins = {}
    for requirement in requirements:
        name, version = requirement.split("==")
        pins[name.lower()] = version
    return pins


def env_files() -> list[Path]:
    return sorted((ROOT / "envs").glob("*.yaml"))


def test_every_requirement_is_pinned_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", requirement), requirement
    pins = pip_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["snakemake"].startswith("9.27.")


def test_env_files_agree_with_pip_pins() -> None:
    pins = pip_pins()
    assert len(env_files()) >= 3
    for path in env_files():
        env = yaml.safe_load(path.read_text())
        assert env["channels"][0] == "conda-forge", path
        for dependency in env["dependencies"]:
            assert isinstance(dependency, str), f"{path}: unexpected entry {dependency!r}"
            name, _, version = dependency.partition("=")
            assert version, f"{path}: {name} is not pinned"
            if name == "python":
                assert version == "3.11", path
                continue
            pip_name = CONDA_TO_PIP.get(name, name)
            assert pip_name in pins, f"{path}: {name} is not a pip dependency"
            assert version == pins[pip_name], (
                f"{path}: {name}={version} but pip pins {pins[pip_name]}"
            )


def test_every_rule_names_an_existing_env() -> None:
    rules_dir = ROOT / "workflow" / "rules"
    names = set()
    for rule_file in rules_dir.glob("*.smk"):
        names.update(re.findall(r'env_file\("([a-z_]+)"\)', rule_file.read_text()))
        assert "conda:" not in rule_file.read_text() or "env_file(" in rule_file.read_text()
    assert names, "no rule names a conda env"
    for name in names:
        assert (ROOT / "envs" / f"{name}.yaml").is_file(), name
