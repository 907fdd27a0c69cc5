"""Rule adapter: training variants side by side (drops, selectivity, IoU per model and layer)."""

import sys
from collections.abc import Sequence
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from unitablation.figures import baseline_accuracy, save_figure, variants_figure  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.table_io import read_table  # noqa: E402


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
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.units,  # noqa: F821
            snakemake.input.baselines,  # noqa: F821
            snakemake.params.models,  # noqa: F821
            str(Path(snakemake.output.png).with_suffix("")),  # noqa: F821
            snakemake.params.dpi,  # noqa: F821
        )
