"""Class names of a model's outputs, and the class list files that name them.

A class list file is UTF-8 text with one class per line in output (class-index) order; lines
starting with "#" and blank lines are skipped. A line is either `name`, or `folder<TAB>name`
where `folder` is the class's folder in the eval split (ImageNet: the WordNet ID `n01440764`
of `tench`). With one column, a class's folder is its name. The lists shipped in
resources/classes/ are written by resources/classes/make_class_lists.py.

Precedence of the names of a model's classes (`model_class_names`): the names its checkpoint
records; else the model entry's class list (`models.<name>.classes`); else the eval split's
class folder names, sorted (the ImageFolder order); else "0".."K-1".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Separates the entries of class-list cells such as units.csv's top5_hurt_classes.
LIST_SEPARATOR = ";"
#: Class lists shipped in resources/classes/<name>.txt, named by `models.<name>.classes`.
SHIPPED_LISTS = ("imagenet", "places365")


@dataclass(frozen=True)
class ClassList:
    """Class names in output order, the eval-split folder of each, and the file they came from."""

    names: list[str]
    folders: list[str]
    source: str


def check_class_names(names: Sequence[str], source: str) -> None:
    """ValueError naming `source` unless the names are non-empty, unique, trimmed strings
    without ";" (the tables join class lists with it) or line breaks."""
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{source}: class {index} has an empty or untrimmed name {name!r}")
        if LIST_SEPARATOR in name or "\n" in name or "\r" in name:
            raise ValueError(
                f"{source}: class {index} name {name!r} contains {LIST_SEPARATOR!r} or a line "
                "break (the tables join class names with ';')"
            )
    seen: set[str] = set()
    repeated = [name for name in names if name in seen or seen.add(name)]
    if repeated:
        raise ValueError(f"{source}: class names listed twice: {sorted(set(repeated))[:5]}")


def parse_class_list(text: str, source: str) -> ClassList:
    """A ClassList from the text of a class list file (format in the module docstring)."""
    rows = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise ValueError(f"{source} line {line_number}: more than two tab-separated fields")
        rows.append((line_number, fields))
    if not rows:
        raise ValueError(f"{source}: no class names")
    widths = {len(fields) for _, fields in rows}
    if len(widths) > 1:
        raise ValueError(f"{source}: some lines have a folder column and some do not")
    names = [fields[-1] for _, fields in rows]
    folders = [fields[0] for _, fields in rows]
    check_class_names(names, source)
    check_class_names(folders, f"{source} (folder column)")
    return ClassList(names, folders, source)


def read_class_list(path: str | Path) -> ClassList:
    """Read a class list file; ValueError naming the file when it is missing or malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read class list {path}: {error}") from error
    return parse_class_list(text, str(path))


def format_class_list(names: Sequence[str], folders: Sequence[str] | None, header: str) -> str:
    """The text of a class list file: `header` as "#" comment lines, then one class per line."""
    check_class_names(names, "class list")
    if folders is not None:
        if len(folders) != len(names):
            raise ValueError(f"{len(folders)} folders for {len(names)} class names")
        check_class_names(folders, "class list (folder column)")
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    if folders is None:
        rows = list(names)
    else:
        rows = [f"{folder}\t{name}" for folder, name in zip(folders, names, strict=True)]
    return "\n".join([*comments, *rows]) + "\n"


def model_class_names(
    width: int,
    recorded: Sequence[str] | None,
    class_list: ClassList | None = None,
    folders: Sequence[str] | None = None,
    weights: str = "the checkpoint",
    folder_source: str = "the eval image folders",
) -> list[str]:
    """The names of a classifier's `width` outputs, by the precedence of the module docstring.

    ValueError when the chosen names are not `width` valid names, or when a class list
    disagrees with the names the checkpoint records (both would name the same outputs).
    """
    if recorded is not None:
        names, source = [str(name) for name in recorded], f"checkpoint {weights}"
        if class_list is not None and class_list.names != names:
            raise ValueError(
                f"class list {class_list.source} names {class_list.names[:3]}... but checkpoint "
                f"{weights} records the classes {names[:3]}...; remove one of them"
            )
    elif class_list is not None:
        names, source = list(class_list.names), f"class list {class_list.source}"
    elif folders is not None:
        names, source = list(folders), folder_source
    else:
        return [str(index) for index in range(width)]
    if len(names) != width:
        raise ValueError(
            f"{source} names {len(names)} classes but checkpoint {weights} has {width} outputs"
        )
    check_class_names(names, source)
    return names
