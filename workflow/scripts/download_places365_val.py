"""Rule adapter: Places365-Standard val (val_256.tar + file list) as ImageFolder class folders."""

import sys
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from unitablation.download import tqdm_progress  # noqa: E402
from unitablation.eval_sets import build_places365_val  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402


def main(images: str, filelist: str, output: str) -> None:
    """Stream the val tar into one folder per class."""
    counts = build_places365_val(images, filelist, output, tqdm_progress("places365 val"))
    print(
        f"wrote {output}: {sum(counts.values())} images in {len(counts)} class folders",
        file=sys.stderr,
    )


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(snakemake.input.images, snakemake.input.filelist, snakemake.output[0])  # noqa: F821
