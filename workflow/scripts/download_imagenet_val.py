"""Rule adapter: ILSVRC2012 val (image tar + devkit ground truth) as WNID class folders."""

import sys
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from unitablation.download import tqdm_progress  # noqa: E402
from unitablation.eval_sets import build_imagenet_val  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402


def main(images: str, devkit: str, output: str) -> None:
    """Stream the val tar into one folder per WNID."""
    counts = build_imagenet_val(images, devkit, output, tqdm_progress("imagenet val"))
    print(
        f"wrote {output}: {sum(counts.values())} images in {len(counts)} class folders",
        file=sys.stderr,
    )


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(snakemake.input.images, snakemake.input.devkit, snakemake.output[0])  # noqa: F821
