"""Rule adapter: unit basis vs rotated bases, per layer (M_u, selectivity, detector counts)."""

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from unitablation.figures import rotation_figure, save_figure
from unitablation.logs import logged_to
from unitablation.table_io import read_table


def main(units_tables: Sequence[str], stem: str, dpi: float) -> Figure:
    """Read units.csv of every (layer, basis) of one model; write <stem>.png and <stem>.pdf."""
    units = pd.concat([read_table(path) for path in units_tables], ignore_index=True)
    layers = list(dict.fromkeys(units["layer"].astype(str)))
    bases = list(dict.fromkeys(units["basis"].astype(str)))
    print(f"{len(units)} unit rows; layers {layers}; bases {bases}", file=sys.stderr)
    title = f"{units['model'].iloc[0]}: unit vs rotated bases" if len(units) else None
    figure = rotation_figure(units, layers, title=title)
    save_figure(figure, stem, dpi)
    return figure


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            str(Path(snakemake.output.png).with_suffix("")),
            snakemake.params.dpi,
        )
