"""Cumulative ablation: how few of a class's most important units it takes to destroy that class.

For each class c the units are ranked by their single-unit class drop d_uc, measured on a
*ranking split* of the eval images (stratified per class, seeded). The k top-ranked units,
k = 1, 2, 4, ..., are then ablated together and, on the disjoint *measure split*, the fall of
class c's accuracy and of overall accuracy is recorded. The random control ablates k units drawn
at random instead: the first k of a seeded random permutation of all units, one permutation per
(class, draw), so its sets are nested in k like the top-k sets.

Both passes run on one `AblationEngine`: single units (`run`) for the ranking, whole sets
(`run_sets`) for the measure. Ablating a set follows the single-unit rule: the set's units are
set to 0 (or, in `mean` mode, each to its replacement value) at every position (every token of
a token layout); in a rotated basis (rows r_j of R) the set's directions are removed,
a' = a - sum_{j in J} r_j (r_j . a - v_j), with v_j the replacement in rotated coordinates
(0 in zero mode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .ablation import AblationEngine
from .counts import AblationCounts, SetCounts

SELECTIONS = ("top", "random")
TABLE_COLUMNS = (
    "class",
    "class_index",
    "k",
    "selection",
    "draw",
    "units",
    "class_accuracy",
    "class_drop",
    "overall_accuracy",
    "overall_drop",
    "baseline_class_accuracy",
    "baseline_overall_accuracy",
    "near_ties",
    "n_ranking_images",
    "n_measure_images",
    "n_measure_total",
)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def ranking_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask, True = ranking image: per class, a seeded permutation of its images whose
    first round-half-up(fraction * n_c) go to the ranking split.

    Each class draws from its own generator seeded by (seed, class), so the split of one class
    does not depend on the other classes, and only the labels (not the images) matter.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"ranking fraction must lie strictly between 0 and 1, got {fraction}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ValueError("ranking split needs a class label for every image (found a label < 0)")
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(label)]).permutation(len(members))
        chosen = int(np.floor(fraction * len(members) + 0.5))
        mask[members[order[:chosen]]] = True
    return mask


def split_batches(
    batches: Batches, mask: np.ndarray, keep: bool, labels: np.ndarray | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream the images of `batches` whose entry of the global `mask` equals `keep`.

    `batches` must come in the order `mask` was built for; with `labels` given, each batch's
    labels are checked against it (catches an image loader in a different order than the store).
    """
    offset = 0
    for inputs, batch_labels in batches:
        count = len(batch_labels)
        if offset + count > len(mask):
            raise ValueError(f"batches hold more than the {len(mask)} images of the split mask")
        if labels is not None and not np.array_equal(
            np.asarray(batch_labels), labels[offset : offset + count]
        ):
            raise ValueError(
                f"batch at image {offset} has other labels than the split was built on"
            )
        part = torch.from_numpy(mask[offset : offset + count] == keep)
        offset += count
        if part.any():
            yield inputs[part.to(inputs.device)], batch_labels[part.to(batch_labels.device)]
    if offset != len(mask):
        raise ValueError(f"batches hold {offset} images, the split mask {len(mask)}")


def powers_of_two(n_units: int, max_k: int | None = None) -> list[int]:
    """The set sizes 1, 2, 4, ... up to min(n_units, max_k); n_units itself only if a power of 2."""
    if n_units < 1:
        raise ValueError(f"need at least one unit, got {n_units}")
    if max_k is not None and max_k < 1:
        raise ValueError(f"max_k must be at least 1, got {max_k}")
    limit = n_units if max_k is None else min(n_units, max_k)
    sizes = []
    k = 1
    while k <= limit:
        sizes.append(k)
        k *= 2
    return sizes


def class_rankings(class_drops: np.ndarray, class_prob_drops: np.ndarray) -> np.ndarray:
    """(K, U): per class, units by decreasing d_uc, ties by larger probability drop, then lower
    unit index; NaN drops (class absent) rank last."""
    drops = np.asarray(class_drops, dtype=np.float64)
    prob = np.asarray(class_prob_drops, dtype=np.float64)
    if drops.shape != prob.shape or drops.ndim != 2:
        raise ValueError(f"drop matrices must both be (U, K), got {drops.shape} and {prob.shape}")
    units = np.broadcast_to(np.arange(drops.shape[0]), drops.T.shape)
    first = np.nan_to_num(-drops.T, nan=np.inf)
    second = np.nan_to_num(-prob.T, nan=np.inf)
    return np.lexsort((units, second, first), axis=-1)


def single_unit_drops(counts: AblationCounts) -> tuple[np.ndarray, np.ndarray]:
    """(U, K) class accuracy drops in points and true-class probability drops, as in drops.py
    (d_uc = 100 (baseline_correct_c - correct_uc) / n_c; NaN for classes without images)."""
    sizes = counts.class_sizes.astype(np.float64)
    present = sizes > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        drops = 100.0 * (counts.baseline_correct[None, :] - counts.correct) / sizes
        prob = (counts.baseline_prob_sum[None, :] - counts.prob_sum) / sizes
    return np.where(present, drops, np.nan), np.where(present, prob, np.nan)


@dataclass(frozen=True)
class UnitSelection:
    """One ablated set of the table: a class, a size k, how it was chosen, and its units."""

    class_index: int
    k: int
    selection: str  # "top" or "random"
    units: tuple[int, ...]
    draw: int = 0  # which random draw (always 0 for "top")


def select_units(
    rankings: np.ndarray,
    ks: Sequence[int],
    random_seed: int,
    class_indices: Sequence[int],
    random_draws: int = 1,
) -> list[UnitSelection]:
    """Per class and k: the k top-ranked units, and for each draw d the first k of a random
    permutation of all units seeded by (random_seed, class, d) (nested in k, like top-k)."""
    n_units = rankings.shape[1]
    for k in ks:
        if not 1 <= k <= n_units:
            raise ValueError(f"set size k={k} outside 1..{n_units}")
    if random_draws < 1:
        raise ValueError(f"need at least one random draw, got {random_draws}")
    selections = []
    for class_index in map(int, class_indices):
        orders = [
            np.random.default_rng([random_seed, class_index, draw]).permutation(n_units)
            for draw in range(random_draws)
        ]
        for k in map(int, ks):
            top = tuple(int(u) for u in rankings[class_index, :k])
            selections.append(UnitSelection(class_index, k, "top", top))
            for draw, order in enumerate(orders):
                drawn = tuple(int(u) for u in order[:k])
                selections.append(UnitSelection(class_index, k, "random", drawn, draw))
    return selections


def cumulative_table(
    selections: Sequence[UnitSelection],
    counts: SetCounts,
    ranking_sizes: np.ndarray,
    classes: Sequence[str],
) -> pd.DataFrame:
    """Tidy table, one row per selection (rows of `counts` aligned with `selections`):
    accuracies in percent of the measure split, drops = baseline - ablated in points."""
    sizes = counts.class_sizes.astype(np.float64)
    total = sizes.sum()
    rows = []
    for row, item in enumerate(selections):
        c = item.class_index
        base_class = 100.0 * counts.baseline_correct[c] / sizes[c] if sizes[c] else np.nan
        class_accuracy = 100.0 * counts.correct[row, c] / sizes[c] if sizes[c] else np.nan
        base_overall = 100.0 * counts.baseline_correct.sum() / total if total else np.nan
        overall = 100.0 * counts.correct[row].sum() / total if total else np.nan
        rows.append(
            {
                "class": classes[c],
                "class_index": c,
                "k": item.k,
                "selection": item.selection,
                "draw": item.draw,
                "units": ";".join(str(u) for u in item.units),
                "class_accuracy": class_accuracy,
                "class_drop": base_class - class_accuracy,
                "overall_accuracy": overall,
                "overall_drop": base_overall - overall,
                "baseline_class_accuracy": base_class,
                "baseline_overall_accuracy": base_overall,
                "near_ties": int(counts.near_ties[row]),
                "n_ranking_images": int(ranking_sizes[c]),
                "n_measure_images": int(sizes[c]),
                "n_measure_total": int(total),
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


@dataclass
class CumulativeResult:
    """The cumulative-ablation table plus what it was ranked on."""

    table: pd.DataFrame  # see TABLE_COLUMNS / cumulative_table
    class_drops: np.ndarray  # (U, K) single-unit class drops on the ranking split, points
    class_prob_drops: np.ndarray  # (U, K) single-unit true-class probability drops, ranking split
    rankings: np.ndarray  # (K, U) units per class, most important first
    method: str  # the engine's route, for both the ranking and the measure pass
    skipped_classes: list[str] = field(default_factory=list)  # no ranking or no measure images


def cumulative_ablation(
    model: nn.Module,
    layer: str,
    device: torch.device,
    batches: Callable[[bool], Batches],
    labels: np.ndarray,
    classes: Sequence[str],
    ranking_fraction: float = 0.5,
    split_seed: int = 0,
    random_seed: int = 0,
    random_draws: int = 1,
    ks: Sequence[int] | None = None,
    target_classes: Sequence[int] | None = None,
    replacement: torch.Tensor | None = None,
    rotation: torch.Tensor | None = None,
    method: str = "auto",
    units_per_call: int = 16,
    tie_margin: float = 1e-5,
    memory_budget_bytes: int = 1 << 28,
    progress: Callable[[Iterable, str], Iterable] | None = None,
    unit_dim: int = 1,
) -> CumulativeResult:
    """Rank units per class on the ranking split, ablate top-k and random-k sets on the measure
    split, and tabulate class and overall accuracy drops.

    `batches(needs_images)` returns a fresh stream of (inputs, labels) over the whole eval set in
    the order of `labels`: raw layer outputs (units along `unit_dim`), or input images when
    `needs_images` (models fx cannot cut). It is called twice (ranking pass, measure pass). `ks`
    defaults to powers_of_two(U); `target_classes` (indices) to all classes; `random_draws`
    random sets per (class, k). Classes without images in the ranking or the measure split get
    no rows and are listed in `skipped_classes`.
    """
    labels = np.asarray(labels)
    num_classes = len(classes)
    mask = ranking_split(labels, ranking_fraction, split_seed)
    engine = AblationEngine(
        model,
        layer,
        device,
        replacement=replacement,
        method=method,
        units_per_call=units_per_call,
        tie_margin=tie_margin,
        memory_budget_bytes=memory_budget_bytes,
        rotation=rotation,
        unit_dim=unit_dim,
    )

    def stage(items: Batches, name: str) -> Batches:
        return progress(items, name) if progress else items

    ranking = split_batches(batches(engine.needs_images), mask, True, labels)
    first = next(ranking, None)
    if first is None:
        raise ValueError("the ranking split holds no images")
    n_units = _layer_units(engine, first[0])
    ks = powers_of_two(n_units) if ks is None else [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > n_units:
        raise ValueError(f"set sizes {ks} must lie in 1..{n_units} (the layer's units)")
    ranking = itertools.chain([first], ranking)
    counts = engine.run(stage(ranking, "ranking"), range(n_units), num_classes)
    class_drops, prob_drops = single_unit_drops(counts)
    rankings = class_rankings(class_drops, prob_drops)
    ranking_sizes = np.bincount(labels[mask], minlength=num_classes)
    measure_sizes = np.bincount(labels[~mask], minlength=num_classes)
    wanted = range(num_classes) if target_classes is None else target_classes
    usable = [c for c in wanted if ranking_sizes[c] and measure_sizes[c]]
    skipped = [classes[c] for c in wanted if not (ranking_sizes[c] and measure_sizes[c])]
    selections = select_units(rankings, ks, random_seed, usable, random_draws)
    unique: dict[frozenset[int], int] = {}
    rows = [unique.setdefault(frozenset(item.units), len(unique)) for item in selections]
    measure = split_batches(batches(engine.needs_images), mask, False, labels)
    evaluated = engine.run_sets(stage(measure, "measure"), [sorted(s) for s in unique], num_classes)
    table = cumulative_table(selections, evaluated.take(rows), ranking_sizes, classes)
    return CumulativeResult(
        table=table,
        class_drops=class_drops,
        class_prob_drops=prob_drops,
        rankings=rankings,
        method=engine.method,
        skipped_classes=skipped,
    )


def _layer_units(engine: AblationEngine, inputs: torch.Tensor) -> int:
    """Units of the studied layer (its size along the engine's `unit_dim`), from a batch of its
    raw outputs or (hook method) of images."""
    if not engine.needs_images:
        return int(inputs.shape[engine.unit_dim])
    captured: dict[str, int] = {}

    def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured["units"] = int(output.shape[engine.unit_dim])  # returns None: output unchanged

    handle = dict(engine.model.named_modules())[engine.layer].register_forward_hook(record)
    try:
        with torch.no_grad():
            engine.model(inputs[:1].to(engine.device, torch.float32))
    finally:
        handle.remove()
    return int(captured["units"])
