"""Cumulative ablation: how few of a class's most important units it takes to destroy that class.

For each class c the units are ranked by their single-unit class drop d_uc, measured on a
*ranking split* of the eval images (stratified per class, seeded). The k top-ranked units,
k = 1, 2, 4, ..., are then ablated together and, on the disjoint *measure split*, the fall of
class c's accuracy and of overall accuracy is recorded. The random control ablates k units drawn
at random instead: the first k of a seeded random permutation of all units, one permutation per
(class, draw), so its sets are nested in k like the top-k sets.

Ablating a set follows the single-unit rule of `ablation.py`: the set's channels are set to 0
(or, in `mean` mode, each to its replacement value); in a rotated basis (rows r_j of R) the
set's directions are removed, a' = a - sum_{j in J} r_j (r_j . a - v_j), with v_j the
replacement in rotated coordinates (0 in zero mode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .ablation import (
    AblationCounts,
    AblationEngine,
    channel_contributions,
    choose_route,
    single_call_forward,
)

SET_METHODS = ("auto", "linear", "suffix", "hook")
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


@dataclass
class SetCounts:
    """Per unit set and class, what the network still gets right with the whole set ablated."""

    correct: np.ndarray  # (S, K) images of class k predicted k with set s ablated
    near_ties: np.ndarray  # (S,) images whose top-2 logits differ by < tie_margin
    baseline_correct: np.ndarray  # (K,) the same count without ablation, through the same path
    class_sizes: np.ndarray  # (K,) images per class
    method: str

    def take(self, rows: Sequence[int]) -> SetCounts:
        """The counts of the given sets (rows may repeat)."""
        rows = np.asarray(rows, dtype=np.int64)
        return SetCounts(
            correct=self.correct[rows],
            near_ties=self.near_ties[rows],
            baseline_correct=self.baseline_correct,
            class_sizes=self.class_sizes,
            method=self.method,
        )


class SetAblation:
    """Ablates whole sets of units (or rotated directions) of one layer at once, exactly.

    Methods as in AblationEngine: `linear` (sum of the set's channel contributions to the first
    linear/conv op; unit basis only), `suffix` (replay the fx suffix on the stored layer output,
    several sets per call stacked along the batch) and `hook` (full forward of the images with a
    replacing hook, for models fx cannot cut; `needs_images` is then True).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        device: torch.device,
        replacement: torch.Tensor | None = None,
        rotation: torch.Tensor | None = None,
        method: str = "auto",
        sets_per_call: int = 16,
        tie_margin: float = 1e-5,
        memory_budget_bytes: int = 1 << 28,
    ) -> None:
        if method not in SET_METHODS:
            raise ValueError(f"unknown ablation method {method!r}; expected one of {SET_METHODS}")
        self.model = model.to(device).eval()
        self.layer = layer
        self.device = device
        self.replacement = None if replacement is None else replacement.to(device, torch.float32)
        self.rotation = None if rotation is None else rotation.to(device, torch.float32)
        self.sets_per_call = max(1, sets_per_call)
        self.tie_margin = tie_margin
        self.memory_budget_bytes = memory_budget_bytes
        route = choose_route(self.model, layer, device, method, rotated=rotation is not None)
        self.suffix, self.head, self.why_not_faster = route.suffix, route.head, route.why_not_faster
        self.method = route.method

    @property
    def needs_images(self) -> bool:
        """Whether `run` must be fed input images (hook method) rather than stored layer maps."""
        return self.method == "hook"

    def describe(self) -> str:
        """One line for the job log: which method and why."""
        if self.method == "linear":
            return f"unit sets by linear shortcut into {type(self.head.linear).__name__}"
        if self.method == "suffix":
            rotated = " of rotated directions" if self.rotation is not None else ""
            return f"unit sets{rotated} by suffix replay (torch.fx)"
        return f"unit sets by full forward with a hook ({self.why_not_faster or 'requested'})"

    @torch.no_grad()
    def run(
        self,
        batches: Batches,
        unit_sets: Sequence[Sequence[int]],
        num_classes: int,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> SetCounts:
        """Ablate each set of `unit_sets` (all its units at once) over all (inputs, labels)
        batches; inputs are layer maps, or images when `needs_images`."""
        groups = self._groups(unit_sets)
        zeros = {"dtype": torch.float64, "device": self.device}
        correct = torch.zeros(len(unit_sets), num_classes, **zeros)
        near_ties = torch.zeros(len(unit_sets), dtype=torch.int64, device=self.device)
        base_correct = torch.zeros(num_classes, **zeros)
        sizes = torch.zeros(num_classes, **zeros)
        for inputs, labels in progress(batches) if progress else batches:
            inputs = inputs.to(self.device, torch.float32)
            labels = labels.to(self.device, torch.int64)
            one_hot = F.one_hot(labels, num_classes).to(torch.float64)
            sizes += one_hot.sum(0)
            step = self._image_chunk(inputs)
            for start in range(0, len(inputs), step):
                chunk = inputs[start : start + step]
                hot = one_hot[start : start + len(chunk)]
                target = labels[start : start + len(chunk)]
                evaluate = self._evaluator(chunk)
                hit, _ = self._score(evaluate(None)[None], target)
                base_correct += hit[0] @ hot
                offset = 0
                for group, count in groups:
                    hit, ties = self._score(evaluate(group)[:count], target)
                    correct[offset : offset + count] += hit @ hot
                    near_ties[offset : offset + count] += ties
                    offset += count
        return SetCounts(
            correct=np.rint(correct.cpu().numpy()).astype(np.int64),
            near_ties=near_ties.cpu().numpy(),
            baseline_correct=np.rint(base_correct.cpu().numpy()).astype(np.int64),
            class_sizes=np.rint(sizes.cpu().numpy()).astype(np.int64),
            method=self.method,
        )

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, unit_sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits (S, B, K) of one batch with each set ablated in turn (for tests, tools)."""
        evaluate = self._evaluator(inputs.to(self.device, torch.float32))
        outputs = [
            evaluate(group)[:count].float().cpu() for group, count in self._groups(unit_sets)
        ]
        return torch.cat(outputs)

    @torch.no_grad()
    def baseline_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of one batch without ablation, through the same path as `logits`."""
        return self._evaluator(inputs.to(self.device, torch.float32))(None).float().cpu()

    def _groups(
        self, unit_sets: Sequence[Sequence[int]]
    ) -> list[tuple[tuple[torch.Tensor, torch.Tensor, int], int]]:
        """Sets in groups of `sets_per_call` (the last padded by repeating its last set), each
        as (row, unit) index pairs of a (group, channel) mask plus its highest unit, with its
        count of real sets."""
        sets = [np.unique(np.asarray(list(units), dtype=np.int64)) for units in unit_sets]
        for units in sets:
            if len(units) and units[0] < 0:
                raise ValueError(f"negative unit index in set {units.tolist()}")
        groups = []
        for start in range(0, len(sets), self.sets_per_call):
            group = sets[start : start + self.sets_per_call]
            count = len(group)
            group = group + [group[-1]] * (self.sets_per_call - count)
            rows = np.concatenate([np.full(len(units), row) for row, units in enumerate(group)])
            cols = np.concatenate(group)
            index = (
                torch.from_numpy(rows.astype(np.int64)).to(self.device),
                torch.from_numpy(cols).to(self.device),
                int(cols.max()) if len(cols) else -1,
            )
            groups.append((index, count))
        return groups

    def _mask(self, index: tuple[torch.Tensor, torch.Tensor, int], channels: int) -> torch.Tensor:
        """(G, C) boolean mask of the group's sets."""
        rows, cols, highest = index
        if highest >= channels:
            raise ValueError(f"unit index {highest} out of range: layer has {channels} units")
        mask = torch.zeros(self.sets_per_call, channels, dtype=torch.bool, device=self.device)
        mask[rows, cols] = True
        return mask

    def _values(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        """The replacement per unit (or direction): zero, or the configured values."""
        if self.replacement is None:
            return torch.zeros(channels, dtype=like.dtype, device=like.device)
        if self.replacement.shape != (channels,):
            raise ValueError(
                f"replacement has shape {tuple(self.replacement.shape)}, "
                f"layer has {channels} channels"
            )
        return self.replacement.to(like.device, like.dtype)

    def _replace(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) maps -> (G, B, C, ...) copies with set g ablated in copy g."""
        channels = maps.shape[1]
        spatial = [1] * (maps.dim() - 2)
        values = self._values(channels, maps)
        selected = mask.view(len(mask), 1, channels, *spatial)
        if self.rotation is None:
            return torch.where(selected, values.view(1, 1, channels, *spatial), maps.unsqueeze(0))
        rotation = self.rotation
        if rotation.shape != (channels, channels):
            raise ValueError(f"rotation {tuple(rotation.shape)} does not fit {channels} channels")
        rotation = rotation.to(maps.dtype)
        coordinates = torch.einsum("jc,bc...->bj...", rotation, maps)
        shift = coordinates - values.view(1, channels, *spatial)
        removed = torch.einsum("jc,gbj...->gbc...", rotation, selected * shift.unsqueeze(0))
        return maps.unsqueeze(0) - removed

    def _image_chunk(self, inputs: torch.Tensor) -> int:
        """Images per evaluation so that a call's tensors stay within the memory budget."""
        if self.method == "linear":  # channel shares (and their deltas) plus one output per set
            outputs = self.head.linear.weight.shape[0]
            positions = inputs[0, 0].numel() if isinstance(self.head.linear, nn.Conv2d) else 1
            per_image = 4 * outputs * positions * (2 * inputs.shape[1] + self.sets_per_call)
        else:  # one copy of the layer output per set (two when removing rotated directions)
            copies = 2 if self.rotation is not None else 1
            per_image = inputs[0].numel() * 4 * self.sets_per_call * copies
        return int(max(1, min(len(inputs), self.memory_budget_bytes // max(1, per_image))))

    def _score(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(G, B, K) logits -> correct (G, B) as float64, near ties (G,)."""
        logits = logits.float()
        hit = (logits.argmax(-1) == labels).to(torch.float64)
        if logits.shape[-1] > 1:
            top = logits.topk(2, dim=-1).values
            ties = ((top[..., 0] - top[..., 1]) < self.tie_margin).sum(-1)
        else:
            ties = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
        return hit, ties

    def _evaluator(self, inputs: torch.Tensor) -> Callable:
        """A function from a group's mask index (None = no ablation) to logits (G, B, K)."""
        if self.method == "linear":
            return self._linear_evaluator(inputs)
        if self.method == "suffix":
            return self._replay_evaluator(inputs)
        return self._hook_evaluator(inputs)

    def _replay_evaluator(self, maps: torch.Tensor) -> Callable:
        def evaluate(index: tuple[torch.Tensor, torch.Tensor, int] | None) -> torch.Tensor:
            if index is None:
                return self.suffix(maps)
            copies = self._replace(maps, self._mask(index, maps.shape[1]))
            return self.suffix(copies.flatten(0, 1)).view(len(copies), len(maps), -1)

        return evaluate

    def _linear_evaluator(self, maps: torch.Tensor) -> Callable:
        head = self.head
        channels = maps.shape[1]
        features = head.pre(maps)
        output = head.linear(features)
        shares = channel_contributions(head, features, channels)
        filled = self._values(channels, maps).view(1, channels, *([1] * (maps.dim() - 2)))
        replaced = channel_contributions(
            head, head.pre(filled.expand(1, *maps.shape[1:]).contiguous()), channels
        )
        change = shares - replaced  # (B, C, O, ...): what ablating each channel takes away

        def evaluate(index: tuple[torch.Tensor, torch.Tensor, int] | None) -> torch.Tensor:
            if index is None:
                return output if head.tail is None else head.tail(output)
            mask = self._mask(index, channels).to(change.dtype)
            ablated = output.unsqueeze(0) - torch.einsum("gc,bc...->gb...", mask, change)
            if head.tail is None:
                return ablated
            return head.tail(ablated.flatten(0, 1)).view(len(mask), len(maps), -1)

        return evaluate

    def _hook_evaluator(self, images: torch.Tensor) -> Callable:
        module = dict(self.model.named_modules())[self.layer]

        def evaluate(index: tuple[torch.Tensor, torch.Tensor, int] | None) -> torch.Tensor:
            if index is None:
                return single_call_forward(self.model, module, self.layer, images)

            def replace(_module: nn.Module, _inputs: object, output: torch.Tensor):
                maps = output.view(self.sets_per_call, len(images), *output.shape[1:])[0]
                return self._replace(maps, self._mask(index, maps.shape[1])).flatten(0, 1)

            repeated = images.repeat(self.sets_per_call, *([1] * (images.dim() - 1)))
            logits = single_call_forward(self.model, module, self.layer, repeated, replace)
            return logits.view(self.sets_per_call, len(images), -1)

        return evaluate


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
    ranking_method: str
    measure_method: str
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
) -> CumulativeResult:
    """Rank units per class on the ranking split, ablate top-k and random-k sets on the measure
    split, and tabulate class and overall accuracy drops.

    `batches(needs_images)` returns a fresh stream of (inputs, labels) over the whole eval set in
    the order of `labels`: stored layer maps, or input images when `needs_images` (models fx
    cannot cut). It is called twice (ranking pass, measure pass). `ks` defaults to
    powers_of_two(U); `target_classes` (indices) to all classes; `random_draws` random sets per
    (class, k). Classes without images in the
    ranking or the measure split get no rows and are listed in `skipped_classes`.
    """
    labels = np.asarray(labels)
    num_classes = len(classes)
    mask = ranking_split(labels, ranking_fraction, split_seed)
    options = {"tie_margin": tie_margin, "memory_budget_bytes": memory_budget_bytes}
    engine = AblationEngine(
        model,
        layer,
        device,
        replacement=replacement,
        method=method,
        units_per_call=units_per_call,
        rotation=rotation,
        **options,
    )
    sets = SetAblation(
        model,
        layer,
        device,
        replacement=replacement,
        rotation=rotation,
        method=method,
        sets_per_call=units_per_call,
        **options,
    )
    if engine.needs_images != sets.needs_images:
        raise ValueError(f"layer {layer}: ranking and measuring would need different inputs")

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
    measure = split_batches(batches(sets.needs_images), mask, False, labels)
    evaluated = sets.run(stage(measure, "measure"), [sorted(s) for s in unique], num_classes)
    table = cumulative_table(selections, evaluated.take(rows), ranking_sizes, classes)
    return CumulativeResult(
        table=table,
        class_drops=class_drops,
        class_prob_drops=prob_drops,
        rankings=rankings,
        ranking_method=engine.method,
        measure_method=sets.method,
        skipped_classes=skipped,
    )


def _layer_units(engine: AblationEngine, inputs: torch.Tensor) -> int:
    """Channels of the studied layer, from a batch of its maps or (hook method) of images."""
    if not engine.needs_images:
        return int(inputs.shape[1])
    captured: dict[str, int] = {}

    def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured["units"] = int(output.shape[1])  # returns None: the output is left as it is

    handle = dict(engine.model.named_modules())[engine.layer].register_forward_hook(record)
    try:
        with torch.no_grad():
            engine.model(inputs[:1].to(engine.device, torch.float32))
    finally:
        handle.remove()
    return int(captured["units"])
