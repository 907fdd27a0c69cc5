"""results/summary.md: RQ1 to RQ4 (and cumulative ablation) answered from the comparison tables.

Every number printed is a cell of results/comparison/variants.csv or rotation.csv, or a median
over classes of a cumulative.csv; sentences that judge (e.g. "mostly a few classes") are chosen by
the numbers, so the text says whatever the tables say.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .attribute_registry import attribute, class_attributes, phrase, summary_attributes
from .concept_status import NO_CONCEPT_SET

#: The k reported from the cumulative ablation (or the largest k below it).
CUMULATIVE_K = 4


def detectors_text(n_detectors: float, n_units: int) -> str:
    """'12 of 64 units concept detectors', or that the model has no concept set."""
    if pd.isna(n_detectors):
        return f"concept detectors not measured ({NO_CONCEPT_SET})"
    return f"{int(n_detectors)} of {int(n_units)} units concept detectors"


def models_without_concepts(rotation: pd.DataFrame) -> list[str]:
    """Models whose rows carry no concept numbers (empty n_detectors): no concept set."""
    if "n_detectors" not in rotation:
        return []
    detectors = pd.to_numeric(rotation["n_detectors"], errors="coerce")
    missing = detectors.isna().groupby(rotation["model"], sort=False).all()
    return [str(model) for model, none in missing.items() if none]


def concept_set_paragraph(rotation: pd.DataFrame) -> str:
    """One line per model without a concept set (empty when every model has one)."""
    models = models_without_concepts(rotation)
    if not models:
        return ""
    lines = "; ".join(
        f"model `{model}`: {NO_CONCEPT_SET}, concept IoU not measured" for model in models
    )
    return (
        f"**Concept sets.** {lines}. Its IoU, detector and concept-implied-class cells are empty, "
        f"its correlations with IoU say `{NO_CONCEPT_SET}` (undefined_reason), and the "
        "sentences below leave concept numbers out for it."
    )


def number(value: float, digits: int = 2) -> str:
    """A table value as printed in the summary ('n/a' for NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def focus_rows(variants: pd.DataFrame) -> pd.DataFrame:
    """Each model's deepest studied layer: its last row in variants.csv (config order)."""
    return variants.groupby("model", sort=False).tail(1)


#: RQ1 says "mostly a few classes" when at least this fraction of the units that do damage
#: concentrate it beyond chance (concentration test), over every variant and layer together.
CONCENTRATED_MAJORITY = 0.5
CONCENTRATION_COLUMNS = ("n_units_losing", "n_concentrated")


def _percent(part: int, whole: int) -> str:
    """part of whole in percent as printed ('n/a' for no whole)."""
    return number(100.0 * part / whole, 0) if whole else "n/a"


def rq1_extremes(model: str, rows: pd.DataFrame) -> str:
    """The largest overall and class drop of one unit in a variant, as table cells."""
    overall = rows.loc[rows["overall_drop_max"].idxmax()]
    per_class = rows.loc[rows["max_class_drop_max"].idxmax()]
    hurt = [c for c in rows.columns if c.startswith("units_hurting_a_class_")][0]
    threshold = hurt.rsplit("_", 1)[1]
    return (
        f"In `{model}` no single unit lowered overall accuracy by more than "
        f"{number(overall['overall_drop_max'])} points (largest in {overall['layer']}; "
        f"mean there {number(overall['overall_drop_mean'])}), while the largest drop of one "
        f"class was {number(per_class['max_class_drop_max'], 1)} points (in "
        f"{per_class['layer']}, where {int(per_class[hurt])} of {int(per_class['n_units'])} "
        f"units hurt some class by at least {threshold} points)."
    )


def rq1_concentration(model: str, rows: pd.DataFrame) -> str:
    """Per layer of a variant: how many damaging units concentrate their damage beyond chance."""
    layers = ", ".join(
        f"{row.layer} {int(row.n_concentrated)} of {int(row.n_units_losing)}"
        for row in rows.itertuples(index=False)
    )
    return f"Units of `{model}` whose damage is concentrated, of those that do damage: {layers}."


def rq1_verdict(variants: pd.DataFrame) -> str:
    """The RQ1 answer, from the concentration counts pooled over every variant and layer."""
    losing = int(variants["n_units_losing"].sum())
    concentrated = int(variants["n_concentrated"].sum())
    if losing == 0:
        return (
            "No unit's ablation turned any eval image from correct to wrong, so the data "
            "cannot say whether damage concentrates on a few classes."
        )
    share = f"{concentrated} of {losing} units that do damage ({_percent(concentrated, losing)}%)"
    if concentrated / losing >= CONCENTRATED_MAJORITY:
        return (
            f"Removing one unit hurts mostly a few classes: {share} concentrate it on a class "
            "beyond chance."
        )
    return (
        f"Removing one unit does not mainly hurt a few classes: only {share} concentrate it on "
        "a class beyond chance; the others spread it no more than chance would."
    )


def rq1(variants: pd.DataFrame) -> str:
    """Overall versus per-class drops, and whether one unit's damage is concentrated."""
    sentences = [rq1_extremes(model, rows) for model, rows in variants.groupby("model", sort=False)]
    if set(CONCENTRATION_COLUMNS) <= set(variants.columns):
        method = (
            "Concentration test: a unit's damage is concentrated when its largest class drop "
            "is larger than the same number of lost images spread at random over the correctly "
            "classified eval images gives (p < 0.05)."
        )
        sentences.append(method)
        sentences.extend(
            rq1_concentration(model, rows) for model, rows in variants.groupby("model", sort=False)
        )
        sentences.append(rq1_verdict(variants))
    else:
        sentences.append("The tables carry no concentration test, so no verdict is drawn.")
    return "**RQ1. One unit: overall or a few classes?** " + " ".join(sentences)


def class_hits(row: Mapping[str, object]) -> str:
    """RQ2's class-prediction sentence: top-1 hit rates over hurting units, with counts."""
    hits = []
    for attr in class_attributes():
        name = phrase(attr)
        value = row.get(f"top1_{attr}", np.nan)
        if not pd.isna(value):
            count = row.get(f"n_{attr}", np.nan)
            counted = "" if pd.isna(count) else f" of {int(count)} counted"
            hits.append(f"{name} {number(100 * float(value), 1)}%{counted}")
    if not hits:
        return ""
    hurting = row.get("n_hurting_units", np.nan)
    over = (
        "Over the units whose ablation lowers some class "
        f"({int(hurting)} of {int(row['n_units'])}), the"
        if not pd.isna(hurting)
        else "The"
    )
    chance = float(row.get("chance_top1", np.nan))
    return (
        f" {over} most-hurt class equals the unit's {', '.join(hits)} "
        f"(chance {number(100 * chance, 1)}%)."
    )


def rq2(variants: pd.DataFrame) -> str:
    """Which attributes predict overall and per-class importance (Spearman), and class hits."""
    sentences = []
    for row in focus_rows(variants).itertuples(index=False):
        row = row._asdict()
        parts = []
        for target, label in (
            ("overall_drop", "overall drop"),
            ("max_class_drop", "max class drop"),
        ):
            values = {
                phrase(attr): row.get(f"spearman_{attr}_{target}", np.nan)
                for attr in summary_attributes()
                if attribute(attr).source != "concepts" or not pd.isna(row.get("n_detectors", 0))
            }
            listed = ", ".join(f"{name} {number(v)}" for name, v in values.items())
            parts.append(f"with the {label}: {listed}")
        hit_text = class_hits(row)
        sentences.append(
            f"In `{row['model']}` {row['layer']}, Spearman rho over units "
            + "; ".join(parts)
            + "."
            + hit_text
        )
    return "**RQ2. Which attributes predict importance?** " + " ".join(sentences)


def rq3(variants: pd.DataFrame) -> str:
    """Training variants side by side at their deepest layer."""
    sentences = []
    for row in focus_rows(variants).itertuples(index=False):
        sentences.append(
            f"`{row.model}` (top-1 {number(row.baseline_accuracy, 1)}%): mean max class drop "
            f"{number(row.max_class_drop_mean)} points, mean overall drop "
            f"{number(row.overall_drop_mean, 3)}, mean selectivity "
            f"{number(row.selectivity_mean)}, {detectors_text(row.n_detectors, row.n_units)}, "
            "rho(selectivity, max class drop) "
            f"{number(getattr(row, 'spearman_selectivity_max_class_drop', np.nan))}."
        )
    layers = ", ".join(sorted(set(focus_rows(variants)["layer"])))
    return f"**RQ3. Batch norm and dropout.** At the deepest studied layer ({layers}): " + " ".join(
        sentences
    )


def _range(values: pd.Series, digits: int = 2) -> str:
    """min-max of the rotated bases' values as printed."""
    low, high = values.min(), values.max()
    if number(low, digits) == number(high, digits):
        return number(low, digits)
    return f"{number(low, digits)} to {number(high, digits)}"


def rq4_detectors(n_detectors: float, rotated: pd.DataFrame) -> str:
    """RQ4's detector clause: unit-basis count and the rotated range, or no concept set."""
    if pd.isna(n_detectors):
        return f"detectors not measured ({NO_CONCEPT_SET})"
    return f"detectors {int(n_detectors)} (rotated {_range(rotated['n_detectors'], 0)})"


def rq4(rotation: pd.DataFrame) -> str:
    """The unit basis against random rotations at each model's deepest layer."""
    units = rotation[rotation["basis"] == "unit"]
    if (rotation["basis"] == "unit").all():
        return "**RQ4. Units or directions?** No rotated basis was configured (rotation.seeds)."
    sentences = []
    for row in focus_rows(units).itertuples(index=False):
        rotated = rotation[
            (rotation["model"] == row.model)
            & (rotation["layer"] == row.layer)
            & (rotation["basis"] != "unit")
        ]
        sentences.append(
            f"`{row.model}` {row.layer}: max class drop mean {number(row.max_class_drop_mean)} "
            f"(rotated {_range(rotated['max_class_drop_mean'])}), largest "
            f"{number(row.max_class_drop_max, 1)} "
            f"(rotated {_range(rotated['max_class_drop_max'], 1)}); "
            f"mean selectivity {number(row.selectivity_mean)} (rotated "
            f"{_range(rotated['selectivity_mean'])}); {rq4_detectors(row.n_detectors, rotated)}."
        )
    n_seeds = rotation.loc[rotation["basis"] != "unit", "basis"].nunique()
    return (
        f"**RQ4. Units or directions?** Unit basis against {n_seeds} random rotation(s) of the "
        "same layer (ranges over seeds): " + " ".join(sentences)
    )


def _names(value: object) -> list[str]:
    """A ';'-joined cell as a list of names (NaN or empty: no names)."""
    return [name for name in value.split(";") if name] if isinstance(value, str) else []


def degenerate_paragraph(rotation: pd.DataFrame) -> str:
    """Classes a model never predicts and dead units, from rotation.csv (all bases).

    Empty for a table written before it carried `classes_never_predicted` and `n_dead_units`.
    """
    if not {"classes_never_predicted", "n_dead_units"} <= set(rotation.columns):
        return ""
    sentences = []
    for model, rows in rotation.groupby("model", sort=False):
        missing = _names(rows["classes_never_predicted"].iloc[0])
        if missing:
            listed = ", ".join(f"`{name}`" for name in missing)
            its, it = (
                ("its accuracy is", "it") if len(missing) == 1 else ("their accuracies are", "them")
            )
            sentences.append(
                f"`{model}` never predicts {listed} on the eval split (n_predicted 0 in "
                f"baseline.csv), so {its} 0 and no unit's ablation can lower {it}."
            )
    dead = rotation[pd.to_numeric(rotation["n_dead_units"], errors="coerce") > 0]
    if len(dead):
        listed = "; ".join(
            f"`{row.model}` {row.layer} ({row.basis} basis) {int(row.n_dead_units)} of "
            f"{int(row.n_units)}"
            for row in dead.itertuples(index=False)
        )
        sentences.append(
            f"Dead units (never active on the eval set where maps are a ReLU's, `dead` in "
            f"units.csv): {listed}. A dead unit's class correlation is undefined (constant "
            "activation: left out of the correlations and counted in n_excluded), it has no "
            "selective class and is left out of the class prediction rates (n_dead)."
        )
    constant = constant_not_dead(rotation)
    if len(constant):
        listed = "; ".join(
            f"`{row.model}` {row.layer} ({row.basis} basis) {int(count)} of {int(row.n_units)}"
            for count, row in zip(
                constant, rotation.loc[constant.index].itertuples(index=False), strict=True
            )
        )
        sentences.append(
            "Constant units that are not dead (zero activation variance over the eval set, "
            f"`constant` in units.csv): {listed}; they are left out of the class prediction "
            "rates (n_constant) and of the class-correlation statistics."
        )
    if not sentences:
        sentences.append(
            "No unit was dead or constant on the eval set and every model predicted every "
            "class at least once."
        )
    return "**Degenerate units and classes.** " + " ".join(sentences)


def constant_not_dead(rotation: pd.DataFrame) -> pd.Series:
    """Per row of rotation.csv with any, the number of constant units that are not dead."""
    if "n_constant_units" not in rotation.columns:
        return pd.Series(dtype=np.float64)
    count = pd.to_numeric(rotation["n_constant_units"], errors="coerce") - pd.to_numeric(
        rotation["n_dead_units"], errors="coerce"
    ).fillna(0)
    return count[count > 0]


#: Appended to the introduction when the text prints an undefined number.
UNDEFINED_NOTE = (
    " n/a marks an undefined number: a correlation over fewer than 3 units with finite values "
    "or with an attribute or drop constant over units (`undefined_reason` in correlations.csv "
    "says which), or a rate over no units."
)


def cumulative_medians(table: pd.DataFrame, k: int) -> dict[str, float]:
    """Medians over classes of class and overall drops at set size k, top-ranked and random."""
    at_k = table[table["k"] == k]
    top, random = at_k[at_k["selection"] == "top"], at_k[at_k["selection"] == "random"]
    return {
        "top_class_drop": float(top["class_drop"].median()),
        "top_overall_drop": float(top["overall_drop"].median()),
        "random_class_drop": float(random["class_drop"].median()),
        "random_overall_drop": float(random["overall_drop"].median()),
    }


def cumulative_paragraph(cumulative: Mapping[tuple[str, str], pd.DataFrame]) -> str:
    """How few units destroy a class, at each model's deepest layer."""
    deepest: dict[str, tuple[str, pd.DataFrame]] = {}
    for (model, layer), table in cumulative.items():
        deepest[model] = (layer, table)
    sentences = []
    for model, (layer, table) in deepest.items():
        if table.empty:
            sentences.append(f"In `{model}` {layer} no class had ranking and measure images.")
            continue
        ks = sorted(set(table["k"]))
        k = max((value for value in ks if value <= CUMULATIVE_K), default=ks[0])
        medians = cumulative_medians(table, k)
        sentences.append(
            f"In `{model}` {layer}, ablating each class's {k} top-ranked units lowered that "
            f"class's accuracy by a median of {number(medians['top_class_drop'], 1)} points "
            f"(random {k} units: {number(medians['random_class_drop'], 1)}) while overall "
            f"accuracy fell by {number(medians['top_overall_drop'], 1)} points."
        )
    return (
        "**Beyond the paper: cumulative ablation.** Units ranked per class on one half of the "
        "eval images, measured on the other half (medians over classes). " + " ".join(sentences)
    )


def summary_markdown(
    variants: pd.DataFrame,
    rotation: pd.DataFrame,
    cumulative: Mapping[tuple[str, str], pd.DataFrame],
) -> str:
    """The whole summary.md text."""
    introduction = (
        "Numbers are cells of `results/comparison/variants.csv` (unit basis), "
        "`results/comparison/rotation.csv` (all bases) and medians over classes of "
        "`results/<model>/<layer>/unit/cumulative.csv`; drops are in percentage points of "
        "top-1 accuracy on the eval split. Figures are under `results/figures/`."
    )
    paragraphs = [rq1(variants), rq2(variants), rq3(variants), rq4(rotation)]
    concept_sets = concept_set_paragraph(rotation)
    if concept_sets:
        paragraphs.insert(0, concept_sets)
    if cumulative:
        paragraphs.append(cumulative_paragraph(cumulative))
    degenerate = degenerate_paragraph(rotation)
    if degenerate:
        paragraphs.append(degenerate)
    if any("n/a" in paragraph for paragraph in paragraphs):
        introduction += UNDEFINED_NOTE
    header = ["# Summary (generated from the result tables)", introduction]
    return "\n\n".join(header + paragraphs) + "\n"
