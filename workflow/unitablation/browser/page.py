"""Writing the unit browser: one data script per (model, layer, basis), then index.html (Jinja2,
the page's JavaScript and CSS inlined) and the images it shows, copied beside it once each.

The page opens from the file system: its data comes as <script> files (a browser does not let a
file:// page fetch JSON), loaded when a (model, layer, basis) is first chosen.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unitablation.browser.cards import ImageRef
from unitablation.store import atomic_path

HERE = Path(__file__).resolve().parent
REGISTER = "unitBrowser.register"


def script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no `</` can close it early)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")


def write_layer_script(data: Mapping[str, Any], refs: Sequence[ImageRef], path: Path) -> None:
    """The data script of one (model, layer, basis), and beside it (same name, .images.json)
    the images it references, for the page job to copy."""
    images_path = images_manifest_path(path)
    listing = [{"source": str(r.source), "relative": r.relative, "target": r.target} for r in refs]
    with atomic_path(path) as script, atomic_path(images_path) as images:
        script.write_text(f"{REGISTER}({script_json(data)});\n", encoding="utf-8")
        images.write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def images_manifest_path(script: Path) -> Path:
    """The image list written beside a data script."""
    return Path(script).with_suffix(".images.json")


def read_images_manifest(path: Path) -> list[dict[str, str]]:
    """A data script's image list; ValueError naming the file when it is not one."""
    try:
        listing = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(listing, list) or any(
            set(item) != {"source", "relative", "target"} for item in listing
        ):
            raise ValueError("expected a list of {source, relative, target}")
    except (OSError, ValueError) as error:
        raise ValueError(f"browser image list {path}: {error}") from error
    return listing


def copy_images(manifests: Sequence[Path], out_dir: Path) -> int:
    """Copy every listed image (bytes unchanged) to out_dir/<target without images/>; returns
    how many. Built under a temporary name and renamed, so a failed copy leaves no folder."""
    targets: dict[str, Path] = {}
    for manifest in manifests:
        for item in read_images_manifest(manifest):
            source = Path(item["source"]) / item["relative"]
            target = item["target"]
            if not target.startswith("images/") or ".." in Path(target).parts:
                raise ValueError(f"browser image list {manifest}: bad target {target!r}")
            if targets.setdefault(target, source) != source:
                raise ValueError(
                    f"browser image list {manifest}: {target} is both {targets[target]} and "
                    f"{source}"
                )
    out_dir = Path(out_dir)
    temporary = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        for target, source in sorted(targets.items()):
            if not source.is_file():
                raise ValueError(f"image {source} (listed for the browser) is missing")
            destination = temporary / target[len("images/") :]
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        temporary.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(temporary, out_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return len(targets)


def render_page(entries: Sequence[Mapping[str, Any]], title: str) -> str:
    """index.html: the manifest of (model, layer, basis) entries with their data scripts."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined  # only the page job renders

    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    template = environment.get_template("index.html.j2")
    return template.render(
        title=title,
        manifest=script_json({"entries": list(entries)}),
        script=(HERE / "static" / "browser.js").read_text(encoding="utf-8"),
        style=(HERE / "static" / "browser.css").read_text(encoding="utf-8"),
    )


def write_page(entries: Sequence[Mapping[str, Any]], title: str, path: Path) -> None:
    """Write index.html under a temporary name, then rename it into place."""
    with atomic_path(path) as temporary:
        temporary.write_text(render_page(entries, title), encoding="utf-8")
