"""Rule adapter: a published val split (image tar + label archive) as ImageFolder class folders."""

import logging

from unitablation.download import tqdm_progress
from unitablation.eval_sets import build_eval_set
from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.prepare_eval_set")


def main(dataset: str, images: str, labels: str, output: str) -> None:
    """Stream the val tar into one folder per class."""
    counts = build_eval_set(dataset, images, labels, output, tqdm_progress(f"{dataset} val"))
    LOG.info(f"wrote {output}: {sum(counts.values())} images in {len(counts)} class folders")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.params.dataset,
            snakemake.input.images,
            snakemake.input.labels,
            snakemake.output[0],
        )
