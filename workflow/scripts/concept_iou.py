"""Rule adapter: Network Dissection IoU of every unit of one layer with every Broden concept."""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
from tqdm import tqdm

from unitablation.broden import read_broden
from unitablation.concepts import (
    ConceptResult,
    concept_classes,
    concept_iou,
    concept_labels,
    store_reader,
)
from unitablation.logs import logged_to, progress_options
from unitablation.rotation import haar_rotation, parse_basis
from unitablation.store import ActivationStore, atomic_paths

LOG = logging.getLogger("unitablation.scripts.concept_iou")


def main(
    store_path: str,
    broden_dir: str,
    table_out: str,
    matrix_out: str,
    layer: str,
    basis: str,
    concepts: Mapping[str, Any],
    unit_block: int = 64,
    image_batch: int = 64,
) -> None:
    """Thresholds, masks and IoU for all units x all labels; one row per unit in the table.

    `concepts` holds the keys that change the output (quantile, top_k, counting); unit_block
    and image_batch only bound memory, so the rule passes them as resources, not params. The
    detector flag is unit_table's (it alone reads concepts.iou_threshold).
    """
    seed = parse_basis(basis)
    broden = read_broden(broden_dir)
    labels = concept_labels(broden)
    with ActivationStore(store_path) as store:
        classes = store.classes
        layout = store.layout(layer)  # maps: a token layer's patch tokens on their grid
        n_units = layout.units
        LOG.info(f"layer {layer}: {layout.describe()}")
        rotation = None if seed is None else haar_rotation(n_units, seed)
        bar = tqdm(total=n_units, unit="unit", **progress_options(f"{layer} units"))
        result = concept_iou(
            store_reader(store, layer, broden, rotation),
            n_units,
            labels,
            quantile=concepts["quantile"],
            unit_block=unit_block,
            image_batch=image_batch,
            top_k=concepts["top_k"],
            progress=lambda done, total: bar.update(done - bar.n),
            counting=concepts["counting"],
        )
        bar.close()
    table = result.table(iou_threshold=None)
    table.insert(
        4, "concept_class", concept_classes(labels, result.best()[0], classes, result.carried)
    )
    LOG.info(
        f"{n_units} units, {len(result.label_numbers)} labels, counting {result.counting!r}; "
        f"best IoU max {table['iou'].max():.4g}, median {table['iou'].median():.4g}; "
        f"overlapping no concept (IoU 0, no concept named): {int((table['iou'] <= 0).sum())}",
    )
    with atomic_paths([table_out, matrix_out]) as (table_tmp, matrix_tmp):
        table.to_csv(table_tmp, index=False, float_format="%.6g")
        write_matrix(matrix_tmp, result, layer, basis)


def write_matrix(path: Path, result: ConceptResult, layer: str, basis: str) -> None:
    """The full IoU matrix, thresholds and top images, for figures and further analysis."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("iou", data=result.iou)
        handle.create_dataset("label_numbers", data=result.label_numbers)
        handle.create_dataset("label_names", data=result.label_names, dtype=h5py.string_dtype())
        handle.create_dataset(
            "label_categories", data=result.label_categories, dtype=h5py.string_dtype()
        )
        handle.create_dataset("thresholds", data=result.thresholds)
        handle.create_dataset("top_images", data=result.top_images)
        handle.create_dataset("top_scores", data=result.top_scores)
        handle.attrs.update(
            {
                "layer": layer,
                "basis": basis,
                "quantile": result.quantile,
                "counting": result.counting,
            }
        )


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.store,
            snakemake.input.broden,
            snakemake.output.table,
            snakemake.output.matrix,
            snakemake.wildcards.layer,
            snakemake.wildcards.basis,
            snakemake.params.concepts,
            snakemake.resources.concept_unit_block,
            snakemake.resources.concept_image_batch,
        )
