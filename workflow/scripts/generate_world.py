"""Rule adapter: render the embedded image world as an ImageFolder and a Broden concept set."""

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unitablation.logs import logged_to
from unitablation.world import WorldSpec
from unitablation.world_export import write_concept_set, write_image_folder

LOG = logging.getLogger("unitablation.scripts.generate_world")


def main(
    train_out: str, val_out: str, broden_out: str, world: Mapping[str, Any], seed: int
) -> None:
    """Validate the world's sizes, then write the three directories (each appears only whole)."""
    spec = WorldSpec(**world, seed=seed)
    spec.validate()
    started = time.perf_counter()
    staging = Path(train_out).parent / ".imagefolder"
    write_image_folder(staging, spec, progress=True)
    for split, final in (("train", train_out), ("val", val_out)):
        os.replace(staging / split, final)
    shutil.rmtree(staging)
    write_concept_set(broden_out, spec, progress=True)
    LOG.info(f"world written in {time.perf_counter() - started:.1f} s: {spec}")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.output.train,
            snakemake.output.val,
            snakemake.output.broden,
            snakemake.params.world,
            snakemake.params.seed,
        )
