"""Rule adapter: fetch one download item, verify its checksums, install it (file or folder)."""

import logging
from collections.abc import Mapping
from typing import Any

from unitablation.download import DownloadItem, install, tqdm_progress
from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.download_fetch")


def main(output: str, settings: Mapping[str, Any]) -> None:
    """Install the item the settings describe at `output`."""
    item, allow_unpinned = DownloadItem.from_settings(settings)
    pins = ", ".join(f"{key} {value}" for key, value in item.expected().items()) or "none"
    LOG.info(f"item {item.name} ({item.kind}) -> {output}; checksums: {pins}")
    install(item, output, allow_unpinned=allow_unpinned, progress=tqdm_progress(item.name))
    if not item.pinned:
        LOG.warning(
            f"{item.name}: once pinned, run `snakemake --cleanup-metadata {output}` so that the "
            "pin alone does not trigger a new download."
        )


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(snakemake.output[0], snakemake.params.item)
