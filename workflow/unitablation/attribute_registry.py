"""The unit attributes: one table read by the attribute, statistics, table, figure and summary code.

Each entry is a column of `units.csv`. A `numeric` attribute is correlated with the drops and
drawn in the figures; a `class` attribute names a class (the argmax of a numeric one) and is
scored against the unit's most-hurt classes. An entry whose `source` is "statistics" carries its
computation (`from_statistics`: per-unit values, or class indices for a class attribute, from
the streamed activation sums); the weight norms and the concept IoU are computed by their own
modules and the entry only describes them. Definitions: docs/definitions.md. Adding an
attribute means one entry here (with its computation where it has one), its docs line and its
test; everything downstream iterates this table. Torch-free: the analysis environment reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .activation_statistics import (
    ActivationStatistics,
    activation_variance,
    active_fraction,
    best_correlation,
    class_correlation,
    class_means,
    mean_activation,
    selectivity,
)

AttributeKind = Literal["numeric", "class"]
#: Where a column comes from: the activation sums (computed here), the weights (attributes.py),
#: or the concept masks (concepts.py).
AttributeSource = Literal["statistics", "weights", "concepts"]
#: (C,) values of one attribute from the activation sums; for a class attribute, class indices
#: with -1 where the unit has no such class.
FromStatistics = Callable[[ActivationStatistics], np.ndarray]


@dataclass(frozen=True)
class UnitAttribute:
    """One per-unit attribute: its column, how figures and the summary name it, what it is."""

    name: str
    #: Axis label in the figures.
    label: str
    #: How a sentence of results/summary.md names it.
    phrase: str
    kind: AttributeKind
    source: AttributeSource
    #: The computation of a "statistics" attribute (None for the others).
    from_statistics: FromStatistics | None = None
    #: For a numeric attribute: the class column holding its argmax class, if it has one.
    argmax_class: str | None = None
    #: Drawn in the per-layer scatter grid of attributes against drops.
    scatter: bool = True
    #: Named in the summary's RQ2 paragraph.
    in_summary: bool = False
    #: Its mean over units is a column (`<name>_mean`) of variants.csv and rotation.csv.
    in_comparison: bool = False

    def __post_init__(self) -> None:
        """Refuse an entry whose computation does not match its source, or a class argmax."""
        if (self.source == "statistics") != (self.from_statistics is not None):
            raise ValueError(
                f"attribute {self.name!r}: from_statistics is given exactly when source is "
                f"'statistics' (source {self.source!r})"
            )
        if self.argmax_class is not None and self.kind != "numeric":
            raise ValueError(f"attribute {self.name!r}: only a numeric attribute has argmax_class")


def _selectivity(stats: ActivationStatistics) -> np.ndarray:
    """SI of every unit from its class means."""
    return selectivity(class_means(stats))[0]


def _selective_class(stats: ActivationStatistics) -> np.ndarray:
    """The class of mu_max where one stands out (-1 otherwise)."""
    return selectivity(class_means(stats))[1]


def _class_correlation(stats: ActivationStatistics) -> np.ndarray:
    """max_c rho_uc (NaN for a constant unit)."""
    return best_correlation(class_correlation(stats))[0]


def _correlated_class(stats: ActivationStatistics) -> np.ndarray:
    """argmax_c rho_uc (-1 for a constant unit)."""
    return best_correlation(class_correlation(stats))[1]


ATTRIBUTES: tuple[UnitAttribute, ...] = (
    UnitAttribute(
        "l1_in", "incoming L1 norm", "incoming L1 norm", "numeric", "weights", in_summary=True
    ),
    UnitAttribute(
        "l1_in_bn",
        "incoming L1 norm (BN folded)",
        "incoming L1 norm, BN folded",
        "numeric",
        "weights",
    ),
    UnitAttribute(
        "l1_out",
        "outgoing L1 norm",
        "outgoing L1 norm",
        "numeric",
        "weights",
        argmax_class="outgoing_class",
    ),
    UnitAttribute(
        "selectivity",
        "class selectivity SI",
        "class selectivity",
        "numeric",
        "statistics",
        _selectivity,
        argmax_class="selective_class",
        in_summary=True,
        in_comparison=True,
    ),
    UnitAttribute(
        "class_correlation",
        "class correlation (max r)",
        "class correlation",
        "numeric",
        "statistics",
        _class_correlation,
        argmax_class="correlated_class",
        in_summary=True,
    ),
    UnitAttribute(
        "iou",
        "best concept IoU",
        "concept IoU",
        "numeric",
        "concepts",
        argmax_class="concept_class",
        in_summary=True,
        in_comparison=True,
    ),
    UnitAttribute(
        "mean_activation",
        "mean activation",
        "mean activation",
        "numeric",
        "statistics",
        mean_activation,
    ),
    UnitAttribute(
        "active_fraction",
        "active fraction of images",
        "active fraction",
        "numeric",
        "statistics",
        active_fraction,
    ),
    UnitAttribute(
        "activation_variance",
        "activation variance",
        "activation variance",
        "numeric",
        "statistics",
        activation_variance,
        scatter=False,
    ),
    UnitAttribute(
        "selective_class",
        "selective",
        "selective class",
        "class",
        "statistics",
        _selective_class,
    ),
    UnitAttribute(
        "correlated_class",
        "correlated",
        "correlated class",
        "class",
        "statistics",
        _correlated_class,
    ),
    UnitAttribute("outgoing_class", "outgoing", "outgoing-weight class", "class", "weights"),
    UnitAttribute("concept_class", "concept", "concept-implied class", "class", "concepts"),
)


def attribute(name: str, attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> UnitAttribute:
    """The entry of one attribute; a KeyError names the known ones."""
    for entry in attributes:
        if entry.name == name:
            return entry
    raise KeyError(
        f"unknown unit attribute {name!r}; known: {', '.join(a.name for a in attributes)}"
    )


def numeric_attributes(attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> tuple[str, ...]:
    """Numeric attributes, table order: the rows of correlations.csv."""
    return tuple(a.name for a in attributes if a.kind == "numeric")


def class_attributes(attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> tuple[str, ...]:
    """Class-valued attributes, table order: the rows of class_prediction.csv."""
    return tuple(a.name for a in attributes if a.kind == "class")


def scatter_attributes(attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> tuple[str, ...]:
    """Numeric attributes of the scatter grid, in row order."""
    return tuple(a.name for a in attributes if a.kind == "numeric" and a.scatter)


def summary_attributes(attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> tuple[str, ...]:
    """Numeric attributes whose correlations the summary's RQ2 paragraph quotes, in order."""
    return tuple(a.name for a in attributes if a.kind == "numeric" and a.in_summary)


def comparison_attributes(attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> tuple[str, ...]:
    """Numeric attributes whose mean over units the comparison tables carry, in order."""
    return tuple(a.name for a in attributes if a.kind == "numeric" and a.in_comparison)


def statistics_attributes(
    attributes: Sequence[UnitAttribute] = ATTRIBUTES,
) -> tuple[UnitAttribute, ...]:
    """The entries computed from the activation sums, in table order."""
    return tuple(a for a in attributes if a.source == "statistics")


def label(name: str, attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> str:
    """Axis label of an attribute; the column name itself for a column not in the table."""
    return next((a.label for a in attributes if a.name == name), name)


def phrase(name: str, attributes: Sequence[UnitAttribute] = ATTRIBUTES) -> str:
    """How the summary's sentences name an attribute."""
    return next((a.phrase for a in attributes if a.name == name), name)
