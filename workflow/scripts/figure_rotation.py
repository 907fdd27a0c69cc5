"""Rule adapter: unit basis vs rotated bases, per layer (M_u, selectivity, detector counts)."""

import sys
from collections.abc import Sequence
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unitablation.figures import rotation_figure, save_figure  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.table_io import read_table  # noqa: E402


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
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.units,  # noqa: F821
            str(Path(snakemake.output.png).with_suffix("")),  # noqa: F821
            snakemake.params.dpi,  # noqa: F821
        )
