"""The per-unit table (units.csv) and the side-by-side comparison rows (variants/rotation.csv)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .attribute_registry import comparison_attributes
from .concentration import concentration_summary
from .concept_status import concepts_measured
from .degenerate import constant_flags, dead_flags
from .statistics import TARGETS, hurting_flags, top_classes

#: Leading identifier columns of every analysis table.
KEYS = ("model", "layer", "basis")
#: Units count as hurting a class when their max class drop reaches this (points), in comparisons.
HURT_POINTS = 10.0


def with_detectors(table: pd.DataFrame, iou_threshold: float) -> pd.DataFrame:
    """A concepts table with `is_detector` (best IoU >= iou_threshold) before `threshold`."""
    if "iou" not in table:
        raise ValueError("the concepts table has no iou column")
    result = table.drop(columns="is_detector", errors="ignore")
    where = result.columns.get_loc("threshold") if "threshold" in result else len(result.columns)
    result.insert(where, "is_detector", result["iou"].to_numpy(np.float64) >= iou_threshold)
    return result


def unit_table(
    drops: pd.DataFrame,
    class_drops: pd.DataFrame,
    class_prob_drops: np.ndarray,
    attributes: pd.DataFrame,
    concepts: pd.DataFrame,
    identity: Mapping[str, str],
) -> pd.DataFrame:
    """Join drops, attributes and concepts on `unit`; add each unit's five most-hurt classes."""
    units = drops["unit"].to_numpy()
    for name, table in (
        ("class_drops", class_drops),
        ("attributes", attributes),
        ("concepts", concepts),
    ):
        if not np.array_equal(np.sort(table["unit"].to_numpy()), np.sort(units)):
            raise ValueError(f"{name} covers other units than drops ({len(table)} vs {len(units)})")
    ordered = class_drops.set_index("unit").loc[units]
    if class_prob_drops.shape != ordered.shape:
        raise ValueError(
            f"class_prob_drops has shape {class_prob_drops.shape}, class drops {ordered.shape}"
        )
    joined = drops.drop(columns=["method"], errors="ignore").copy()
    joined.insert(
        joined.columns.get_loc("top5_mean_drop"),
        "top5_hurt_classes",
        top_classes(ordered.to_numpy(np.float64), class_prob_drops, list(ordered.columns)),
    )
    joined = joined.merge(attributes, on="unit", how="left", validate="one_to_one")
    joined = joined.merge(concepts, on="unit", how="left", validate="one_to_one")
    for position, key in enumerate(KEYS):
        joined.insert(position, key, identity[key])
    return joined.sort_values("unit", kind="stable").reset_index(drop=True)


def overall_accuracy(baseline: pd.DataFrame) -> float:
    """Top-1 accuracy in percent from baseline.csv's per-class rows (its 'overall' row skipped)."""
    classes = baseline[baseline["class"] != "overall"] if "class" in baseline else baseline
    return 100.0 * classes["n_correct"].sum() / classes["n_images"].sum()


def comparison_row(
    units: pd.DataFrame,
    correlations: pd.DataFrame,
    class_prediction: pd.DataFrame,
    baseline_accuracy: float,
    identity: Mapping[str, str],
    never_predicted: Sequence[str] = (),
    concentration: pd.DataFrame | None = None,
) -> dict[str, object]:
    """One (model, layer, basis): drop and attribute distributions and every statistic, wide.

    `never_predicted` names the model's classes that it predicts for no eval image (from
    baseline.csv's n_predicted); `n_dead_units` and `n_constant_units` count units flagged in
    units.csv. Class-prediction rates `top1_<attribute>` are over hurting units (M_u > 0),
    `top1_<attribute>_all` over all units, each with its count `n_<attribute>[_all]`; the RQ1
    concentration counts come from `concentration` (concentration.csv) when given. The
    registry's comparison attributes give `<attribute>_mean`; without a concept set (no finite
    IoU) `iou_mean` and `n_detectors` are empty.
    """
    row: dict[str, object] = {key: identity[key] for key in KEYS}
    row["baseline_accuracy"] = baseline_accuracy
    row["n_classes_never_predicted"] = len(never_predicted)
    row["classes_never_predicted"] = ";".join(never_predicted)
    row["n_units"] = len(units)
    row["n_dead_units"] = int(dead_flags(units).sum())
    row["n_constant_units"] = int(constant_flags(units).sum())
    row["n_hurting_units"] = int(hurting_flags(units).sum())
    for target in TARGETS:
        values = units[target]
        row[f"{target}_mean"] = values.mean()
        row[f"{target}_median"] = values.median()
        row[f"{target}_max"] = values.max()
    row[f"units_hurting_a_class_{HURT_POINTS:g}"] = int(
        (units["max_class_drop"] >= HURT_POINTS).sum()
    )
    for attribute in comparison_attributes():
        row[f"{attribute}_mean"] = units[attribute].mean()
    row["n_detectors"] = (
        int(units["is_detector"].astype(bool).sum()) if concepts_measured(units) else np.nan
    )
    for item in correlations.itertuples(index=False):
        row[f"spearman_{item.attribute}_{item.target}"] = item.spearman
    if concentration is not None:
        row.update(concentration_summary(concentration))
    row.update(prediction_columns(class_prediction))
    return row


def prediction_columns(class_prediction: pd.DataFrame) -> dict[str, object]:
    """Hit rates and unit counts per class attribute: hurting units bare, all units `_all`."""
    columns: dict[str, object] = {}
    if len(class_prediction):
        columns["chance_top1"] = class_prediction["chance_top1"].iloc[0]
        columns["chance_top5"] = class_prediction["chance_top5"].iloc[0]
    for item in class_prediction.to_dict("records"):
        suffix = "_all" if item.get("unit_set", "hurting") == "all" else ""
        columns[f"top1_{item['attribute']}{suffix}"] = item["top1_hit_rate"]
        columns[f"top5_{item['attribute']}{suffix}"] = item["top5_hit_rate"]
        columns[f"n_{item['attribute']}{suffix}"] = item.get("n_units", np.nan)
    return columns


def comparison_table(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """Rows side by side; statistics missing for some (model, layer, basis) are left empty."""
    return pd.DataFrame(list(rows))
