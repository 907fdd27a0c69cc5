"""Rule adapter: correlations.csv and class_prediction.csv of one (model, layer, basis)."""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import pandas as pd  # noqa: E402

from unitablation.logs import logged_to  # noqa: E402
from unitablation.statistics import class_prediction_table, correlation_table  # noqa: E402
from unitablation.store import atomic_paths  # noqa: E402
from unitablation.tables import KEYS  # noqa: E402


def read_units(path: str) -> pd.DataFrame:
    """units.csv with class-name columns kept as strings ('' where undefined)."""
    table = pd.read_csv(path)
    for column in table.columns:
        if column.endswith("_class") or column in ("top5_hurt_classes", "concept"):
            table[column] = table[column].fillna("").astype(str)
    return table


def main(
    units_path: str,
    class_drops: str,
    correlations_out: str,
    prediction_out: str,
    analysis: Mapping[str, Any],
    seed: int,
) -> None:
    """Spearman/Pearson with bootstrap CIs, and class-prediction hit rates against chance."""
    units = read_units(units_path)
    n_classes = len(pd.read_csv(class_drops, nrows=0).columns) - 1
    identity = units[list(KEYS)].iloc[0]
    correlations = correlation_table(units, bootstrap=analysis["bootstrap"], seed=seed)
    prediction = class_prediction_table(
        units, n_classes=n_classes, permutations=analysis["permutations"], seed=seed
    )
    for table in (correlations, prediction):
        for position, key in enumerate(KEYS):
            table.insert(position, key, identity[key])
    print(correlations.to_string(index=False), file=sys.stderr)
    print(prediction.to_string(index=False), file=sys.stderr)
    with atomic_paths([correlations_out, prediction_out]) as (correlations_tmp, prediction_tmp):
        correlations.to_csv(correlations_tmp, index=False, float_format="%.6g")
        prediction.to_csv(prediction_tmp, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.units,  # noqa: F821
            snakemake.input.class_drops,  # noqa: F821
            snakemake.output.correlations,  # noqa: F821
            snakemake.output.class_prediction,  # noqa: F821
            snakemake.params.analysis,  # noqa: F821
            snakemake.params.seed,  # noqa: F821
        )
