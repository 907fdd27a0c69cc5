"""Rule adapter: cumulative ablation curves (class and overall drop vs k) for one model."""

import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from unitablation.figures import cumulative_figure, save_figure
from unitablation.logs import logged_to
from unitablation.table_io import read_table


def main(
    cumulative_tables: Sequence[str], layers: Sequence[str], model: str, stem: str, dpi: float
) -> Figure:
    """cumulative.csv of each layer, in `layers` order; write <stem>.png and <stem>.pdf."""
    if len(cumulative_tables) != len(layers):
        raise ValueError(f"{len(cumulative_tables)} cumulative tables for {len(layers)} layers")
    tables = {
        layer: read_table(path) for layer, path in zip(layers, cumulative_tables, strict=True)
    }
    for layer, table in tables.items():
        print(f"{layer}: {len(table)} rows, k = {sorted(set(table['k']))}", file=sys.stderr)
    figure = cumulative_figure(tables, title=f"{model}: cumulative ablation")
    save_figure(figure, stem, dpi)
    return figure


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.tables,
            snakemake.params.layers,
            snakemake.wildcards.model,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.dpi,
        )
