"""Rule adapter: cumulative ablation curves (class and overall drop vs k) for one model."""

import sys
from collections.abc import Sequence
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from matplotlib.figure import Figure  # noqa: E402

from unitablation.figures import cumulative_figure, save_figure  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.table_io import read_table  # noqa: E402


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
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.tables,  # noqa: F821
            snakemake.params.layers,  # noqa: F821
            snakemake.wildcards.model,  # noqa: F821
            str(Path(snakemake.output.png).with_suffix("")),  # noqa: F821
            snakemake.params.dpi,  # noqa: F821
        )
