"""Conda env files exist for every rule, parse, and pin the same versions as pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import yaml
from workflow_runs import ROOT

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


#: Import name -> conda-forge package name, where they differ.
IMPORT_TO_CONDA = {"torch": "pytorch", "PIL": "pillow", "yaml": "pyyaml"}
LIBRARY = ROOT / "workflow" / "unitablation"
#: Library modules with a torch half that only torch jobs call (torch imported in the function):
#: their function-level imports are left out (tests/test_figures.py imports them without torch).
TORCH_OPTIONAL = {LIBRARY / "masks.py", LIBRARY / "rotation.py"}  # rotation: haar_rotation is numpy


def rule_blocks() -> dict[str, str]:
    """Every rule's text, by name, from workflow/rules/*.smk (and the Snakefile)."""
    blocks = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        for match in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.MULTILINE):
            blocks[match.group(1)] = match.group(2)
    return blocks


def library_files(dotted: str, folder: Path = LIBRARY) -> list[Path]:
    """The library files an import of `dotted` (below `folder`) runs: a module's file; for a
    package, or a module in one, every module of the package (the figure registry imports
    its package's modules itself)."""
    path = folder.joinpath(*dotted.split("."))
    package = path if path.is_dir() else path.parent
    if package != LIBRARY and package.is_dir():
        return sorted(package.glob("*.py"))
    return [path.with_suffix(".py")]


def third_party_imports(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level third-party modules a script imports, following the library's own modules.

    Parsed with `ast`, so a docstring or comment line that starts with "from" is not an import.
    """
    seen = set() if seen is None else seen
    if path in seen:
        return set()
    seen.add(path)
    found = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if path in TORCH_OPTIONAL and isinstance(node, ast.FunctionDef | ast.If):
            node.body = []  # lazy and TYPE_CHECKING imports: never run in an analysis job
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:  # from .module import ...
            if node.module:
                for file in library_files(node.module, path.parent):
                    found |= third_party_imports(file, seen)
            continue
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for dotted in names:
            name, _, rest = dotted.partition(".")
            if name == "unitablation":
                if rest:
                    for file in library_files(rest):
                        found |= third_party_imports(file, seen)
            elif name not in sys.stdlib_module_names and name != "__future__":
                found.add(name)
    return found


def test_every_rule_has_a_log_and_an_existing_env_that_holds_its_imports() -> None:
    blocks = rule_blocks()
    assert len(blocks) > 20
    for rule, body in blocks.items():
        if rule == "all":
            continue
        assert "log:" in body, f"rule {rule} has no log:"
        env = re.search(r'conda:\n\s+env_file\("([a-z_]+)"\)', body)
        assert env, f"rule {rule} names no conda env"
        path = ROOT / "envs" / f"{env.group(1)}.yaml"
        assert path.is_file(), f"rule {rule}: {path} is missing"
        packages = {
            re.split(r"[=<>]", dependency)[0]
            for dependency in yaml.safe_load(path.read_text())["dependencies"]
        }
        script = re.search(r'script_file\("([\w.]+)"\)', body)
        assert script, f"rule {rule} runs no script"
        imports = third_party_imports(ROOT / "workflow" / "scripts" / script.group(1))
        missing = {IMPORT_TO_CONDA.get(name, name) for name in imports} - packages
        assert not missing, f"rule {rule}: {path.name} lacks {sorted(missing)}"
