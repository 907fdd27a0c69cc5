"""The docs a user reads: every relative link resolves inside the repository, none leaves it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Markdown links and images: [text](target) and ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: A Markdown file name as prose or code cites it (e.g. docs/outputs.md, `summary.md`).
MARKDOWN_NAME = re.compile(r"[A-Za-z0-9_./-]+\.md\b")
#: Markdown files the pipeline writes or a test makes, not tracked (results/summary.md).
WRITTEN_NAMES = frozenset({"summary.md", "absent.md"})


def doc_pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_targets(page: Path) -> list[str]:
    """Link targets that are neither web addresses nor anchors (fenced code left out)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(page: Path) -> None:
    """A link a reader follows on a code host lands on a file of this repository."""
    broken = []
    for target in relative_targets(page):
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing or outside files: {broken}"


def test_docs_map_lists_every_page() -> None:
    """The README's map of docs/ names each page, so none is orphaned."""
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in doc_pages()[1:] if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


def test_every_cited_markdown_file_is_in_the_repository() -> None:
    """The repository carries its own definitions: each .md file a tracked file names is tracked
    (or is one the pipeline writes), so no text cites a document a user of a clone lacks."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    known = {Path(name).name for name in tracked if name.endswith(".md")} | WRITTEN_NAMES
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".pdf", ".svg", ".h5"} or not path.is_file():
            continue
        cited = {Path(m).name for m in MARKDOWN_NAME.findall(path.read_text(errors="ignore"))}
        offenders += [f"{name}: {doc}" for doc in sorted(cited - known)]
    assert not offenders, offenders


def test_readme_is_short() -> None:
    """The README stays a front page (about 200 lines); the rest lives in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 210, f"README.md has {lines} lines"
