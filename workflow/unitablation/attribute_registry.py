"""The unit attributes: one table read by the attribute, statistics, table, figure and summary code.

Each entry is a column of `units.csv`. A `numeric` attribute is correlated with the drops and
drawn in the figures; a `class` attribute names a class (the argmax of a numeric one) and is
scored against the unit's most-hurt classes. Definitions: docs/definitions.md. Adding an
attribute means one entry here (with its computation where it has one), its docs line and its
test; everything downstream iterates this table. Torch-free: the analysis environment reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AttributeKind = Literal["numeric", "class"]


@dataclass(frozen=True)
class UnitAttribute:
    """One per-unit attribute: its column, how figures and the summary name it, what it is."""

    name: str
    #: Axis label in the figures.
    label: str
    #: How a sentence of results/summary.md names it.
    phrase: str
    kind: AttributeKind
    #: For a numeric attribute: the class column holding its argmax class, if it has one.
    argmax_class: str | None = None
    #: Drawn in the per-layer scatter grid of attributes against drops.
    scatter: bool = True
    #: Named in the summary's RQ2 paragraph.
    in_summary: bool = False


ATTRIBUTES: tuple[UnitAttribute, ...] = (
    UnitAttribute("l1_in", "incoming L1 norm", "incoming L1 norm", "numeric", in_summary=True),
    UnitAttribute(
        "l1_in_bn", "incoming L1 norm (BN folded)", "incoming L1 norm, BN folded", "numeric"
    ),
    UnitAttribute(
        "l1_out", "outgoing L1 norm", "outgoing L1 norm", "numeric", argmax_class="outgoing_class"
    ),
    UnitAttribute(
        "selectivity",
        "class selectivity SI",
        "class selectivity",
        "numeric",
        argmax_class="selective_class",
        in_summary=True,
    ),
    UnitAttribute(
        "class_correlation",
        "class correlation (max r)",
        "class correlation",
        "numeric",
        argmax_class="correlated_class",
        in_summary=True,
    ),
    UnitAttribute(
        "iou",
        "best concept IoU",
        "concept IoU",
        "numeric",
        argmax_class="concept_class",
        in_summary=True,
    ),
    UnitAttribute("mean_activation", "mean activation", "mean activation", "numeric"),
    UnitAttribute("active_fraction", "active fraction of images", "active fraction", "numeric"),
    UnitAttribute(
        "activation_variance",
        "activation variance",
        "activation variance",
        "numeric",
        scatter=False,
    ),
    UnitAttribute("selective_class", "selective", "selective class", "class"),
    UnitAttribute("correlated_class", "correlated", "correlated class", "class"),
    UnitAttribute("outgoing_class", "outgoing", "outgoing-weight class", "class"),
    UnitAttribute("concept_class", "concept", "concept-implied class", "class"),
)


def attribute(name: str) -> UnitAttribute:
    """The entry of one attribute; a KeyError names the known ones."""
    for entry in ATTRIBUTES:
        if entry.name == name:
            return entry
    raise KeyError(
        f"unknown unit attribute {name!r}; known: {', '.join(a.name for a in ATTRIBUTES)}"
    )


def numeric_attributes() -> tuple[str, ...]:
    """Numeric attributes, table order: the rows of correlations.csv."""
    return tuple(a.name for a in ATTRIBUTES if a.kind == "numeric")


def class_attributes() -> tuple[str, ...]:
    """Class-valued attributes, table order: the rows of class_prediction.csv."""
    return tuple(a.name for a in ATTRIBUTES if a.kind == "class")


def scatter_attributes() -> tuple[str, ...]:
    """Numeric attributes of the scatter grid, in row order."""
    return tuple(a.name for a in ATTRIBUTES if a.kind == "numeric" and a.scatter)


def label(name: str) -> str:
    """Axis label of an attribute; the column name itself for a column not in the table."""
    return next((a.label for a in ATTRIBUTES if a.name == name), name)


def phrase(name: str) -> str:
    """How the summary's sentences name an attribute."""
    return next((a.phrase for a in ATTRIBUTES if a.name == name), name)
