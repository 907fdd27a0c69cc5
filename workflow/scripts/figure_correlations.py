"""Rule adapter: heatmap of Spearman rho, attributes x (layer, drop target), one model."""

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from unitablation.figures import correlations_figure, save_figure
from unitablation.logs import logged_to
from unitablation.table_io import read_table


def main(correlation_tables: Sequence[str], stem: str, dpi: float) -> Figure:
    """Read correlations.csv of every layer (config order); write <stem>.png and <stem>.pdf."""
    tables = [read_table(path) for path in correlation_tables]
    table = pd.concat(tables, ignore_index=True)
    layers = [str(t["layer"].iloc[0]) for t in tables if len(t)]
    print(f"{len(table)} correlation rows over layers {layers}", file=sys.stderr)
    title = str(table["model"].iloc[0]) if len(table) else None
    figure = correlations_figure(table, layers, title=title)
    save_figure(figure, stem, dpi)
    return figure


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.correlations,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.dpi,
        )
