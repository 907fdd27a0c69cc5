"""Ablation throughput: the engine against a naive full forward per unit (and Captum), on CPU.

For AlexNet conv5 (features.11, 256 units), VGG16 conv5_3 (features.29, 512 units), ResNet-50
layer4 (2048 units) and, when asked for, a vision transformer block, timm's
vit_tiny_patch16_224 blocks.10 (the 11th of 12 blocks, (N, 197, 192) tokens: a unit is a feature
channel, ablated at every token), with random weights on random 224 x 224 images, measures
(unit, image) evaluations per second of

- the engine (unitablation.ablation.AblationEngine): its construction, its own activation
  extraction pass (one forward of the N images capturing the layer output with a hook) and
  `run` over ALL units;
- naive: for each unit of a subset, a full forward of the N images with a hook zeroing it;
- with --captum, Captum 0.9 LayerFeatureAblation, forward returning per-example correctness, on
  the same subset, once per model after the repeats (the other channels share one extra feature
  id, so Captum ablates subset + 1 groups and subset + 1 evaluations per image are credited to
  it; its two unablated forwards per batch, layer capture and initial eval, are timed but not
  credited).

Engine and naive run `--repeats` times each, interleaved (engine, naive, engine, naive, ...) on
the same images in this one process, so that a change of the machine's load hits both sides;
the table gives the median and the slowest (min) pairs/s of each side, and the speedup is the
ratio of the medians (and of the mins). The targets are checked on the ratio of medians.

Engine predictions (and Captum's) are checked against naive ones on the subset, and the engine's
counts must be identical in every repeat. Also reported: achieved GFLOP/s of both sides
(FlopCounterMode FLOPs of the engine's `run` over its median `run` seconds; FLOPs of the naive
forwards over their median seconds), the machine's fp32 matmul GFLOP/s, and the engine's peak
RSS at N and 8N images (streaming through HDF5, each in a fresh subprocess). Prints a table and
writes the figures as JSON with the date (UTC), commit, hardware and load average before and
after.

    python benchmarks/ablation.py [--images 16] [--naive-units 8] [--repeats 3] [--threads 2]
        [--models alexnet vgg16 resnet50 [vit_tiny]] [--captum] [--skip-rss]
        [--json benchmarks/measured/ablation.json]

Only the standard library and reporting are imported at module level (torch, timm and the
engine inside functions), so that benchmarks/docs_tables.py can call `docs_tables` without
loading torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from reporting import (
    hardware,
    load_average,
    peak_rss_mb,
    print_table,
    run_json_child,
    timed,
    write_report,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unitablation.ablation import AblationEngine

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 1000
IMAGE_SIZE = 224
#: model name -> (layer, units, human name of the layer, axis of the units in its output)
LAYERS = {
    "alexnet": ("features.11", 256, "conv5", 1),
    "vgg16": ("features.29", 512, "conv5_3", 1),
    "resnet50": ("layer4", 2048, "layer4", 1),
    "vit_tiny": ("blocks.10", 192, "block 11 of 12, tokens", 2),
}
#: Names of the models in the docs.
TITLES = {
    "alexnet": "AlexNet",
    "vgg16": "VGG16",
    "resnet50": "ResNet-50",
    "vit_tiny": "timm ViT-Tiny",
}
DEFAULT_MODELS = ["alexnet", "vgg16", "resnet50"]
#: Models built by timm (without pretrained weights) rather than torchvision.
TIMM_MODELS = {"vit_tiny": "vit_tiny_patch16_224"}
#: Speedup over naive (ratio of the median pairs/s) required by the issue, per model.
SPEEDUP_TARGETS = {"alexnet": 27.0, "vgg16": 270.0, "resnet50": 2000.0}
GFLOPS_TARGET_FRACTION = 0.5
RSS_RATIO_TARGET = 1.5
#: Paths whose uncommitted changes would make the recorded commit misdescribe the measured code.
MEASURED_CODE = ("workflow/unitablation/", "benchmarks/ablation.py", "benchmarks/reporting.py")


class RandomImages:
    """Seeded random images and labels, generated per index so memory does not grow with N (a
    map-style dataset for torch's DataLoader)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        label = int(torch.randint(0, NUM_CLASSES, (1,), generator=generator))
        return image, label


def build(name: str, seed: int) -> nn.Module:
    """A torchvision (or timm) model with seeded random weights, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    if name in TIMM_MODELS:
        import timm

        return timm.create_model(
            TIMM_MODELS[name], pretrained=False, num_classes=NUM_CLASSES
        ).eval()
    return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES).eval()


def chunks(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(count)."""
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


def extract_maps(model: nn.Module, layer: str, images: torch.Tensor, batch: int) -> torch.Tensor:
    """The engine's extraction pass: one forward of all images, the layer output kept."""
    import torch

    from unitablation.extraction import LayerRecorder

    maps = []
    with torch.no_grad(), LayerRecorder(model, [layer]) as recorder:
        for rows in chunks(len(images), batch):
            model(images[rows])
            maps.append(recorder.outputs[layer])
    return torch.cat(maps)


def map_batches(
    maps: torch.Tensor, labels: torch.Tensor, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(maps, labels) batches for AblationEngine.run from in-memory maps."""
    for rows in chunks(len(maps), batch):
        yield maps[rows], labels[rows]


def counted_flops(function: Callable[[], object]) -> int:
    """FLOPs torch's FlopCounterMode counts in one (untimed) call of `function`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def replays_suffix(engine: AblationEngine) -> bool:
    """Whether the engine replays network ops per unit (not the closed form of a linear head)."""
    head = getattr(engine, "head", None)
    return engine.method != "linear" or getattr(head, "tail", None) is not None


def engine_pass(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
    unit_dim: int,
) -> dict[str, object]:
    """One timed engine pass: construction, extraction and `run` over all units."""
    import torch

    from unitablation.ablation import AblationEngine

    device = torch.device("cpu")
    engine, build_s = timed(
        lambda: AblationEngine(
            model, layer, device, units_per_call=args.units_per_call, unit_dim=unit_dim
        )
    )
    maps, extract_s = timed(lambda: extract_maps(model, layer, images, args.batch_size))
    units = range(maps.shape[unit_dim])
    counts, run_s = timed(
        lambda: engine.run(map_batches(maps, labels, args.batch_size), units, NUM_CLASSES)
    )
    return {
        "engine": engine,
        "maps": maps,
        "counts": counts,
        "build_s": build_s,
        "extract_s": extract_s,
        "run_s": run_s,
        "seconds": build_s + extract_s + run_s,
    }


def naive_pass(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    units: list[int],
    batch: int,
    unit_dim: int = 1,
) -> tuple[torch.Tensor, float]:
    """Logits (U, N, K) of a full forward per unit with a hook zeroing it (along `unit_dim`:
    every position, every token), and the seconds."""
    import torch

    module = dict(model.named_modules())[layer]
    logits = torch.empty(len(units), len(images), NUM_CLASSES)
    started = time.perf_counter()
    with torch.no_grad():
        for row, unit in enumerate(units):

            def zero(
                _module: nn.Module, _inputs: object, output: torch.Tensor, unit: int = unit
            ) -> torch.Tensor:
                output = output.clone()
                output.select(unit_dim, unit).fill_(0.0)
                return output

            handle = module.register_forward_hook(zero)
            try:
                for rows in chunks(len(images), batch):
                    logits[row, rows] = model(images[rows])
            finally:
                handle.remove()
    return logits, time.perf_counter() - started


def bench_captum(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    units: list[int],
    channels: int,
    batch: int,
    perturbations: int,
    unit_dim: int = 1,
) -> tuple[torch.Tensor, int, float]:
    """Captum's attributions (U, N) = baseline - ablated correctness for `units`, the number of
    feature groups Captum ablated per image, and the seconds.

    The mask gives each unit of the subset its own feature id and all other channels (if any)
    one shared extra id, so Captum performs len(units) + 1 ablations per image; it spans the
    unit axis (1 for conv maps, 2 for tokens) and broadcasts over positions and tokens.
    """
    import torch
    from captum.attr import LayerFeatureAblation

    def correctness(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (model(inputs).argmax(1) == targets).float()

    shape = (1, channels, 1, 1) if unit_dim == 1 else (1, 1, channels)
    mask = torch.full(shape, len(units), dtype=torch.long)
    mask.view(-1)[units] = torch.arange(len(units))  # only the unit axis is longer than 1
    ablation = LayerFeatureAblation(correctness, dict(model.named_modules())[layer])
    attributions = torch.empty(len(units), len(images))
    started = time.perf_counter()
    with torch.no_grad():
        for rows in chunks(len(images), batch):
            result = ablation.attribute(
                images[rows],
                additional_forward_args=(labels[rows],),
                layer_mask=mask,
                perturbations_per_eval=perturbations,
            )
            per_unit = result[:, units, 0, 0] if unit_dim == 1 else result[:, 0, units]
            attributions[:, rows] = per_unit.T
    groups = len(units) + (1 if len(units) < channels else 0)
    return attributions, groups, time.perf_counter() - started


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """Difference between the two largest logits, along the last dimension."""
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def check_predictions(
    engine: AblationEngine,
    maps: torch.Tensor,
    labels: torch.Tensor,
    units: list[int],
    naive: torch.Tensor,
    batch: int,
) -> dict[str, int | float]:
    """Disagreements of the engine with naive top-1 on the subset, and how many are ties.

    A tie is a pair whose naive top-2 logits differ by less than 1e-4 * max(1, |top logit|).
    The largest logit change an ablation causes and the number of distinct predicted classes
    show that agreement is not trivial.
    """
    import torch

    with torch.no_grad():
        engine_logits = torch.cat(
            [engine.logits(maps[rows], units) for rows in chunks(len(maps), batch)], dim=1
        )
        baseline = torch.cat(
            [engine.baseline_logits(maps[rows]) for rows in chunks(len(maps), batch)]
        )
    naive_top = naive.argmax(-1)
    tolerance = 1e-4 * naive.abs().amax(-1).clamp(min=1.0)
    ties = top2_gap(naive) < tolerance
    engine_wrong = engine_logits.argmax(-1) != naive_top
    return {
        "engine_disagreements": int(engine_wrong.sum()),
        "engine_disagreements_at_ties": int((engine_wrong & ties).sum()),
        "engine_max_abs_logit_diff": float((engine_logits - naive).abs().max()),
        "ablation_max_abs_logit_change": float((naive - baseline).abs().max()),
        "distinct_naive_predictions": int(naive_top.unique().numel()),
        "pairs_checked": int(naive_top.numel()),
        "baseline_correct": [int(x) for x in (baseline.argmax(-1) == labels)],
        "ties": ties,
    }


def captum_check(
    attributions: torch.Tensor,
    naive: torch.Tensor,
    labels: torch.Tensor,
    baseline_correct: list[int],
    ties: torch.Tensor,
) -> dict[str, int]:
    """Disagreements of Captum's ablated correctness with naive top-1, and how many are ties."""
    import torch

    naive_correct = (naive.argmax(-1) == labels).float()
    captum_correct = torch.tensor(baseline_correct, dtype=torch.float32) - attributions
    wrong = captum_correct != naive_correct
    return {
        "captum_disagreements": int(wrong.sum()),
        "captum_disagreements_at_ties": int((wrong & ties).sum()),
    }


def subset(channels: int, count: int) -> list[int]:
    """`count` units spread evenly over the layer's channels."""
    import numpy as np

    count = max(1, min(count, channels))
    return sorted({int(u) for u in np.linspace(0, channels - 1, count).round()})


def side_summary(pairs: int, seconds: list[float]) -> dict[str, object]:
    """Per-repeat seconds of one side and its median and min (slowest) pairs/s."""
    return {
        "pairs": pairs,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "pairs_per_s_median": pairs / statistics.median(seconds),
        "pairs_per_s_min": pairs / max(seconds),
        "pairs_per_s_max": pairs / min(seconds),
    }


def bench_model(name: str, args: argparse.Namespace) -> dict[str, object]:
    """Engine and naive, interleaved `args.repeats` times, on one model; returns its row."""
    import numpy as np
    import torch

    layer, channels, layer_name, unit_dim = LAYERS[name]
    model = build(name, args.seed)
    dataset = RandomImages(args.images, args.seed)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))], dtype=torch.int64)
    units = subset(channels, args.naive_units)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection, untimed
        model(images[: min(2, len(images))])
    engine_runs: list[dict[str, object]] = []
    naive_seconds: list[float] = []
    naive = None
    for _ in range(args.repeats):
        engine_runs.append(engine_pass(model, layer, images, labels, args, unit_dim))
        logits, seconds = naive_pass(model, layer, images, units, args.batch_size, unit_dim)
        naive_seconds.append(seconds)
        naive = logits if naive is None else naive
    last = engine_runs[-1]
    engine, maps = last["engine"], last["maps"]
    if maps.shape[unit_dim] != channels:
        raise RuntimeError(f"{name} {layer} has {maps.shape[unit_dim]} units, not {channels}")
    counts = [run["counts"] for run in engine_runs]
    repeats_identical = all(
        np.array_equal(c.correct, counts[0].correct) and np.array_equal(c.lost, counts[0].lost)
        for c in counts
    )
    run_flops = counted_flops(
        lambda: engine.run(map_batches(maps, labels, args.batch_size), range(channels), NUM_CLASSES)
    )
    naive_flops = len(units) * counted_flops(
        lambda: naive_pass(model, layer, images, units[:1], args.batch_size, unit_dim)
    )
    checks = check_predictions(engine, maps, labels, units, naive, args.batch_size)
    ties = checks.pop("ties")
    baseline_correct = checks.pop("baseline_correct")
    counted = counts[0].correct[units].sum(1)
    engine_side = side_summary(channels * len(images), [run["seconds"] for run in engine_runs])
    naive_side = side_summary(len(units) * len(images), naive_seconds)
    run_median_s = statistics.median(run["run_s"] for run in engine_runs)
    row: dict[str, object] = {
        "model": name,
        "layer": layer,
        "layer_name": layer_name,
        "units": channels,
        "images": len(images),
        "subset_units": len(units),
        "method": engine.method,
        "describe": engine.describe(),
        "replays_suffix": replays_suffix(engine),
        "units_per_call": args.units_per_call,
        "engine": {
            **engine_side,
            "build_s": [run["build_s"] for run in engine_runs],
            "extract_s": [run["extract_s"] for run in engine_runs],
            "run_s": [run["run_s"] for run in engine_runs],
            "run_flops": run_flops,
            "run_gflops": run_flops / run_median_s / 1e9,
        },
        "naive": {
            **naive_side,
            "flops": naive_flops,
            "gflops": naive_flops / naive_side["median_s"] / 1e9,
        },
        "speedup_vs_naive_median": (
            engine_side["pairs_per_s_median"] / naive_side["pairs_per_s_median"]
        ),
        "speedup_vs_naive_min": engine_side["pairs_per_s_min"] / naive_side["pairs_per_s_min"],
        "engine_counts_match_naive": bool(
            np.array_equal(counted, (naive.argmax(-1) == labels).sum(1).numpy())
        ),
        "engine_repeats_identical": repeats_identical,
        **checks,
    }
    if args.captum:
        attributions, groups, captum_s = bench_captum(
            model,
            layer,
            images,
            labels,
            units,
            channels,
            args.batch_size,
            args.perturbations,
            unit_dim,
        )
        captum_pairs = groups * len(images)
        row["captum"] = {
            "pairs": captum_pairs,
            "seconds": captum_s,
            "pairs_per_s": captum_pairs / captum_s,
            **captum_check(attributions, naive, labels, baseline_correct, ties),
        }
        row["speedup_vs_captum"] = engine_side["pairs_per_s_median"] / (captum_pairs / captum_s)
    return row


def aggregate_gflops(rows: list[dict[str, object]]) -> float:
    """Counted FLOPs of engine.run over median engine.run seconds, summed over `rows`."""
    flops = sum(row["engine"]["run_flops"] for row in rows)
    return flops / sum(statistics.median(row["engine"]["run_s"]) for row in rows) / 1e9


def matmul_gflops(size: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of a size x size matmul over `repeats` timed runs (after one warm-up)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    torch.matmul(left, right)
    best = min(timed(lambda: torch.matmul(left, right))[1] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def rss_child(args: argparse.Namespace) -> None:
    """Subprocess body: streaming extraction to HDF5 then engine.run; prints peak RSS as JSON."""
    import torch
    from torch.utils.data import DataLoader

    from unitablation.ablation import AblationEngine
    from unitablation.extraction import extract_activations
    from unitablation.store import ActivationStore

    torch.set_num_threads(args.threads)
    layer, channels, _, unit_dim = LAYERS[args.rss_model]
    model = build(args.rss_model, args.seed)
    device = torch.device("cpu")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ablation-bench-") as scratch:
        path = Path(scratch) / "maps.h5"
        loader = DataLoader(RandomImages(args.images, args.seed), batch_size=args.batch_size)
        extract_activations(model, [layer], loader, path, device, {})
        engine = AblationEngine(
            model, layer, device, units_per_call=args.units_per_call, unit_dim=unit_dim
        )
        with ActivationStore(path) as store:
            labels = torch.from_numpy(store.labels())
            batches = (
                (torch.from_numpy(outputs), labels[offset : offset + len(outputs)])
                for offset, outputs in store.iter_outputs(layer, args.batch_size)
            )
            counts = engine.run(batches, range(channels), NUM_CLASSES)
    if int(counts.class_sizes.sum()) != args.images:
        raise RuntimeError("engine saw a different number of images than extracted")
    result = {
        "images": args.images,
        "units": channels,
        "peak_rss_mb": peak_rss_mb(),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(result))


def measure_rss(args: argparse.Namespace) -> list[dict[str, object]]:
    """Peak RSS of the streaming engine path at N and 8N images, each in a fresh subprocess."""
    results = []
    for count in (args.images, 8 * args.images):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--rss-child",
            "--rss-model",
            args.rss_model,
            "--images",
            str(count),
            "--threads",
            str(args.threads),
            "--batch-size",
            str(args.batch_size),
            "--units-per-call",
            str(args.units_per_call),
            "--seed",
            str(args.seed),
        ]
        results.append(run_json_child(command, f"RSS child for N={count}")[0])
    return results


COLUMNS = [
    ("model", "model"),
    ("units", "units"),
    ("images", "N"),
    ("method", "method"),
    ("engine_median", "engine pairs/s med"),
    ("engine_min", "min"),
    ("subset_units", "subset"),
    ("naive_median", "naive pairs/s med"),
    ("naive_min", "min"),
    ("speedup_vs_naive_median", "x naive med"),
    ("speedup_vs_naive_min", "x naive min"),
    ("engine_gflops", "engine GFLOP/s"),
    ("naive_gflops", "naive GFLOP/s"),
    ("disagree", "disagree (ties)"),
    ("logit_check", "|eng-naive| / |ablation effect|"),
]


def printed_row(row: dict[str, object]) -> dict[str, object]:
    """A row of the printed table: the nested per-side figures flattened."""
    return {
        **row,
        "engine_median": row["engine"]["pairs_per_s_median"],
        "engine_min": row["engine"]["pairs_per_s_min"],
        "naive_median": row["naive"]["pairs_per_s_median"],
        "naive_min": row["naive"]["pairs_per_s_min"],
        "engine_gflops": row["engine"]["run_gflops"],
        "naive_gflops": row["naive"]["gflops"],
        "disagree": f"{row['engine_disagreements']} ({row['engine_disagreements_at_ties']})",
        "logit_check": (
            f"{row['engine_max_abs_logit_diff']:.1e} / {row['ablation_max_abs_logit_change']:.1e}"
        ),
    }


def targets_of(
    rows: list[dict[str, object]],
    engine_gflops: float,
    matmul: float,
    rss_ratio: float | None,
) -> dict[str, dict[str, object]]:
    """Each target: the measured value, what is wanted and whether it is met."""
    targets: dict[str, dict[str, object]] = {}
    for row in rows:
        if row["model"] in SPEEDUP_TARGETS:
            goal = SPEEDUP_TARGETS[row["model"]]
            value = row["speedup_vs_naive_median"]
            targets[f"speedup_vs_naive {row['model']}"] = {
                "value": value,
                "target": f">= {goal:g} (ratio of medians)",
                "goal": goal,
                "met": value >= goal,
            }
    targets["engine_gflops"] = {
        "value": engine_gflops,
        "target": f">= {GFLOPS_TARGET_FRACTION * matmul:.1f} (half of matmul)",
        "met": engine_gflops >= GFLOPS_TARGET_FRACTION * matmul,
    }
    if rss_ratio is not None:
        targets["rss_ratio_8x"] = {
            "value": rss_ratio,
            "target": f"< {RSS_RATIO_TARGET:g}",
            "met": rss_ratio < RSS_RATIO_TARGET,
        }
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="N, images per model")
    parser.add_argument("--naive-units", type=int, default=8, help="unit subset for naive/Captum")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side")
    parser.add_argument("--models", nargs="+", choices=list(LAYERS), default=DEFAULT_MODELS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward")
    parser.add_argument("--units-per-call", type=int, default=32, help="engine units per call")
    parser.add_argument("--captum", action="store_true", help="also time Captum, once per model")
    parser.add_argument("--perturbations", type=int, default=4, help="Captum perturbations/eval")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--rss-model", choices=list(LAYERS), default="resnet50")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "results" / "benchmarks" / "ablation.json"
    )
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.images < 1:
        parser.error("--repeats and --images must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table and write the JSON."""
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return
    load_before = load_average()
    import torch

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    packages = ("torchvision", "timm") + (("captum",) if args.captum else ())
    info = hardware(torch.get_num_threads(), packages)
    info["load_average_at_start"] = load_before
    git = info["git"]
    print(
        f"# {info['date']}  commit {git['commit'][:12]}"
        f"{' (tree dirty: ' + ', '.join(git['dirty_paths']) + ')' if git['dirty'] else ''}"
    )
    print(
        f"# {info['cpu']}, {info['logical_cores']} logical / {info['physical_cores']} physical "
        f"cores, {info['memory_gb']} GB, load average {load_before}"
    )
    print(
        f"# python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"timm {info['timm']}, numpy {info['numpy']}, {info['threads']} torch threads"
    )
    print(
        f"# N={args.images} random 224x224 images, random weights; naive on "
        f"{args.naive_units} evenly spaced units; batch {args.batch_size}; "
        f"{args.repeats} interleaved repeats of engine and naive"
    )
    rows = []
    for name in args.models:
        row = bench_model(name, args)
        rows.append(row)
        engine_s = ", ".join(f"{s:.2f}" for s in row["engine"]["seconds"])
        naive_s = ", ".join(f"{s:.2f}" for s in row["naive"]["seconds"])
        captum = f"; captum {row['captum']['seconds']:.2f} s" if "captum" in row else ""
        print(
            f"#   {name}: {row['describe']}; engine s {engine_s}; naive s {naive_s}{captum}",
            flush=True,
        )
    print()
    print_table([printed_row(row) for row in rows], COLUMNS)
    print()
    for row in rows:
        if "captum" in row:
            captum = row["captum"]
            print(
                f"captum {row['model']}: {captum['pairs_per_s']:.4g} pairs/s, engine x "
                f"{row['speedup_vs_captum']:.4g}; disagreements {captum['captum_disagreements']} "
                f"({captum['captum_disagreements_at_ties']} at ties)"
            )
    matmul = matmul_gflops(args.matmul_size, 5)
    replaying = [row for row in rows if row["replays_suffix"]] or rows
    engine_gflops = aggregate_gflops(replaying)
    print(
        f"engine GFLOP/s, suffix replay ({', '.join(row['model'] for row in replaying)}): "
        f"{engine_gflops:.1f}; all models: {aggregate_gflops(rows):.1f}"
    )
    print(f"matmul GFLOP/s ({args.matmul_size}^2 fp32, best of 5): {matmul:.1f}")
    rss: list[dict[str, object]] = []
    rss_ratio = None
    if not args.skip_rss:
        rss = measure_rss(args)
        rss_ratio = rss[1]["peak_rss_mb"] / rss[0]["peak_rss_mb"]
        for item in rss:
            print(
                f"peak RSS {args.rss_model} engine (HDF5 extraction + run, {item['units']} units), "
                f"N={item['images']}: {item['peak_rss_mb']:.0f} MB ({item['seconds']:.1f} s)"
            )
        print(f"rss_ratio_8x: {rss_ratio:.3f}")
    targets = targets_of(rows, engine_gflops, matmul, rss_ratio)
    print()
    for key, target in targets.items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {key}: {target['value']:.4g} (want {target['target']}) {verdict}")
    problems = [
        f"{row['model']}: {what}"
        for row in rows
        for what, bad in (
            ("engine predictions differ from naive", row["engine_disagreements"] > 0),
            ("engine counts differ from naive", not row["engine_counts_match_naive"]),
            ("engine counts differ between repeats", not row["engine_repeats_identical"]),
        )
        if bad
    ]
    for problem in problems:
        print(f"CHECK FAILED {problem}")
    total = time.perf_counter() - started
    load_after = load_average()
    info["load_average_at_end"] = load_after
    print(f"total {total:.0f} s; load average before {load_before}, after {load_after}")
    report = {
        "benchmark": "benchmarks/ablation.py",
        "date": info["date"],
        "git": git,
        "measured_code_dirty": [
            path for path in git["dirty_paths"] if path.startswith(MEASURED_CODE)
        ],
        "hardware": info,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "args": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key != "rss_child"
        },
        "argv": sys.argv[1:] if argv is None else argv,
        "speedup_vs_naive_median": {row["model"]: row["speedup_vs_naive_median"] for row in rows},
        "speedup_vs_naive_min": {row["model"]: row["speedup_vs_naive_min"] for row in rows},
        "engine_gflops": engine_gflops,
        "engine_gflops_models": [row["model"] for row in replaying],
        "matmul_gflops": matmul,
        "rss_ratio_8x": rss_ratio,
        "rss": {"model": args.rss_model, "runs": rss},
        "models": {row["model"]: row for row in rows},
        "targets": targets,
        "checks_failed": problems,
        "total_s": total,
    }
    write_report(args.json, report)
    if problems:
        sys.exit(1)


def figure(value: float) -> str:
    """A measured figure for the docs: 3 significant digits, thousands separated."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")


def provenance(report: dict) -> list[str]:
    """Lines saying when, at which commit, on what and under which load a report was measured."""
    info, git, args = report["hardware"], report["git"], report["args"]
    dirty = report["measured_code_dirty"]
    code = (
        f"with uncommitted changes to {', '.join(f'`{path}`' for path in dirty)}"
        if dirty
        else "engine and benchmark as committed"
    )
    before = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    after = ", ".join(f"{x:.2f}" for x in report["load_average_after"])
    busy = (
        " (more runnable processes than cores: absolute pairs/s are below an idle machine's)"
        if max(report["load_average_before"][0], report["load_average_after"][0])
        > info["logical_cores"]
        else ""
    )
    subset = args["naive_units"]
    return [
        f"- Measured {info['date']} at commit `{git['commit'][:12]}` ({code}).",
        f"- Machine: {info['cpu']}, {info['logical_cores']} logical / {info['physical_cores']} "
        f"physical cores, {info['memory_gb']} GB; {info['threads']} torch threads; python "
        f"{info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"timm {info['timm']}.",
        f"- Load average (1, 5, 15 min): {before} before the run, {after} after it "
        f"({report['total_s']:.0f} s){busy}.",
        f"- N = {args['images']} random 224 x 224 images, random weights; naive on {subset} "
        f"evenly spaced unit{'' if subset == 1 else 's'}; {args['repeats']} repeats of each "
        f"side; `units_per_call` {args['units_per_call']}, batch {args['batch_size']}.",
    ]


def extraction_ceiling(row: dict) -> float:
    """The x naive of an engine whose per-unit work is free: its construction and extraction
    forward against the naive side's forwards of every unit (medians of a report row)."""
    naive_per_unit = row["naive"]["median_s"] / row["subset_units"]
    fixed = statistics.median(row["engine"]["build_s"]) + statistics.median(
        row["engine"]["extract_s"]
    )
    return row["units"] * naive_per_unit / fixed


def docs_tables(report: dict) -> dict[str, str]:
    """The docs' blocks of a report: `speed` (provenance, table, checks) and `summary` (one
    sentence of the speedups)."""
    rows = list(report["models"].values())
    repeats = report["args"]["repeats"]
    captum = all("captum" in row for row in rows)
    header = [
        "model, layer",
        "units",
        "method",
        f"engine pairs/s, median (min) of {repeats}",
        "naive pairs/s, median (min)",
        "x naive, median (min)",
        "target x naive (median)",
        "engine GFLOP/s",
        "naive GFLOP/s",
    ] + (["Captum pairs/s", "x Captum"] if captum else [])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        engine, naive = row["engine"], row["naive"]
        goal = SPEEDUP_TARGETS.get(row["model"])
        met = goal is not None and row["speedup_vs_naive_median"] >= goal
        cells = [
            f"{TITLES.get(row['model'], row['model'])} `{row['layer']}`"
            + ("" if row["layer_name"] == row["layer"] else f" ({row['layer_name']})"),
            str(row["units"]),
            row["describe"],
            f"{figure(engine['pairs_per_s_median'])} ({figure(engine['pairs_per_s_min'])})",
            f"{figure(naive['pairs_per_s_median'])} ({figure(naive['pairs_per_s_min'])})",
            f"**{figure(row['speedup_vs_naive_median'])}** ({figure(row['speedup_vs_naive_min'])})",
            "-" if goal is None else f"{goal:g}: {'met' if met else '**missed**'}",
            figure(engine["run_gflops"]),
            figure(naive["gflops"]),
        ]
        if captum:
            cells += [figure(row["captum"]["pairs_per_s"]), figure(row["speedup_vs_captum"])]
        lines.append("| " + " | ".join(cells) + " |")
    agree = all(row["engine_disagreements"] == 0 for row in rows)
    notes = [
        (
            "- Engine predictions equal the naive ones on every checked pair"
            if agree
            else "- Engine predictions differ from the naive ones on "
            + ", ".join(f"{row['model']} {row['engine_disagreements']}" for row in rows)
            + " pairs"
        )
        + f" ({'/'.join(str(row['pairs_checked']) for row in rows)} pairs); its logits differ "
        f"from the naive path by at most "
        f"{max(row['engine_max_abs_logit_diff'] for row in rows):.1e}, while ablating a unit "
        f"moves them by up to {max(row['ablation_max_abs_logit_change'] for row in rows):.2g}. "
        + (
            "The engine's counts are identical in every repeat."
            if all(row["engine_repeats_identical"] for row in rows)
            else "**The engine's counts differ between repeats.**"
        ),
        "- pairs/s are (unit, image) evaluations per second; the engine's time is its "
        "construction, its own extraction pass and `run` over all units; min is the slowest "
        "repeat. Engine GFLOP/s: FLOPs of `run` (counted by `torch.utils.flop_counter`) over "
        "its median `run` seconds; naive: FLOPs of its forwards over their median seconds. "
        "The closed form of a linear head does almost no arithmetic, so its GFLOP/s is low "
        "by design.",
        "- Engine GFLOP/s of the suffix work "
        f"({', '.join(TITLES.get(name, name) for name in report['engine_gflops_models'])}): "
        f"{figure(report['engine_gflops'])}, against {figure(report['matmul_gflops'])} for a "
        f"{report['args']['matmul_size']}^2 fp32 matmul on the same threads.",
    ]
    notes.append(
        "- Ceiling of a method that runs one extraction forward and nothing else per unit: "
        "units x the naive seconds per unit / (construction + extraction), medians: "
        + ", ".join(
            f"{TITLES.get(row['model'], row['model'])} x {figure(extraction_ceiling(row))}"
            for row in rows
        )
        + ". `run` (all the per-unit work) takes the rest of the engine's time: "
        + ", ".join(
            f"{figure(statistics.median(row['engine']['run_s']))} s of "
            f"{figure(row['engine']['median_s'])} s"
            for row in rows
        )
        + ". A target above the ceiling cannot be met on that machine by any engine that "
        "extracts the layer with the network's own forward."
    )
    if report["rss_ratio_8x"] is not None:
        runs = report["rss"]["runs"]
        notes.append(
            f"- Peak RSS of extraction to HDF5 + streaming ablation of all {runs[0]['units']} "
            f"{TITLES.get(report['rss']['model'], report['rss']['model'])} units, each in a "
            f"fresh process: {runs[0]['peak_rss_mb']:,.0f} MB at N = {runs[0]['images']} and "
            f"{runs[1]['peak_rss_mb']:,.0f} MB at N = {runs[1]['images']}: rss_ratio_8x = "
            f"{report['rss_ratio_8x']:.2f} (target < {RSS_RATIO_TARGET:g})."
        )
    argv = " ".join(report["argv"])
    notes.append(f"- Command: `.venv/bin/python benchmarks/ablation.py {argv}`.")
    speed = "\n".join([*provenance(report), "", *lines, "", *notes])
    ratios = ", ".join(
        f"{TITLES.get(row['model'], row['model'])} {row['layer_name']} "
        f"x {figure(row['speedup_vs_naive_median'])}"
        for row in rows
    )
    summary = (
        f"Engine speedup over a naive full forward per unit (median of {repeats} interleaved "
        f"runs, benchmarks/ablation.py, {report['date'][:10]}, commit "
        f"`{report['git']['commit'][:12]}`, load average {report['load_average_before'][0]:.1f}"
        f"): {ratios}."
    )
    return {"speed": speed, "summary": summary}


if __name__ == "__main__":
    main()
