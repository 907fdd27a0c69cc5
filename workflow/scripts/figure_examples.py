"""Rule adapter: example units with the largest max class drop, their classes and images."""

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from unitablation.broden import read_broden
from unitablation.concept_status import NO_CONCEPT_SET
from unitablation.figures import (
    ExampleImage,
    example_units,
    examples_figure,
    save_figure,
    unit_mask,
)
from unitablation.logs import logged_to
from unitablation.store import ActivationStore, open_hdf5
from unitablation.table_io import read_class_matrix, read_table


def main(
    units_table: str,
    class_drops_table: str,
    concepts_path: str | None,
    store_path: str | None,
    broden_dir: str | None,
    layer: str,
    stem: str,
    dpi: float,
    example_units_count: int,
    example_images: int,
) -> Figure:
    """Top `example_units_count` units by M_u, each with its `example_images` top concept images.

    A mask is the unit's map bilinearly upsampled to the image size, then > the unit's
    threshold T_u (from concepts.h5), as in Network Dissection. Without a concept set
    (`concepts_path` None) the units' rows show their classes and say "no concept set".
    """
    units = read_table(units_table)
    class_drops = read_class_matrix(class_drops_table)
    class_drops.columns = ["unit", *map(str, class_drops.columns[1:])]
    chosen = example_units(units, example_units_count)
    if concepts_path is None:
        print(f"{NO_CONCEPT_SET}: units {chosen} shown without concept images", file=sys.stderr)
        images = {unit: [] for unit in chosen}
    else:
        images = concept_examples(
            concepts_path, store_path, broden_dir, layer, chosen, example_images
        )
    title = f"{units['model'].iloc[0]}, {layer}: units with the largest class drop"
    figure = examples_figure(units, class_drops, images, title=title)
    save_figure(figure, stem, dpi)
    return figure


def concept_examples(
    concepts_path: str,
    store_path: str,
    broden_dir: str,
    layer: str,
    chosen: list[int],
    example_images: int,
) -> dict[int, list[ExampleImage]]:
    """Each chosen unit's top concept images with its mask (map upsampled, > T_u)."""
    broden = read_broden(broden_dir)
    images: dict[int, list[ExampleImage]] = {}
    concepts_file = open_hdf5(concepts_path, "concept IoU matrix")
    with concepts_file as concepts, ActivationStore(store_path) as store:
        maps = store.layer(layer)["maps"]
        for unit in chosen:
            threshold = float(concepts["thresholds"][unit])
            rows = concepts["top_images"][unit][:example_images]
            scores = concepts["top_scores"][unit][:example_images]
            images[unit] = []
            for row, score in zip(rows, scores, strict=True):
                if row < 0:  # fewer ranked images than asked for
                    continue
                picture = broden.load_image(int(row))
                activation = np.asarray(maps[int(row), unit], dtype=np.float32)
                mask = unit_mask(activation, picture.shape[:2], threshold)
                images[unit].append(ExampleImage(picture, mask, int(row), float(score)))
            print(
                f"unit {unit}: threshold {threshold:.4g}, images {[e.index for e in images[unit]]}",
                file=sys.stderr,
            )
    return images


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            snakemake.input.class_drops,
            snakemake.input.get("concepts"),
            snakemake.input.get("store"),
            snakemake.input.get("broden"),
            snakemake.wildcards.layer,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.figures["dpi"],
            snakemake.params.figures["example_units"],
            snakemake.params.figures["example_images"],
        )
