"""Rule adapter: scatter grid of unit attributes against the overall and max class drop."""

import sys
from pathlib import Path

from matplotlib.figure import Figure

from unitablation.figures import (
    SCATTER_ATTRIBUTES,
    attributes_figure,
    save_figure,
    scatter_attributes,
)
from unitablation.logs import logged_to
from unitablation.table_io import read_table


def main(units_table: str, correlations_table: str, stem: str, dpi: float) -> Figure:
    """Read units.csv and correlations.csv (unit basis); write <stem>.png and <stem>.pdf."""
    units = read_table(units_table)
    correlations = read_table(correlations_table)
    present = scatter_attributes(units)
    left_out = [a for a in SCATTER_ATTRIBUTES if a not in present]
    print(f"attributes plotted: {present}; without finite values: {left_out}", file=sys.stderr)
    title = f"{units['model'].iloc[0]}, {units['layer'].iloc[0]}" if len(units) else None
    figure = attributes_figure(units, correlations, title=title)
    save_figure(figure, stem, dpi)
    return figure


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            snakemake.input.correlations,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.dpi,
        )
