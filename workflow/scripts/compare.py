"""Rule adapter: results/comparison/{variants,rotation}.csv, all (model, layer, basis) rows."""

import logging
from collections.abc import Sequence

from unitablation.accuracy import never_predicted
from unitablation.logs import logged_to
from unitablation.store import atomic_paths
from unitablation.table_io import read_table
from unitablation.tables import comparison_row, comparison_table, overall_accuracy

LOG = logging.getLogger("unitablation.scripts.compare")


def main(
    units: Sequence[str],
    correlations: Sequence[str],
    predictions: Sequence[str],
    concentrations: Sequence[str],
    baselines: Sequence[str],
    models: Sequence[str],
    variants_out: str,
    rotation_out: str,
) -> None:
    """One row per (model, layer, basis); variants.csv keeps the unit basis, rotation.csv all."""
    tables = {model: read_table(path) for model, path in zip(models, baselines, strict=True)}
    accuracy = {model: overall_accuracy(table) for model, table in tables.items()}
    missing = {model: never_predicted(table) for model, table in tables.items()}
    rows = []
    for unit_path, correlation_path, prediction_path, concentration_path in zip(
        units, correlations, predictions, concentrations, strict=True
    ):
        table = read_table(unit_path)
        identity = table.iloc[0][["model", "layer", "basis"]].to_dict()
        rows.append(
            comparison_row(
                table,
                read_table(correlation_path),
                read_table(prediction_path),
                accuracy[identity["model"]],
                identity,
                missing[identity["model"]],
                read_table(concentration_path),
            )
        )
    everything = comparison_table(rows)
    variants = everything[everything["basis"] == "unit"]
    LOG.info(f"variants (first 12 columns):\n{variants.iloc[:, :12].to_string(index=False)}")
    with atomic_paths([variants_out, rotation_out]) as (variants_tmp, rotation_tmp):
        variants.to_csv(variants_tmp, index=False, float_format="%.6g")
        everything.to_csv(rotation_tmp, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            snakemake.input.correlations,
            snakemake.input.class_prediction,
            snakemake.input.concentration,
            snakemake.input.baselines,
            snakemake.params.models,
            snakemake.output.variants,
            snakemake.output.rotation,
        )
