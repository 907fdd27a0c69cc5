"""Rule adapter: training variants side by side (drops, selectivity, IoU per model and layer)."""

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from unitablation.figures import baseline_accuracy, save_figure, variants_figure
from unitablation.logs import logged_to
from unitablation.table_io import read_table


def main(
    units_tables: Sequence[str],
    baseline_tables: Sequence[str],
    models: Sequence[str],
    stem: str,
    dpi: float,
) -> Figure:
    """units.csv (unit basis) of every model and layer; baseline.csv of each model, in `models`
    order; write <stem>.png and <stem>.pdf."""
    if len(baseline_tables) != len(models):
        raise ValueError(f"{len(baseline_tables)} baseline tables for {len(models)} models")
    units = pd.concat([read_table(path) for path in units_tables], ignore_index=True)
    accuracy = {
        model: baseline_accuracy(read_table(path))
        for model, path in zip(models, baseline_tables, strict=True)
    }
    for model, value in accuracy.items():
        print(f"{model}: baseline accuracy {value:.2f}%", file=sys.stderr)
    figure = variants_figure(units, accuracy, models, title="Training variants")
    save_figure(figure, stem, dpi)
    return figure


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            snakemake.input.baselines,
            snakemake.params.models,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.dpi,
        )
