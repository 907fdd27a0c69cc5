"""docs/configuration.md is the schema's own words: every key described, the page never stale."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from unitablation import config_reference

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAGE = ROOT / "docs" / "configuration.md"

#: (schema location of a key, its key path on the page), at every kind of nesting.
KEYS = [
    (["properties", "seed"], "seed"),
    (["properties", "ablation", "properties", "shard_size"], "ablation.shard_size"),
    (["properties", "layers", "items"], "layers[]"),
    (["properties", "models", "additionalProperties"], "models.<name>"),
    (
        ["properties", "models", "additionalProperties", "properties", "preprocess", "properties"]
        + ["std", "items"],
        "models.<name>.preprocess.std[]",
    ),
    (
        ["properties", "downloads", "additionalProperties", "properties", "convert"]
        + ["properties", "weights_only"],
        "downloads.<item>.convert.weights_only",
    ),
]


def load_schema() -> dict[str, Any]:
    """The committed schema."""
    return yaml.safe_load(SCHEMA.read_text())


def key_nodes(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every key path of a schema and its node, found by the test's own traversal."""
    found: dict[str, dict[str, Any]] = {}
    pending: list[tuple[str, dict[str, Any]]] = [("", schema)]
    while pending:
        prefix, node = pending.pop()
        named = dict(node.get("properties", {}))
        named.update({f"<{k}>": v for k, v in node.get("patternProperties", {}).items()})
        free = node.get("additionalProperties")
        if isinstance(free, dict):
            named[f"<{free.get('title', 'key')}>"] = free
        for group in ("$defs", "definitions"):
            named.update({f"{group}.{k}": v for k, v in node.get(group, {}).items()})
        children = {(f"{prefix}.{k}" if prefix else k): v for k, v in named.items()}
        if isinstance(node.get("items"), dict):
            children[f"{prefix}[]"] = node["items"]
        found.update(children)
        pending.extend(children.items())
    return found


def page_rows(text: str) -> list[str]:
    """The key paths of the page's table rows, in page order."""
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)


def without_description(location: list[str]) -> dict[str, Any]:
    """A copy of the schema with the description at `location` removed."""
    schema = copy.deepcopy(load_schema())
    node = schema
    for step in location:
        node = node[step]
    del node["description"]
    return schema


def github_anchor(heading: str) -> str:
    """The anchor a code host gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_key_has_a_description() -> None:
    """Each key path, at every level, says in words what it does."""
    nodes = key_nodes(load_schema())
    assert len(nodes) > 100, sorted(nodes)
    missing = [path for path, node in nodes.items() if not str(node.get("description", "")).strip()]
    assert not missing, f"keys without a description: {missing}"
    assert load_schema()["description"].strip()


def test_the_page_lists_every_key_once() -> None:
    """The page has one row for each key path of the schema, none missing, none invented."""
    rows = page_rows(PAGE.read_text())
    assert len(rows) == len(set(rows))
    assert set(rows) == set(key_nodes(load_schema()))


def test_committed_page_equals_a_fresh_rendering() -> None:
    """docs/configuration.md is what the schema renders to today (regenerate it otherwise)."""
    fresh = config_reference.page_for(SCHEMA, ROOT)
    assert PAGE.read_text() == fresh, (
        "docs/configuration.md is stale: run .venv/bin/python -m unitablation.config_reference"
    )
    assert config_reference.main(["--check"]) == 0


def test_rendering_is_deterministic_and_follows_schema_order() -> None:
    """Two renderings are equal, and sections come in the schema's order of top-level keys."""
    schema = load_schema()
    first = config_reference.render(schema)
    assert first == config_reference.render(copy.deepcopy(schema))
    headings = re.findall(r"^### `([^`]+)`$", first, flags=re.M)
    assert headings == list(schema["properties"])


@pytest.mark.parametrize("location, path", KEYS, ids=[k[1] for k in KEYS])
def test_a_missing_description_fails_naming_the_key(
    tmp_path: Path, location: list[str], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Removing one description makes rendering fail with that key path, and nothing else."""
    schema = without_description(location)
    with pytest.raises(config_reference.UndocumentedKeys) as error:
        config_reference.render(schema)
    assert f": {path}" in str(error.value) and "1 key(s)" in str(error.value), error.value
    copy_path = tmp_path / "schema.yaml"
    copy_path.write_text(yaml.safe_dump(schema, sort_keys=False))
    output = tmp_path / "configuration.md"
    with caplog.at_level(logging.ERROR):
        code = config_reference.main(["--schema", str(copy_path), "--output", str(output)])
    assert code == 1
    assert path in caplog.text and str(copy_path) in caplog.text, caplog.text
    assert not output.exists()


def test_check_on_a_stale_page_exits_1_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--check compares only: a page one line off fails, naming the page and the command."""
    stale = tmp_path / "configuration.md"
    stale.write_text(
        PAGE.read_text().replace("| `seed` | integer | `0` |", "| `seed` | integer | `1` |")
    )
    before = stale.read_text()
    with caplog.at_level(logging.ERROR):
        code = config_reference.main(["--check", "--output", str(stale)])
    assert code == 1
    assert str(stale) in caplog.text and config_reference.COMMAND in caplog.text
    assert stale.read_text() == before
    missing = tmp_path / "absent.md"
    assert config_reference.main(["--check", "--output", str(missing)]) == 1


def test_writing_replaces_a_stale_page_in_place(tmp_path: Path) -> None:
    """Without --check the page is rewritten to the fresh rendering, no temporary file left."""
    page = tmp_path / "docs" / "configuration.md"
    page.parent.mkdir()
    page.write_text("stale\n")
    assert config_reference.main(["--output", str(page)]) == 0
    assert page.read_text() == PAGE.read_text()
    assert sorted(p.name for p in page.parent.iterdir()) == ["configuration.md"]
    assert config_reference.main(["--check", "--output", str(page)]) == 0


def test_rows_state_type_default_and_constraints() -> None:
    """A few rows, spelled out by hand: what the schema allows reaches the reader."""
    rows = {
        line.split(" | ")[0][3:-1]: line.split(" | ")[1:4]
        for line in PAGE.read_text().splitlines()
        if line.startswith("| `")
    }
    assert rows["ablation.tie_margin"] == ["number", "`1e-5`", "> 0"]
    assert rows["concepts.quantile"] == ["number", "`0.005`", "> 0, < 1"]
    assert rows["world.image_size"] == ["integer", "`64`", ">= 16; multiple of 16"]
    assert rows["ablation.mode"] == ["string", "`zero`", "one of `zero`, `mean`"]
    assert rows["models.<name>"] == ["object", "-", "exactly one of `arch`, `factory`"]
    assert rows["models.<name>.widths"] == ["array", "-", "exactly 5 items"]
    assert rows["only_models"] == ["array or null", "`null`", "at least 1 item; no duplicates"]
    assert rows["downloads.<item>.convert.num_classes"] == ["integer", "-", "required; >= 2"]
    assert rows["device"][2] == r"matches `^(auto\|cpu\|cuda(:[0-9]+)?)$`"


def test_links_on_the_page_resolve() -> None:
    """Every relative link lands on a file of the repository, and an anchor on a heading."""
    text = PAGE.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(t.startswith("definitions.md#") for t in targets)
    for target in targets:
        if re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        path = (PAGE.parent / name).resolve() if name else PAGE
        assert path.is_relative_to(ROOT) and path.exists(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            assert anchor in {github_anchor(h) for h in headings}, target


def test_every_example_config_is_listed() -> None:
    """Each shipped config of resources/configs/ is linked from the page."""
    text = PAGE.read_text()
    configs = sorted((ROOT / "resources" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert f"](../resources/configs/{path.name})" in text, path.name
