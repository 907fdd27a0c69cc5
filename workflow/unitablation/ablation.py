"""The ablation engine: every unit of a layer removed in turn, over a whole eval set, exactly.

Three ways to get the logits with unit u ablated, fastest first, all exact up to float rounding:

- `linear` (shortcut): when only element/channel-wise ops stand between the layer and the first
  Linear or Conv2d op L, ablating u changes L's output by u's own contribution. All units'
  contributions cost one pass of L (a grouped convolution or one einsum); the rest of the network
  (the tail) is replayed from L's output. With no tail (a linear head such as avgpool + fc) the
  ablated logits are exact in closed form.
- `suffix`: replay the network after the layer (split with torch.fx) on the stored layer output
  with the unit's channel replaced, many (unit, image) pairs per call.
- `hook`: models fx cannot cut: a full forward of the images with a hook that replaces the
  channel (slow, exact, needs the images rather than stored maps).

The replacement is zero (README "Definitions") or, in `mean` mode, each unit's mean activation.

Each chunk's unablated logits come from the same route as its ablated ones, so drops and gross
losses (`lost`: correct -> wrong) never mix two computations; `compare_baseline` checks that
baseline against the stored full-network logits. Replayed parts holding in-place ops run on a
copy of their input, and a module called more than once per forward is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .suffix import Head, NotACutPoint, explain_head, has_inplace_ops, split_suffix

METHODS = ("auto", "linear", "suffix", "hook")


@dataclass
class AblationCounts:
    """Per unit and class, what the network still gets right with that unit ablated."""

    units: np.ndarray  # (U,) unit indices
    correct: np.ndarray  # (U, K) images of class k predicted k with the unit ablated
    prob_sum: np.ndarray  # (U, K) sum over class-k images of the true-class probability
    near_ties: np.ndarray  # (U,) (unit, image) pairs whose top-2 logits differ by < tie_margin
    lost: np.ndarray  # (U, K) class-k images correct without ablation, wrong with it (gross)
    baseline_correct: np.ndarray  # (K,) the same count without ablation, through the same path
    baseline_prob_sum: np.ndarray  # (K,)
    baseline_predictions: np.ndarray  # (N,) top-1 class of each image, same path, no ablation
    class_sizes: np.ndarray  # (K,) images per class
    method: str

    def merge(self, other: AblationCounts) -> AblationCounts:
        """Stack the counts of two disjoint unit sets evaluated on the same images."""
        if not np.array_equal(self.class_sizes, other.class_sizes):
            raise ValueError("counts come from different image sets")
        if not np.array_equal(self.baseline_predictions, other.baseline_predictions):
            raise ValueError("counts come from different baselines (unablated predictions differ)")
        return AblationCounts(
            units=np.concatenate([self.units, other.units]),
            correct=np.concatenate([self.correct, other.correct]),
            prob_sum=np.concatenate([self.prob_sum, other.prob_sum]),
            near_ties=np.concatenate([self.near_ties, other.near_ties]),
            lost=np.concatenate([self.lost, other.lost]),
            baseline_correct=self.baseline_correct,
            baseline_prob_sum=self.baseline_prob_sum,
            baseline_predictions=self.baseline_predictions,
            class_sizes=self.class_sizes,
            method=self.method,
        )


@dataclass(frozen=True)
class BaselineAgreement:
    """How the same-path baseline's top-1 predictions compare with the stored full network's."""

    differing: int  # eval images whose two predictions differ
    beyond_ties: int  # of those, images whose stored top-2 logit margin is at least tie_margin


def compare_baseline(
    predictions: np.ndarray, stored_logits: np.ndarray, tie_margin: float
) -> BaselineAgreement:
    """Count images where the engine's unablated prediction differs from the stored logits'."""
    stored_logits = np.asarray(stored_logits, dtype=np.float32)
    if len(predictions) != len(stored_logits):
        raise ValueError(
            f"baseline has {len(predictions)} predictions, the store {len(stored_logits)} logits"
        )
    differs = np.asarray(predictions) != stored_logits.argmax(1)
    if stored_logits.shape[1] > 1:
        top = -np.sort(-stored_logits, axis=1)[:, :2]
        tied = (top[:, 0] - top[:, 1]) < tie_margin
    else:
        tied = np.zeros(len(stored_logits), dtype=bool)
    return BaselineAgreement(int(differs.sum()), int((differs & ~tied).sum()))


def check_baseline(agreement: BaselineAgreement, model: str, layer: str, source: str) -> None:
    """Fail when the same-path baseline disagrees with the stored network beyond float ties.

    `source` says what the path read (float32 maps or images): a full-precision path must
    reproduce the network, so any disagreement outside near-ties is a bug, not rounding.
    """
    if agreement.beyond_ties:
        raise ValueError(
            f"model {model!r}, layer {layer}: the unablated network through the ablation path "
            f"({source}) predicts {agreement.beyond_ties} eval image(s) differently from the "
            "stored full-network logits, beyond float ties; the drops would not be exact"
        )


def channel_contributions(head: Head, features: torch.Tensor, channels: int) -> torch.Tensor:
    """Each input channel's share of the linear op's output (bias excluded).

    features: the `pre` output, (B, C, h, w) for a conv op or (B, C*s) for a linear op.
    Returns (B, C, O) for a linear op or (B, C, O, ho, wo) for a conv op; summed over C plus the
    bias it is the op's output.
    """
    linear = head.linear
    batch = features.shape[0]
    if isinstance(linear, nn.Linear):
        if features.dim() != 2 or features.shape[1] % channels:
            raise ValueError(f"linear op input {tuple(features.shape)} has no {channels} blocks")
        block = features.shape[1] // channels
        weight = linear.weight.view(linear.out_features, channels, block)
        return torch.einsum("bcs,ocs->bco", features.view(batch, channels, block), weight)
    if linear.padding_mode != "zeros":
        raise ValueError("conv shortcut needs zero padding")
    out_channels = linear.out_channels
    weight = linear.weight.transpose(0, 1).reshape(channels * out_channels, 1, *linear.kernel_size)
    shares = F.conv2d(
        features, weight, None, linear.stride, linear.padding, linear.dilation, groups=channels
    )
    return shares.view(batch, channels, out_channels, *shares.shape[2:])


@dataclass
class Route:
    """How ablated logits are computed: the method, and the fx suffix and head it uses."""

    method: str
    suffix: nn.Module | None
    head: Head | None
    why_not_faster: str


def choose_route(
    model: nn.Module, layer: str, device: torch.device, method: str, rotated: bool
) -> Route:
    """Resolve `auto` to the fastest exact method (linear, suffix, hook) and build its parts.

    Rotated directions mix channels, so they never take the linear shortcut; a requested method
    that cannot work raises instead of silently falling back.
    """
    if rotated and method == "linear":
        raise ValueError("rotated directions mix channels: no linear shortcut; use suffix")
    suffix, head, why_not_faster = None, None, ""
    why_not_linear = "no single linear op after it"
    if method != "hook":
        try:
            suffix = split_suffix(model, layer).to(device)
            if method in ("auto", "linear") and not rotated:
                head, why_not_linear = explain_head(suffix)
        except NotACutPoint as error:
            if method != "auto":
                raise
            why_not_faster = str(error)
    if method == "linear" and head is None:
        raise ValueError(f"layer {layer}: no linear shortcut ({why_not_linear})")
    if method == "auto":
        method = "linear" if head else "suffix" if suffix is not None else "hook"
    if suffix is not None:
        suffix = protect_inputs(suffix)
    if head is not None:
        tail = None if head.tail is None else protect_inputs(head.tail)
        head = Head(pre=protect_inputs(head.pre), linear=head.linear, tail=tail)
    return Route(method, suffix, head, why_not_faster)


class _CopyingInput(nn.Module):
    """Runs a module on a copy of its input, so in-place ops in it never touch the caller's."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The wrapped module's output for a copy of `inputs`."""
        return self.module(inputs.clone())


def protect_inputs(module: fx.GraphModule) -> nn.Module:
    """`module` itself, or a copying wrapper when it holds in-place ops (ReLU(inplace=True)
    right after the layer would otherwise rectify the stored maps that later ablations read)."""
    return _CopyingInput(module) if has_inplace_ops(module) else module


class AblationEngine:
    """Ablates units of one layer of one model; see the module docstring for the methods."""

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
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown ablation method {method!r}; expected one of {METHODS}")
        self.model = model.to(device).eval()
        self.layer = layer
        self.device = device
        self.replacement = replacement
        self.rotation = None if rotation is None else rotation.to(device, torch.float32)
        self.units_per_call = max(1, units_per_call)
        self.tie_margin = tie_margin
        self.memory_budget_bytes = memory_budget_bytes
        route = choose_route(self.model, layer, device, method, rotated=self.rotation is not None)
        self.suffix, self.head, self.why_not_faster = route.suffix, route.head, route.why_not_faster
        self.method = route.method

    @property
    def needs_images(self) -> bool:
        """Whether `run` must be fed input images (hook method) rather than stored layer maps."""
        return self.method == "hook"

    def describe(self) -> str:
        """One line for the job log: which method and why."""
        if self.method == "linear":
            kind = "closed form (linear head)" if self.head.tail is None else "linear shortcut"
            return f"{kind} into {type(self.head.linear).__name__}"
        if self.method == "suffix":
            rotated = " of rotated directions" if self.rotation is not None else ""
            return f"suffix replay{rotated} (torch.fx)"
        return f"full forward with a replacing hook ({self.why_not_faster or 'requested'})"

    def _replacement_for(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        if self.replacement is None:
            return torch.zeros(channels, dtype=like.dtype, device=like.device)
        if self.replacement.shape != (channels,):
            raise ValueError(
                f"replacement has shape {tuple(self.replacement.shape)}, "
                f"layer has {channels} channels"
            )
        return self.replacement.to(like.device, like.dtype)

    @torch.no_grad()
    def run(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        units: Sequence[int],
        num_classes: int,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> AblationCounts:
        """Ablate each of `units` over all (inputs, labels) batches; inputs are layer maps, or
        images when `needs_images`."""
        units = np.asarray(list(units), dtype=np.int64)
        count = len(units)
        # Accumulate on the device: only the (U, K) counts ever travel back.
        zeros = {"dtype": torch.float64, "device": self.device}
        correct = torch.zeros(count, num_classes, **zeros)
        prob_sum = torch.zeros(count, num_classes, **zeros)
        near_ties = torch.zeros(count, dtype=torch.int64, device=self.device)
        lost = torch.zeros(count, num_classes, **zeros)
        base_correct = torch.zeros(num_classes, **zeros)
        base_prob = torch.zeros(num_classes, **zeros)
        sizes = torch.zeros(num_classes, **zeros)
        predictions = []
        groups = [units[i : i + self.units_per_call] for i in range(0, count, self.units_per_call)]
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
                baseline = evaluate(None)
                predictions.append(baseline.argmax(-1).cpu())
                base_hit, prob, _ = self._score(baseline[None], target)
                base_correct += base_hit[0] @ hot
                base_prob += prob[0] @ hot
                offset = 0
                for group in groups:
                    padded = np.concatenate(
                        [group, np.repeat(group[-1:], self.units_per_call - len(group))]
                    )
                    logits = evaluate(torch.from_numpy(padded))[: len(group)]
                    hit, prob, ties = self._score(logits, target)
                    rows = slice(offset, offset + len(group))
                    correct[rows] += hit @ hot
                    prob_sum[rows] += prob @ hot
                    near_ties[rows] += ties
                    lost[rows] += (base_hit * (1.0 - hit)) @ hot
                    offset += len(group)
        return AblationCounts(
            units=units,
            correct=np.rint(correct.cpu().numpy()).astype(np.int64),
            prob_sum=prob_sum.cpu().numpy(),
            near_ties=near_ties.cpu().numpy(),
            lost=np.rint(lost.cpu().numpy()).astype(np.int64),
            baseline_correct=np.rint(base_correct.cpu().numpy()).astype(np.int64),
            baseline_prob_sum=base_prob.cpu().numpy(),
            baseline_predictions=torch.cat(predictions).numpy().astype(np.int64)
            if predictions
            else np.zeros(0, dtype=np.int64),
            class_sizes=np.rint(sizes.cpu().numpy()).astype(np.int64),
            method=self.method,
        )

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, units: Sequence[int]) -> torch.Tensor:
        """Logits (U, B, K) of one batch with each of `units` ablated in turn (for tests, tools)."""
        inputs = inputs.to(self.device, torch.float32)
        evaluate = self._evaluator(inputs)
        units = np.asarray(list(units), dtype=np.int64)
        outputs = []
        for start in range(0, len(units), self.units_per_call):
            group = units[start : start + self.units_per_call]
            padded = np.concatenate(
                [group, np.repeat(group[-1:], self.units_per_call - len(group))]
            )
            outputs.append(evaluate(torch.from_numpy(padded))[: len(group)].float().cpu())
        return torch.cat(outputs)

    @torch.no_grad()
    def baseline_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of one batch without ablation, through the same path as `logits`."""
        return self._evaluator(inputs.to(self.device, torch.float32))(None).float().cpu()

    def _image_chunk(self, inputs: torch.Tensor) -> int:
        """Images per evaluation so that a call's tensors stay within the memory budget."""
        if self.method == "linear":  # channel shares plus one ablated output per unit
            outputs = self.head.linear.weight.shape[0]
            positions = inputs[0, 0].numel() if isinstance(self.head.linear, nn.Conv2d) else 1
            channels = inputs.shape[1]
            per_image = 4 * outputs * positions * (channels + self.units_per_call)
        else:  # one copy of the layer output per unit (two when the suffix copies its input)
            copies = 2 if isinstance(self.suffix, _CopyingInput) else 1
            per_image = inputs[0].numel() * 4 * self.units_per_call * copies
        return int(max(1, min(len(inputs), self.memory_budget_bytes // max(1, per_image))))

    def _score(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G, B, K) logits -> correct (G, B), true-class probability (G, B), near ties (G,)."""
        logits = logits.float()
        hit = (logits.argmax(-1) == labels).to(torch.float64)
        prob = torch.softmax(logits.double(), -1).gather(
            -1, labels.expand(logits.shape[0], -1)[..., None]
        )[..., 0]
        if logits.shape[-1] > 1:
            top = logits.topk(2, dim=-1).values
            ties = ((top[..., 0] - top[..., 1]) < self.tie_margin).sum(-1)
        else:
            ties = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
        return hit, prob, ties

    def _evaluator(self, inputs: torch.Tensor) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """A function from a unit group (None = no ablation) to logits (G, B, K) for `inputs`."""
        if self.method == "linear":
            return self._linear_evaluator(inputs)
        if self.method == "suffix":
            return self._replay_evaluator(inputs, self.suffix)
        return self._hook_evaluator(inputs)

    def _replace(self, maps: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) maps -> (G, B, C, ...) copies with unit group[g] replaced in copy g.

        In a rotated basis, unit j is the direction r_j: a' = a - r_j (z_j - v_j) with
        z_j = r_j . a and v_j the replacement (0, or the mean of z_j).
        """
        if self.rotation is not None:
            return self._replace_direction(maps, group)
        channels = maps.shape[1]
        values = self._replacement_for(channels, maps)
        copies = maps.unsqueeze(0).repeat(len(group), *([1] * maps.dim()))
        index = torch.arange(len(group), device=maps.device)
        group = group.to(maps.device)
        copies[index, :, group] = values[group].view(-1, 1, *([1] * (maps.dim() - 2)))
        return copies

    def _replace_direction(self, maps: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        directions = self.rotation[group.to(self.rotation.device)].to(maps.dtype)  # (G, C)
        values = self._replacement_for(maps.shape[1], maps)[group.to(maps.device)]
        coordinates = torch.einsum("gc,bc...->gb...", directions, maps)  # (G, B, ...)
        shift = coordinates - values.view(-1, *([1] * (coordinates.dim() - 1)))
        spread = directions.view(
            *directions.shape[:1], 1, directions.shape[1], *([1] * (maps.dim() - 2))
        )
        return maps.unsqueeze(0) - spread * shift.unsqueeze(2)

    def _replay_evaluator(self, maps: torch.Tensor, suffix: nn.Module) -> Callable:
        def evaluate(group: torch.Tensor | None) -> torch.Tensor:
            if group is None:
                return suffix(maps)
            copies = self._replace(maps, group)
            logits = suffix(copies.flatten(0, 1))
            return logits.view(len(group), len(maps), -1)

        return evaluate

    def _linear_evaluator(self, maps: torch.Tensor) -> Callable:
        head = self.head
        channels = maps.shape[1]
        features = head.pre(maps)
        output = head.linear(features)
        shares = channel_contributions(head, features, channels)
        filled = self._replacement_for(channels, maps).view(1, channels, *([1] * (maps.dim() - 2)))
        replaced_shares = channel_contributions(
            head, head.pre(filled.expand(1, *maps.shape[1:]).contiguous()), channels
        )

        def evaluate(group: torch.Tensor | None) -> torch.Tensor:
            if group is None:
                return output if head.tail is None else head.tail(output)
            group = group.to(maps.device)
            delta = shares.index_select(1, group) - replaced_shares.index_select(1, group)
            ablated = output.unsqueeze(0) - delta.transpose(0, 1)  # (G, B, O, ...)
            if head.tail is None:
                return ablated
            logits = head.tail(ablated.flatten(0, 1))
            return logits.view(len(group), len(maps), -1)

        return evaluate

    def _hook_evaluator(self, images: torch.Tensor) -> Callable:
        module = dict(self.model.named_modules())[self.layer]

        def evaluate(group: torch.Tensor | None) -> torch.Tensor:
            if group is None:
                return single_call_forward(self.model, module, self.layer, images)

            def replace(_module: nn.Module, _inputs: object, output: torch.Tensor):
                maps = output.view(len(group), len(images), *output.shape[1:])[0]
                return self._replace(maps, group).flatten(0, 1)

            repeated = images.repeat(len(group), *([1] * (images.dim() - 1)))
            logits = single_call_forward(self.model, module, self.layer, repeated, replace)
            return logits.view(len(group), len(images), -1)

        return evaluate


def single_call_forward(
    model: nn.Module,
    module: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    hook: Callable | None = None,
) -> torch.Tensor:
    """`model(inputs)` with `hook` on `module`, refusing a module called more than once.

    A module reused within one forward (torchvision ResNet's `layer4.1.relu`) has no single
    output: a hook would replace the unit at every call while the store keeps only the last.
    """
    calls = []

    def counted(hooked: nn.Module, hook_inputs: object, output: torch.Tensor):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError(
                f"layer {layer} is called more than once in one forward pass, so it has no "
                "single output to ablate; study the block that encloses it instead"
            )
        return None if hook is None else hook(hooked, hook_inputs, output)

    handle = module.register_forward_hook(counted)
    try:
        return model(inputs)
    finally:
        handle.remove()
