"""Rule adapter: fetch one download item, verify its checksums, install it (file or folder)."""

import sys
from collections.abc import Mapping
from typing import Any

from unitablation.download import DownloadItem, install, tqdm_progress
from unitablation.logs import logged_to


def log_line(line: str) -> None:
    """One progress message to the job's log."""
    print(line, file=sys.stderr, flush=True)


def main(output: str, params: Mapping[str, Any]) -> None:
    """Install the item the params describe at `output`."""
    item, allow_unpinned = DownloadItem.from_params(params)
    pins = ", ".join(f"{key} {value}" for key, value in item.expected().items()) or "none"
    log_line(f"item {item.name} ({item.kind}) -> {output}; checksums: {pins}")
    install(
        item,
        output,
        allow_unpinned=allow_unpinned,
        progress=tqdm_progress(item.name),
        log=log_line,
    )


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(snakemake.output[0], snakemake.params.item)
