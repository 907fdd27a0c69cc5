"""Rule adapter: a published val split (image tar + label archive) as ImageFolder class folders."""

import sys
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from unitablation.download import tqdm_progress  # noqa: E402
from unitablation.eval_sets import build_eval_set  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402


def main(dataset: str, images: str, labels: str, output: str) -> None:
    """Stream the val tar into one folder per class."""
    counts = build_eval_set(dataset, images, labels, output, tqdm_progress(f"{dataset} val"))
    print(
        f"wrote {output}: {sum(counts.values())} images in {len(counts)} class folders",
        file=sys.stderr,
    )


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.params.dataset,  # noqa: F821
            snakemake.input.images,  # noqa: F821
            snakemake.input.labels,  # noqa: F821
            snakemake.output[0],  # noqa: F821
        )
