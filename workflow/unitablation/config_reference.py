"""docs/configuration.md, generated from the config schema, so the page and the keys never drift.

Every key path of the schema (properties, additionalProperties and patternProperties schemas,
array items, $defs) becomes one table row: type, default, allowed values, description. A key
without a description is an error naming its path. `python -m unitablation.config_reference`
writes the page; `--check` only compares and exits 1 when the committed page is stale.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path("workflow/schemas/config.schema.yaml")
PAGE = Path("docs/configuration.md")
EXAMPLES = Path("resources/configs")
COMMAND = ".venv/bin/python -m unitablation.config_reference"
#: Path of the schema's root in messages (it has no key of its own).
ROOT_NAME = "(schema root)"
#: Placeholder of a free key (additionalProperties) whose schema has no `title`.
FREE_KEY = "key"
#: References to docs pages in descriptions, turned into links on the page (itself in docs/).
DOC_REFERENCE = re.compile(r"(?<![\w/`])docs/([\w-]+\.md)(#[\w-]+)?")

COMPOSITION = """\
## How a config is composed

- `config.yaml` is always read first (the Snakefile names it): the embedded default, four
  miniature AlexNets on the generated world.
- `--configfile a.yaml [b.yaml ...]` merges each file over it, in order: mappings merge key by
  key at every level, any other value (a list, a number) replaces the one before. So the four
  default variants stay under `models`; a config that studies other models names them in
  `only_models`, as the ready-made real-data configs do.
- `--config key=value ...` on the command line comes last, for top-level keys:
  `--config device=cuda seed=3 'only_models=[alexnet_imagenet]'`. A number, `True` or `False`
  is read as such, but values inside a list or mapping stay strings, so give nested numbers
  (`ablation.shard_size`, ...) in a small `--configfile` instead.
- The merged config is validated against the schema before any job runs: a wrong key, type or
  value fails with a message naming the key, and unset keys take the defaults below. Each
  studied model is then built once (on PyTorch's meta device where it can be): an unknown source
  fails naming the closest valid names, a missing layer listing the module paths that exist.
- Each rule gets through `params:` exactly the keys that change its outputs, so editing a key
  reruns only the jobs that read it; keys described as scheduling or memory settings (threads,
  `concepts.unit_block`, ...) rerun nothing.
- `tests/configs/tiny.yaml` (a tiny world and four tiny variants, what the workflow tests run)
  tries a change on the whole pipeline in a folder of its own: `.venv/bin/snakemake --cores 2
  --snakefile Snakefile --directory /tmp/tiny --configfile tests/configs/tiny.yaml`.
"""


class UndocumentedKeys(ValueError):
    """The schema has keys without a description (the page would not say what they do)."""


@dataclass(frozen=True)
class Key:
    """One key path of the schema and the sub-schema it names."""

    path: str
    node: Mapping[str, Any]
    required: bool = False

    @property
    def section(self) -> str:
        """The top-level key the path belongs to (its page section)."""
        return re.split(r"[.\[]", self.path, maxsplit=1)[0]


def child_path(parent: str, name: str) -> str:
    """`parent.name`, or `name` at the top level."""
    return f"{parent}.{name}" if parent else name


def walk(node: Mapping[str, Any], path: str = "") -> Iterator[Key]:
    """Every key path below `node`, depth first, in schema order."""
    required = set(node.get("required", ()))
    children: list[Key] = []
    for name, child in node.get("properties", {}).items():
        children.append(Key(child_path(path, name), child, name in required))
    for pattern, child in node.get("patternProperties", {}).items():
        children.append(Key(child_path(path, f"<{pattern}>"), child))
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        children.append(Key(child_path(path, f"<{extra.get('title', FREE_KEY)}>"), extra))
    items = node.get("items")
    if isinstance(items, Mapping):
        children.append(Key(f"{path}[]", items))
    for group in ("$defs", "definitions"):
        for name, child in node.get(group, {}).items():
            children.append(Key(child_path(path, f"{group}.{name}"), child))
    for key in children:
        yield key
        yield from walk(key.node, key.path)


def has_description(node: Mapping[str, Any]) -> bool:
    """Whether a sub-schema says in words what it is."""
    text = node.get("description")
    return isinstance(text, str) and bool(text.strip())


def undocumented(schema: Mapping[str, Any]) -> list[str]:
    """Key paths (and the root) without a description."""
    missing = [] if has_description(schema) else [ROOT_NAME]
    return missing + [key.path for key in walk(schema) if not has_description(key.node)]


def check_documented(schema: Mapping[str, Any], source: str) -> None:
    """Fail naming every key path of `source` that lacks a description."""
    missing = undocumented(schema)
    if missing:
        raise UndocumentedKeys(
            f"{source}: {len(missing)} key(s) without a description: {', '.join(missing)}"
        )


def literal(value: Any) -> str:
    """A schema value as YAML writes it in a config (null, true, [a, b], {})."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and "e" in repr(value):
        mantissa, exponent = repr(value).split("e")
        return f"{mantissa}e{int(exponent)}"
    return str(value)


def code(value: Any) -> str:
    """`value` as inline code."""
    return f"`{literal(value)}`"


def type_text(node: Mapping[str, Any]) -> str:
    """The JSON types a key takes ("integer or null")."""
    kinds = node.get("type", "any")
    return " or ".join(kinds) if isinstance(kinds, list) else str(kinds)


def default_text(node: Mapping[str, Any]) -> str:
    """The schema's default, or a dash when it fills none in."""
    return code(node["default"]) if "default" in node else "-"


def range_text(node: Mapping[str, Any]) -> list[str]:
    """Numeric bounds as one phrase ("0 to 1", ">= 16", "> 0, < 1")."""
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        return [f"{literal(low)} to {literal(high)}"]
    bounds = []
    if low is not None:
        bounds.append(f">= {literal(low)}")
    if "exclusiveMinimum" in node:
        bounds.append(f"> {literal(node['exclusiveMinimum'])}")
    if high is not None:
        bounds.append(f"<= {literal(high)}")
    if "exclusiveMaximum" in node:
        bounds.append(f"< {literal(node['exclusiveMaximum'])}")
    return [", ".join(bounds)] if bounds else []


def counted(number: int, noun: str) -> str:
    """A count with its noun in the right number: 1 item, 5 items (nouns as "item/items")."""
    singular, plural = noun.split("/")
    return f"{number} {singular if number == 1 else plural}"


def count_text(node: Mapping[str, Any], low: str, high: str, noun: str) -> list[str]:
    """Bounds on a count (of items, characters, entries) as one phrase."""
    least, most = node.get(low), node.get(high)
    if least is not None and least == most:
        return [f"exactly {counted(least, noun)}"]
    parts = [f"at least {counted(least, noun)}"] if least is not None else []
    return parts + ([f"at most {counted(most, noun)}"] if most is not None else [])


def names_text(node: Mapping[str, Any]) -> list[str]:
    """Constraints on the names of a mapping's free keys."""
    names = node.get("propertyNames") or {}
    parts = [f"names match {code(names['pattern'])}"] if "pattern" in names else []
    excluded = (names.get("not") or {}).get("enum")
    if excluded:
        parts.append("not " + ", ".join(code(name) for name in excluded))
    return parts


def choice_text(node: Mapping[str, Any]) -> list[str]:
    """`oneOf` branches that each only require one key: exactly one of those keys."""
    branches = node.get("oneOf") or []
    if not branches or any(set(b) != {"required"} or len(b["required"]) != 1 for b in branches):
        return []
    return ["exactly one of " + ", ".join(code(branch["required"][0]) for branch in branches)]


def allowed_text(key: Key) -> str:
    """Everything the schema allows or requires of a key, as one cell."""
    node = key.node
    parts = ["required"] if key.required else []
    if "enum" in node:
        parts.append("one of " + ", ".join(code(value) for value in node["enum"]))
    if "const" in node:
        parts.append(f"only {code(node['const'])}")
    parts += range_text(node)
    if "multipleOf" in node:
        parts.append(f"multiple of {literal(node['multipleOf'])}")
    if "pattern" in node:
        parts.append(f"matches {code(node['pattern'])}")
    if node.get("minLength") == 1 and "maxLength" not in node:
        parts.append("non-empty")
    else:
        parts += count_text(node, "minLength", "maxLength", "character/characters")
    parts += count_text(node, "minItems", "maxItems", "item/items")
    if node.get("uniqueItems"):
        parts.append("no duplicates")
    parts += count_text(node, "minProperties", "maxProperties", "entry/entries")
    parts += names_text(node)
    parts += choice_text(node)
    return "; ".join(parts) if parts else "-"


def escaped(text: str) -> str:
    """Prose with `<` outside code spans escaped, so placeholders (`<name>`) are not HTML."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;") for part in parts)


def linked(text: str) -> str:
    """A description as Markdown: placeholders escaped, `docs/<page>.md[#anchor]` references
    as links relative to docs/ (where the page lives)."""
    return DOC_REFERENCE.sub(
        lambda match: f"[{match.group(1)}]({match.group(1)}{match.group(2) or ''})",
        escaped(text),
    )


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def row(key: Key) -> str:
    """One table row of a key path."""
    cells = [
        f"`{key.path}`",
        type_text(key.node),
        default_text(key.node),
        allowed_text(key),
        linked(key.node["description"]),
    ]
    return "| " + " | ".join(cell(text) for text in cells) + " |"


def sections(schema: Mapping[str, Any]) -> dict[str, list[Key]]:
    """Key paths grouped by top-level key, in schema order."""
    grouped: dict[str, list[Key]] = {}
    for key in walk(schema):
        grouped.setdefault(key.section, []).append(key)
    return grouped


def section_text(name: str, keys: Sequence[Key]) -> str:
    """One top-level key's section: a heading and the table of its key paths."""
    lines = [
        f"### `{name}`",
        "",
        "| key | type | default | allowed | description |",
        "| --- | --- | --- | --- | --- |",
        *(row(key) for key in keys),
    ]
    return "\n".join(lines) + "\n"


def example_summary(path: Path) -> str:
    """The first sentence of a config file's leading comment block."""
    comments = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("#").strip())
    text = " ".join(comments)
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def examples_text(examples: Sequence[tuple[str, str]]) -> str:
    """The list of shipped example configs, or nothing when there are none."""
    if not examples:
        return ""
    lines = [
        "## Example configs",
        "",
        "Pass one with `--configfile` (it merges over `config.yaml`):",
        "",
        *(f"- [`{name}`](../{name}): {summary}" for name, summary in examples),
    ]
    return "\n".join(lines) + "\n"


def find_examples(root: Path) -> list[tuple[str, str]]:
    """(path relative to `root`, summary) of each YAML file in resources/configs, sorted."""
    folder = root / EXAMPLES
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    return [(path.relative_to(root).as_posix(), example_summary(path)) for path in files]


def header(schema: Mapping[str, Any]) -> str:
    """Title, the generated-page notice with the command, and the schema's own description."""
    return (
        f"<!-- Generated from {SCHEMA.as_posix()} by `{COMMAND}`: edit the schema, not this "
        "page. -->\n"
        "# Configuration\n\n"
        f"This page is generated from [`{SCHEMA.as_posix()}`](../{SCHEMA.as_posix()}), which "
        "validates every config and fills in its defaults: edit a key's `description` there, "
        f"then run `{COMMAND}` (`--check` only compares; `tests/test_config_reference.py` fails "
        "when a key lacks a description or this page is stale).\n\n"
        f"{cell(linked(schema['description']))}\n"
    )


def contents(names: Sequence[str]) -> str:
    """One line linking every section."""
    return "Sections: " + ", ".join(f"[`{name}`](#{name.lower()})" for name in names) + ".\n"


def render(
    schema: Mapping[str, Any],
    examples: Sequence[tuple[str, str]] = (),
    source: str = SCHEMA.as_posix(),
) -> str:
    """The whole page for `schema` (read from `source`); UndocumentedKeys when keys lack words."""
    check_documented(schema, source)
    grouped = sections(schema)
    parts = [header(schema), COMPOSITION, examples_text(examples)]
    parts.append("## Keys\n\n" + contents(list(grouped)))
    parts += [section_text(name, keys) for name, keys in grouped.items()]
    return "\n".join(part for part in parts if part)


def read_schema(path: Path) -> dict[str, Any]:
    """The schema YAML at `path`; ValueError naming the file when it is no mapping."""
    try:
        schema = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read the config schema {path}: {error}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"config schema {path} is not a YAML mapping")
    return schema


def page_for(schema_path: Path, root: Path) -> str:
    """The page rendered from the schema at `schema_path` and the examples under `root`."""
    return render(read_schema(schema_path), find_examples(root), schema_path.as_posix())


def write_atomic(path: Path, text: str) -> None:
    """Write `text` under a temporary name beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options: --check, and the schema, page and repository paths."""
    parser = argparse.ArgumentParser(prog="python -m unitablation.config_reference")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--schema", type=Path, help=f"schema (default <root>/{SCHEMA})")
    parser.add_argument("--output", type=Path, help=f"page (default <root>/{PAGE})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or, with --check, compare) the page; 1 on a stale page or an undocumented key."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    schema_path = args.schema or args.root / SCHEMA
    output = args.output or args.root / PAGE
    try:
        text = page_for(schema_path, args.root)
    except ValueError as error:
        LOG.error(str(error))
        return 1
    current = output.read_text() if output.is_file() else None
    if args.check:
        if current != text:
            LOG.error(f"{output} is stale (or missing): regenerate it with `{COMMAND}`")
            return 1
        LOG.info(f"{output} is up to date")
        return 0
    if current != text:
        write_atomic(output, text)
    LOG.info(f"wrote {output}" if current != text else f"{output} was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
