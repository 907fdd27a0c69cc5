"""The ablation engine: units, or sets of units, of a layer removed over a whole eval set, exactly.

One engine ablates unit sets; single-unit ablation is the case of sets of one, with its own fast
path (an index write per copy rather than a set mask; in a rotated basis one direction's dot
product rather than the full rotation). `run` ablates single units (the shards' drops),
`run_sets` whole sets at once (cumulative ablation); `logits` and `set_logits` return one batch's
ablated logits. Three routes, fastest first, all exact up to float rounding (`routes.py`):

- `linear` (shortcut): when only element/channel-wise ops stand between the layer and the first
  Linear or Conv2d op L, ablating u changes L's output by W_u (f_u - f~_u): u's own block of L's
  input features less its filler's, times u's weight columns (a batched matmul, or a grouped
  convolution over the group's channels only). A set is L applied to the features with the
  set's blocks at their filler, one matmul or conv per call. The rest of the network (the tail)
  is replayed from L's output. With no tail (a linear head such as avgpool + fc) the ablated
  logits are exact in closed form. Unit basis of channel-first layouts (conv, linear) only.
- `suffix`: replay the network after the layer (split with torch.fx) on the stored layer output
  with the units replaced, many (entry, image) pairs per call.
- `hook`: models fx cannot cut: a full forward of the images with a hook that replaces the
  units (slow, exact, needs the images rather than stored outputs).

A unit is an index along `unit_dim` of the raw layer output: 1 for conv (N, C, H, W) and linear
(N, C), 2 for tokens (N, L, C), where it is replaced at every token (`replacement.py`). The
replacement is zero (docs/definitions.md) or, in `mean` mode, each unit's mean activation.

Each chunk's unablated logits come from the same route as its ablated ones, so drops and gross
losses (`lost`: correct -> wrong) never mix two computations; `compare_baseline` checks that
baseline against the stored full-network logits. Replayed parts holding in-place ops run on a
copy of the stored input (the ablated copies, made afresh per call, need none), and a module
called more than once per forward is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .counts import (  # noqa: F401  (re-exported: the engine's results)
    AblationCounts,
    BaselineAgreement,
    SetCounts,
    check_baseline,
    compare_baseline,
)
from .replacement import (
    UnitGroup,
    group_mask,
    replace,
    replacement_values,
    set_groups,
    single_groups,
)
from .routes import (
    METHODS,
    ablate_sets,
    ablate_singles,
    channel_weights,
    choose_route,
    copies_input,
    single_call_forward,
    single_unit_changes,
)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Tally:
    """Running per-entry and per-class sums of one `run`, kept on the device."""

    correct: torch.Tensor  # (E, K)
    prob_sum: torch.Tensor  # (E, K)
    near_ties: torch.Tensor  # (E,)
    lost: torch.Tensor  # (E, K)
    base_correct: torch.Tensor  # (K,)
    base_prob: torch.Tensor  # (K,)
    sizes: torch.Tensor  # (K,)
    predictions: list[torch.Tensor]

    @classmethod
    def zeros(cls, entries: int, num_classes: int, device: torch.device) -> _Tally:
        """Empty sums for `entries` ablations and `num_classes` classes."""
        options = {"dtype": torch.float64, "device": device}
        return cls(
            correct=torch.zeros(entries, num_classes, **options),
            prob_sum=torch.zeros(entries, num_classes, **options),
            near_ties=torch.zeros(entries, dtype=torch.int64, device=device),
            lost=torch.zeros(entries, num_classes, **options),
            base_correct=torch.zeros(num_classes, **options),
            base_prob=torch.zeros(num_classes, **options),
            sizes=torch.zeros(num_classes, **options),
            predictions=[],
        )


def _as_counts(values: torch.Tensor) -> np.ndarray:
    """Float64 sums of 0/1 indicators as exact integers."""
    return np.rint(values.cpu().numpy()).astype(np.int64)


class AblationEngine:
    """Ablates units, or sets of units, of one layer of one model; see the module docstring.

    `units_per_call` entries (single units or sets) are evaluated per call; `unit_dim` is the
    axis of the units in the raw layer output (1 conv/linear, 2 tokens).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        device: torch.device,
        replacement: torch.Tensor | None = None,
        method: str = "auto",
        units_per_call: int = 16,
        tie_margin: float = 1e-5,
        memory_budget_bytes: int = 1 << 28,
        rotation: torch.Tensor | None = None,
        unit_dim: int = 1,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown ablation method {method!r}; expected one of {METHODS}")
        if isinstance(unit_dim, bool) or not isinstance(unit_dim, int) or unit_dim < 1:
            raise ValueError(f"layer {layer}: unit_dim must be an axis >= 1, got {unit_dim!r}")
        self.model = model.to(device).eval()
        self.layer = layer
        self.device = device
        self.replacement = replacement
        self.rotation = None if rotation is None else rotation.to(device, torch.float32)
        self.units_per_call = max(1, units_per_call)
        self.tie_margin = tie_margin
        self.memory_budget_bytes = memory_budget_bytes
        self.unit_dim = unit_dim
        route = choose_route(
            self.model, layer, device, method, rotated=rotation is not None, unit_dim=unit_dim
        )
        self.suffix, self.head, self.why_not_faster = route.suffix, route.head, route.why_not_faster
        self.why_not_linear = route.why_not_linear
        self.method = route.method
        self._weights: torch.Tensor | None = None  # the shortcut's per-channel weight, made once
        # The tail (suffix) may rectify in place the ablated tensors made afresh per call; only
        # the shared unablated input needs the copying wrapper.
        tail = None if self.head is None else self.head.tail
        self._owned_tail = tail.module if copies_input(tail) else tail
        self._owned_suffix = self.suffix.module if copies_input(self.suffix) else self.suffix

    @property
    def needs_images(self) -> bool:
        """Whether `run` must be fed input images (hook method) rather than stored layer outputs."""
        return self.method == "hook"

    def describe(self) -> str:
        """One line for the job log: which method and why not a faster one."""
        if self.method == "linear":
            kind = "closed form (linear head)" if self.head.tail is None else "linear shortcut"
            return f"{kind} into {type(self.head.linear).__name__}"
        if self.method == "suffix":
            rotated = " of rotated directions" if self.rotation is not None else ""
            return f"suffix replay{rotated} (torch.fx; no linear shortcut: {self.why_not_linear})"
        return f"full forward with a replacing hook ({self.why_not_faster or 'requested'})"

    @torch.no_grad()
    def run(
        self,
        batches: Batches,
        units: Sequence[int],
        num_classes: int,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> AblationCounts:
        """Ablate each of `units` in turn over all (inputs, labels) batches; inputs are raw
        layer outputs, or images when `needs_images`."""
        units = np.asarray(list(units), dtype=np.int64)
        groups = single_groups(units, self.units_per_call)
        tally = self._tally(batches, groups, len(units), num_classes, progress)
        predictions = (
            torch.cat(tally.predictions).numpy().astype(np.int64)
            if tally.predictions
            else np.zeros(0, dtype=np.int64)
        )
        return AblationCounts(
            units=units,
            correct=_as_counts(tally.correct),
            prob_sum=tally.prob_sum.cpu().numpy(),
            near_ties=tally.near_ties.cpu().numpy(),
            lost=_as_counts(tally.lost),
            baseline_correct=_as_counts(tally.base_correct),
            baseline_prob_sum=tally.base_prob.cpu().numpy(),
            baseline_predictions=predictions,
            class_sizes=_as_counts(tally.sizes),
            method=self.method,
        )

    @torch.no_grad()
    def run_sets(
        self,
        batches: Batches,
        unit_sets: Sequence[Sequence[int]],
        num_classes: int,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> SetCounts:
        """Ablate each set of `unit_sets` (all its units at once) over all (inputs, labels)
        batches; inputs are raw layer outputs, or images when `needs_images`."""
        groups = set_groups(unit_sets, self.units_per_call, self.device)
        tally = self._tally(batches, groups, len(unit_sets), num_classes, progress)
        return SetCounts(
            correct=_as_counts(tally.correct),
            near_ties=tally.near_ties.cpu().numpy(),
            baseline_correct=_as_counts(tally.base_correct),
            class_sizes=_as_counts(tally.sizes),
            method=self.method,
        )

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, units: Sequence[int]) -> torch.Tensor:
        """Logits (U, B, K) of one batch with each of `units` ablated in turn (for tests, tools)."""
        units = np.asarray(list(units), dtype=np.int64)
        return self._group_logits(inputs, single_groups(units, self.units_per_call))

    @torch.no_grad()
    def set_logits(self, inputs: torch.Tensor, unit_sets: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits (S, B, K) of one batch with each set ablated in turn (for tests, tools)."""
        return self._group_logits(inputs, set_groups(unit_sets, self.units_per_call, self.device))

    @torch.no_grad()
    def baseline_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of one batch without ablation, through the same path as `logits`."""
        return self._evaluator(inputs.to(self.device, torch.float32))(None).float().cpu()

    def _group_logits(self, inputs: torch.Tensor, groups: list[UnitGroup]) -> torch.Tensor:
        """Logits (E, B, K) of one batch, one row per real entry of `groups`."""
        evaluate = self._evaluator(inputs.to(self.device, torch.float32))
        if not groups:
            return evaluate(None)[None, :0].float().cpu()
        return torch.cat([evaluate(group)[: group.count].float().cpu() for group in groups])

    def _tally(
        self,
        batches: Batches,
        groups: list[UnitGroup],
        entries: int,
        num_classes: int,
        progress: Callable[[Iterable], Iterable] | None,
    ) -> _Tally:
        """Sum correct predictions, probabilities, ties and losses of every entry over batches."""
        # Accumulate on the device: only the (E, K) counts ever travel back.
        tally = _Tally.zeros(entries, num_classes, self.device)
        sets = bool(groups) and groups[0].is_sets
        for inputs, labels in progress(batches) if progress else batches:
            inputs = inputs.to(self.device, torch.float32)
            labels = labels.to(self.device, torch.int64)
            one_hot = F.one_hot(labels, num_classes).to(torch.float64)
            tally.sizes += one_hot.sum(0)
            step = self._image_chunk(inputs, sets)
            for start in range(0, len(inputs), step):
                chunk = inputs[start : start + step]
                hot = one_hot[start : start + len(chunk)]
                target = labels[start : start + len(chunk)]
                self._tally_chunk(tally, self._evaluator(chunk), groups, hot, target)
        return tally

    def _tally_chunk(
        self,
        tally: _Tally,
        evaluate: Callable[[UnitGroup | None], torch.Tensor],
        groups: list[UnitGroup],
        hot: torch.Tensor,
        target: torch.Tensor,
    ) -> None:
        """Add one chunk of images: its same-path baseline, then every group's ablations."""
        baseline = evaluate(None)
        tally.predictions.append(baseline.argmax(-1).cpu())
        base_hit, prob, _ = self._score(baseline[None], target)
        # 0/1 counts per class as index additions over the labels (exact in any order);
        # probabilities through the one-hot matmul, whose summation order is fixed on any device
        # (index_add_ on CUDA adds atomically, in no fixed order).
        tally.base_correct.index_add_(0, target, base_hit[0])
        tally.base_prob += prob[0] @ hot
        offset = 0
        for group in groups:
            hit, prob, ties = self._score(evaluate(group)[: group.count], target)
            rows = slice(offset, offset + group.count)
            tally.correct[rows].index_add_(1, target, hit)
            tally.prob_sum[rows] += prob @ hot
            tally.near_ties[rows] += ties
            tally.lost[rows].index_add_(1, target, base_hit * (1.0 - hit))
            offset += group.count

    def _image_chunk(self, inputs: torch.Tensor, sets: bool) -> int:
        """Images per evaluation so that a call's tensors stay within the memory budget."""
        if self.method == "linear":
            # Per image: its features, their change and the filler's (channel first), then per
            # entry the ablated linear output and two tail activations of that width (sets:
            # also the replaced features).
            linear = self.head.linear
            if isinstance(linear, nn.Linear):
                features, outputs = linear.in_features, linear.out_features
            else:  # pooling in `pre` only shrinks the maps; conv outputs at most as many positions
                features = inputs[0].numel()
                outputs = linear.out_channels * inputs[0, 0].numel()
            per_entry = 3 * outputs + (features if sets else 0)
            per_image = 4 * (3 * features + self.units_per_call * per_entry)
        else:  # one copy of the layer output per entry, plus the copies the replacement makes
            copies = 1 + int(sets and self.rotation is not None) + int(self.unit_dim != 1)
            per_image = inputs[0].numel() * 4 * self.units_per_call * copies
        return int(max(1, min(len(inputs), self.memory_budget_bytes // max(1, per_image))))

    def _score(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G, B, K) logits -> correct (G, B), true-class probability (G, B), near ties (G,).

        One top-2 pass gives the prediction and the near ties (top-2 gap < `tie_margin`); where
        the top two are equal the prediction is argmax's first maximum, as in a plain forward.
        """
        logits = logits.float()
        prob = torch.softmax(logits.double(), -1).gather(
            -1, labels.expand(logits.shape[0], -1)[..., None]
        )[..., 0]
        if logits.shape[-1] == 1:
            hit = (labels == 0).to(torch.float64).expand(logits.shape[:2])
            return hit, prob, torch.zeros(len(logits), dtype=torch.int64, device=logits.device)
        values, indices = logits.topk(2, dim=-1)
        gap = values[..., 0] - values[..., 1]
        predicted = indices[..., 0]
        level = gap == 0
        if bool(level.any()):
            predicted = torch.where(level, logits.argmax(-1), predicted)
        hit = (predicted == labels).to(torch.float64)
        return hit, prob, (gap < self.tie_margin).sum(-1)

    def _evaluator(self, inputs: torch.Tensor) -> Callable[[UnitGroup | None], torch.Tensor]:
        """A function from a unit group (None = no ablation) to logits (G, B, K) for `inputs`."""
        if self.method == "linear":
            return self._linear_evaluator(inputs)
        if self.method == "suffix":
            return self._replay_evaluator(inputs)
        return self._hook_evaluator(inputs)

    def _replace(self, outputs: torch.Tensor, group: UnitGroup) -> torch.Tensor:
        """(B, ...) raw layer output -> (G, B, ...) copies with entry g ablated in copy g."""
        return replace(outputs, group, self.replacement, self.rotation, self.unit_dim)

    def _replay_evaluator(self, outputs: torch.Tensor) -> Callable:
        """Suffix replay on the stored layer output, all of a group's copies in one call."""
        suffix, owned = self.suffix, self._owned_suffix

        def evaluate(group: UnitGroup | None) -> torch.Tensor:
            if group is None:
                return suffix(outputs)
            logits = owned(self._replace(outputs, group).flatten(0, 1))
            return logits.view(group.size, len(outputs), -1)

        return evaluate

    def _linear_evaluator(self, maps: torch.Tensor) -> Callable:
        """The linear shortcut: the first linear op's output less each unit's own change."""
        head = self.head
        channels = maps.shape[1]
        features = head.pre(maps)
        output = head.linear(features)
        filled = replacement_values(self.replacement, channels, maps)
        filled = filled.view(1, channels, *([1] * (maps.dim() - 2)))
        filler = head.pre(filled.expand(1, *maps.shape[1:]).contiguous())
        tail = self._owned_tail
        cached: dict[str, torch.Tensor] = {}

        def linear_output(group: UnitGroup) -> torch.Tensor:
            """(G*B, O, ...): the linear op's output with each entry of `group` ablated."""
            if group.is_sets:
                return ablate_sets(
                    head.linear, features, filler, group_mask(group, channels, maps.device)
                )
            if "changes" not in cached:
                cached["changes"] = single_unit_changes(features, filler, channels)
            weights = self._channel_weights(channels)
            ablated = ablate_singles(head.linear, weights, output, cached["changes"], group)
            return ablated.flatten(0, 1)

        def evaluate(group: UnitGroup | None) -> torch.Tensor:
            if group is None:
                return output if head.tail is None else head.tail(output)
            ablated = linear_output(group)
            logits = ablated if tail is None else tail(ablated)
            return logits.view(group.size, len(maps), -1)

        return evaluate

    def _channel_weights(self, channels: int) -> torch.Tensor:
        """The linear op's weight split by input channel (`routes.channel_weights`), made once."""
        if self._weights is None or len(self._weights) != channels:
            self._weights = channel_weights(self.head.linear, channels)
        return self._weights

    def _hook_evaluator(self, images: torch.Tensor) -> Callable:
        """Full forwards of the images, repeated per entry, with a hook replacing the units."""
        module = dict(self.model.named_modules())[self.layer]

        def evaluate(group: UnitGroup | None) -> torch.Tensor:
            if group is None:
                return single_call_forward(self.model, module, self.layer, images)

            def replace_units(_module: nn.Module, _inputs: object, output: torch.Tensor):
                outputs = output.view(group.size, len(images), *output.shape[1:])[0]
                return self._replace(outputs, group).flatten(0, 1)

            repeated = images.repeat(group.size, *([1] * (images.dim() - 1)))
            logits = single_call_forward(self.model, module, self.layer, repeated, replace_units)
            return logits.view(group.size, len(images), -1)

        return evaluate
