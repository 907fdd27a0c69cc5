"""Rule adapter: results/comparison/{variants,rotation}.csv, all (model, layer, basis) rows."""

import sys
from collections.abc import Sequence
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from unitablation.accuracy import never_predicted  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.store import atomic_paths  # noqa: E402
from unitablation.table_io import read_table  # noqa: E402
from unitablation.tables import comparison_row, comparison_table, overall_accuracy  # noqa: E402


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
    print(variants.iloc[:, :12].to_string(index=False), file=sys.stderr)
    with atomic_paths([variants_out, rotation_out]) as (variants_tmp, rotation_tmp):
        variants.to_csv(variants_tmp, index=False, float_format="%.6g")
        everything.to_csv(rotation_tmp, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.units,  # noqa: F821
            snakemake.input.correlations,  # noqa: F821
            snakemake.input.class_prediction,  # noqa: F821
            snakemake.input.concentration,  # noqa: F821
            snakemake.input.baselines,  # noqa: F821
            snakemake.params.models,  # noqa: F821
            snakemake.output.variants,  # noqa: F821
            snakemake.output.rotation,  # noqa: F821
        )
