"""Rule adapter: the unit browser's index.html and the images its data scripts reference."""

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unitablation.browser.page import copy_images, images_manifest_path, write_page
from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.browser_page")


def main(
    scripts: Sequence[str],
    page_out: str,
    images_out: str,
    entries: Sequence[Mapping[str, Any]],
    title: str,
) -> None:
    """Copy the referenced images beside the page, then write the page (scripts by relative
    path, so the folder can be moved or zipped whole)."""
    if len(scripts) != len(entries):
        raise ValueError(f"{len(scripts)} data scripts for {len(entries)} browser entries")
    root = Path(page_out).parent
    copied = copy_images([images_manifest_path(Path(s)) for s in scripts], Path(images_out))
    listed = [
        {**entry, "script": Path(os.path.relpath(script, root)).as_posix()}
        for entry, script in zip(entries, scripts, strict=True)
    ]
    write_page(listed, title, Path(page_out))
    LOG.info(f"{len(listed)} (model, layer, basis) entries, {copied} images copied to {images_out}")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.scripts,
            snakemake.output.page,
            snakemake.output.images,
            snakemake.params.entries,
            snakemake.params.title,
        )
