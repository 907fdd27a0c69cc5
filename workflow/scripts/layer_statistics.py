"""Rule adapter: correlations.csv, class_prediction.csv and concentration.csv of one
(model, layer, basis)."""

import logging
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
import pandas as pd

from unitablation.concentration import concentration_summary, concentration_table
from unitablation.concept_status import NO_CONCEPT_SET, concepts_measured
from unitablation.logs import logged_to
from unitablation.statistics import class_prediction_table, correlation_table
from unitablation.store import atomic_paths
from unitablation.table_io import read_class_matrix, read_table
from unitablation.tables import KEYS

LOG = logging.getLogger("unitablation.scripts.layer_statistics")

#: M_u from the HDF5 counts and from units.csv (written with 6 significant digits) must agree
#: this closely (points), else the two files are not of the same ablation.
MATCH_POINTS = 1e-3


def read_units(path: str) -> pd.DataFrame:
    """units.csv with class-name columns kept as strings ('' where undefined)."""
    table = read_table(path)
    for column in table.columns:
        if column.endswith("_class") or column in ("top5_hurt_classes", "concept"):
            table[column] = table[column].fillna("").astype(str)
    return table


def read_counts(path: str) -> dict[str, np.ndarray | None]:
    """units, correct, baseline_correct, class_sizes and (when recorded) lost from the HDF5."""
    with h5py.File(path, "r") as handle:
        missing = [
            name
            for name in ("units", "correct", "baseline_correct", "class_sizes")
            if name not in handle
        ]
        if missing:
            raise ValueError(f"{path} lacks dataset(s) {missing}")
        counts = {name: handle[name][()] for name in ("units", "correct")}
        counts.update(baseline_correct=handle["baseline_correct"][()])
        counts.update(class_sizes=handle["class_sizes"][()])
        counts["lost"] = handle["lost"][()] if "lost" in handle else None
    return counts


def concentration(units: pd.DataFrame, prob_drops: str, draws: int, seed: int) -> pd.DataFrame:
    """The per-unit concentration test, after checking the counts are units.csv's ablation."""
    counts = read_counts(prob_drops)
    table = concentration_table(
        counts["units"],
        counts["correct"],
        counts["baseline_correct"],
        counts["class_sizes"],
        counts["lost"],
        draws=draws,
        seed=seed,
    )
    listed = units.set_index("unit")["max_class_drop"]
    if sorted(listed.index) != table["unit"].tolist():
        raise ValueError(f"{prob_drops} holds other units than units.csv")
    gap = np.abs(listed.loc[table["unit"]].to_numpy(np.float64) - table["max_class_drop"])
    if gap.max() > MATCH_POINTS:
        raise ValueError(
            f"{prob_drops}: max class drop differs from units.csv by up to {gap.max():.3g} "
            "points; the files come from different ablations"
        )
    return table


def main(
    units_path: str,
    class_drops: str,
    prob_drops: str,
    correlations_out: str,
    prediction_out: str,
    concentration_out: str,
    analysis: Mapping[str, Any],
    seed: int,
) -> None:
    """Spearman/Pearson with bootstrap CIs, class-prediction hit rates against chance, and the
    RQ1 concentration test of every unit."""
    units = read_units(units_path)
    n_classes = len(read_class_matrix(class_drops, nrows=0).columns) - 1
    identity = units[list(KEYS)].iloc[0]
    unmeasured = {} if concepts_measured(units) else {"iou": NO_CONCEPT_SET}
    if unmeasured:
        LOG.warning(
            f"{NO_CONCEPT_SET}: concept IoU correlations undefined, class prediction by "
            "concept (concept_class) skipped (no unit has a concept class)"
        )
    correlations = correlation_table(
        units, bootstrap=analysis["bootstrap"], seed=seed, unmeasured=unmeasured
    )
    prediction = class_prediction_table(
        units, n_classes=n_classes, permutations=analysis["permutations"], seed=seed
    )
    concentrated = concentration(units, prob_drops, analysis["permutations"], seed)
    for table in (correlations, prediction, concentrated):
        for position, key in enumerate(KEYS):
            table.insert(position, key, identity[key])
    LOG.info(f"correlations:\n{correlations.to_string(index=False)}")
    LOG.info(f"class prediction:\n{prediction.to_string(index=False)}")
    LOG.info(f"concentration: {concentration_summary(concentrated)}")
    paths = [correlations_out, prediction_out, concentration_out]
    with atomic_paths(paths) as (correlations_tmp, prediction_tmp, concentration_tmp):
        correlations.to_csv(correlations_tmp, index=False, float_format="%.6g")
        prediction.to_csv(prediction_tmp, index=False, float_format="%.6g")
        concentrated.to_csv(concentration_tmp, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.units,
            snakemake.input.class_drops,
            snakemake.input.prob_drops,
            snakemake.output.correlations,
            snakemake.output.class_prediction,
            snakemake.output.concentration,
            snakemake.params.analysis,
            snakemake.params.seed,
        )
