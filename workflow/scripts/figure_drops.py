"""Rule adapter: sorted per-unit drops and their histograms, unit vs rotated bases."""

import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from unitablation.figures import drops_figure, save_figure
from unitablation.logs import logged_to
from unitablation.table_io import read_table


def main(units_tables: Sequence[str], stem: str, dpi: float) -> Figure:
    """Read units.csv of every basis of one (model, layer); write <stem>.png and <stem>.pdf."""
    tables = {}
    for path in units_tables:
        table = read_table(path)
        tables[str(table["basis"].iloc[0]) if len(table) else Path(path).parent.name] = table
    first = next(iter(tables.values()))
    title = f"{first['model'].iloc[0]}, {first['layer'].iloc[0]}" if len(first) else None
    figure = drops_figure(tables, title=title)
    for basis, table in tables.items():
        print(f"{basis}: {len(table)} units", file=sys.stderr)
    save_figure(figure, stem, dpi)
    return figure


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.dpi,
        )
