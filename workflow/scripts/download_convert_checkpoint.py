"""Rule adapter: a published checkpoint with its key map applied, as a torchvision state dict."""

import logging
from collections.abc import Mapping
from typing import Any

from unitablation.checkpoints import convert_checkpoint
from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.download_convert_checkpoint")


def main(source: str, output: str, convert: Mapping[str, Any]) -> None:
    """Remap, check against the architecture, save."""
    LOG.info(
        f"{source}: key map {convert['keymap']!r} ({len(convert['rules'])} rule(s)), "
        f"torchvision {convert['arch']} with {convert['num_classes']} classes",
    )
    keys = convert_checkpoint(
        source,
        output,
        convert["arch"],
        convert["num_classes"],
        convert["rules"],
        weights_only=convert["weights_only"],
    )
    LOG.info(f"wrote {output}: {len(keys)} tensors, loads strictly")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(snakemake.input.checkpoint, snakemake.output[0], snakemake.params.convert)
