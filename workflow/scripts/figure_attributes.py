"""Rule adapter: scatter grid of unit attributes against the overall and max class drop."""

import sys
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from matplotlib.figure import Figure  # noqa: E402

from unitablation.figures import (  # noqa: E402
    SCATTER_ATTRIBUTES,
    attributes_figure,
    save_figure,
    scatter_attributes,
)
from unitablation.logs import logged_to  # noqa: E402
from unitablation.table_io import read_table  # noqa: E402


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
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.units,  # noqa: F821
            snakemake.input.correlations,  # noqa: F821
            str(Path(snakemake.output.png).with_suffix("")),  # noqa: F821
            snakemake.params.dpi,  # noqa: F821
        )
