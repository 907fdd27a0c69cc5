"""Rule adapter: units.csv, one row per unit with its drops, attributes and concepts joined."""

import logging

from unitablation.concept_status import NO_CONCEPT_SET, unmeasured_concepts
from unitablation.logs import logged_to
from unitablation.store import atomic_path, open_hdf5, require_datasets
from unitablation.table_io import read_class_matrix, read_table
from unitablation.tables import unit_table, with_detectors

LOG = logging.getLogger("unitablation.scripts.unit_table")


def main(
    drops: str,
    class_drops: str,
    prob_drops: str,
    attributes: str,
    concepts: str | None,
    table_out: str,
    model: str,
    layer: str,
    basis: str,
    iou_threshold: float,
) -> None:
    """Read the four per-unit tables and the probability drops; write the joined table.

    The detector flag (best IoU >= iou_threshold) is decided here, not by concept_iou, so that
    editing concepts.iou_threshold reruns the tables and not the IoU computation. Without a
    concept set (`concepts` None) the concept columns are empty (see concept_status).
    """
    with open_hdf5(prob_drops, "probability drops") as handle:
        require_datasets(handle, ["class_prob_drops"], prob_drops)
        class_prob_drops = handle["class_prob_drops"][:]
    drop_table = read_table(drops)
    if concepts is None:
        concept_table = unmeasured_concepts(drop_table["unit"].to_numpy())
    else:
        concept_table = with_detectors(read_table(concepts), iou_threshold)
    table = unit_table(
        drop_table,
        read_class_matrix(class_drops),
        class_prob_drops,
        read_table(attributes),
        concept_table,
        {"model": model, "layer": layer, "basis": basis},
    )
    detectors = (
        f"{NO_CONCEPT_SET}, concept IoU not measured"
        if concepts is None
        else f"detectors (IoU >= {iou_threshold}): {int(table['is_detector'].sum())}"
    )
    LOG.info(f"{len(table)} units, {len(table.columns)} columns; {detectors}")
    with atomic_path(table_out) as temporary:
        table.to_csv(temporary, index=False, float_format="%.8g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.drops,
            snakemake.input.class_drops,
            snakemake.input.prob_drops,
            snakemake.input.attributes,
            snakemake.input.get("concepts"),
            snakemake.output.table,
            snakemake.wildcards.model,
            snakemake.wildcards.layer,
            snakemake.wildcards.basis,
            snakemake.params.iou_threshold,
        )
