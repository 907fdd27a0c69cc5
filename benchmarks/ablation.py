"""Ablation throughput: the engine against a naive full forward per unit and Captum, on CPU.

For AlexNet conv5 (features.11, 256 units), VGG16 conv5_3 (features.29, 512 units), ResNet-50
layer4 (2048 units) and a vision transformer block, timm's vit_tiny_patch16_224 blocks.10 (the
11th of 12 blocks, (N, 197, 192) tokens: a unit is a feature channel, ablated at every token),
with random weights on random 224 x 224 images, measures (unit, image) evaluations per second of

- the engine (unitablation.ablation.AblationEngine): its construction, its own activation
  extraction pass (one forward of the N images capturing the layer output with a hook) and
  `run` over ALL units;
- naive: for each unit of a subset, a full forward of the N images with a hook zeroing it;
- Captum 0.9 LayerFeatureAblation, forward returning per-example correctness, on the same
  subset (the other channels share one extra feature id, so Captum ablates subset + 1 groups
  and subset + 1 evaluations per image are credited to it; its two unablated forwards per batch,
  layer capture and initial eval, are timed but not credited).

Engine and Captum predictions are checked against naive ones on the subset. Also measures the
engine's achieved GFLOP/s (FlopCounterMode FLOPs of `run` / timed `run` seconds; the headline
figure sums the models whose engine replays a suffix, as a closed-form linear head does almost no
FLOPs), the machine's fp32 matmul GFLOP/s, and the engine's peak RSS at N and 8N images
(streaming through HDF5, each in a fresh subprocess). Prints a table and writes the figures as
JSON.

    python benchmarks/ablation.py [--images 16] [--naive-units 8] [--threads 2]
        [--models alexnet vgg16 resnet50 vit_tiny] [--json results/benchmarks/ablation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from reporting import hardware, peak_rss_mb, print_table, run_json_child, timed, write_report
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from unitablation.ablation import AblationEngine
from unitablation.extraction import LayerRecorder, extract_activations
from unitablation.store import ActivationStore

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
#: Models built by timm (without pretrained weights) rather than torchvision.
TIMM_MODELS = {"vit_tiny": "vit_tiny_patch16_224"}
#: Speedup over naive required by the issue, per model.
SPEEDUP_TARGETS = {"alexnet": 20.0, "vgg16": 100.0, "resnet50": 500.0}
GFLOPS_TARGET_FRACTION = 0.5
RSS_RATIO_TARGET = 1.5


class RandomImages(Dataset):
    """Seeded random images and labels, generated per index so memory does not grow with N."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        label = int(torch.randint(0, NUM_CLASSES, (1,), generator=generator))
        return image, label


def build(name: str, seed: int) -> nn.Module:
    """A torchvision (or timm) model with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    if name in TIMM_MODELS:
        return timm.create_model(
            TIMM_MODELS[name], pretrained=False, num_classes=NUM_CLASSES
        ).eval()
    return getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES).eval()


def chunks(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(count)."""
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


@torch.no_grad()
def extract_maps(model: nn.Module, layer: str, images: torch.Tensor, batch: int) -> torch.Tensor:
    """The engine's extraction pass: one forward of all images, the layer output kept."""
    maps = []
    with LayerRecorder(model, [layer]) as recorder:
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


def bench_engine(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
    unit_dim: int = 1,
) -> dict[str, object]:
    """Time the engine (construction + extraction + run over all units) and count its FLOPs."""
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
    with FlopCounterMode(display=False) as counter:
        engine.run(map_batches(maps, labels, args.batch_size), units, NUM_CLASSES)
    flops = counter.get_total_flops()
    seconds = build_s + extract_s + run_s
    return {
        "engine": engine,
        "maps": maps,
        "counts": counts,
        "method": engine.method,
        "describe": engine.describe(),
        "replays_suffix": engine.method != "linear" or engine.head.tail is not None,
        "units_per_call": args.units_per_call,
        "build_s": build_s,
        "extract_s": extract_s,
        "run_s": run_s,
        "seconds": seconds,
        "pairs": len(units) * len(images),
        "pairs_per_s": len(units) * len(images) / seconds,
        "run_flops": flops,
        "run_gflops": flops / run_s / 1e9,
    }


@torch.no_grad()
def bench_naive(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    units: list[int],
    batch: int,
    unit_dim: int = 1,
) -> tuple[torch.Tensor, float]:
    """Logits (U, N, K) of a full forward per unit with a hook zeroing it (along `unit_dim`:
    every position, every token), and the seconds."""
    module = dict(model.named_modules())[layer]
    logits = torch.empty(len(units), len(images), NUM_CLASSES)
    started = time.perf_counter()
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
    attributions: torch.Tensor,
    batch: int,
) -> dict[str, int | float]:
    """Disagreements of engine and Captum with naive top-1 on the subset, and how many are ties.

    A tie is a pair whose naive top-2 logits differ by less than 1e-4 * max(1, |top logit|).
    The largest logit change an ablation causes and the number of distinct predicted classes
    show that agreement is not trivial.
    """
    engine_logits = torch.cat(
        [engine.logits(maps[rows], units) for rows in chunks(len(maps), batch)], dim=1
    )
    baseline = torch.cat([engine.baseline_logits(maps[rows]) for rows in chunks(len(maps), batch)])
    naive_top = naive.argmax(-1)
    tolerance = 1e-4 * naive.abs().amax(-1).clamp(min=1.0)
    ties = top2_gap(naive) < tolerance
    engine_wrong = engine_logits.argmax(-1) != naive_top
    naive_correct = (naive_top == labels).float()
    captum_correct = (baseline.argmax(-1) == labels).float() - attributions
    captum_wrong = captum_correct != naive_correct
    return {
        "engine_disagreements": int(engine_wrong.sum()),
        "engine_disagreements_at_ties": int((engine_wrong & ties).sum()),
        "engine_max_abs_logit_diff": float((engine_logits - naive).abs().max()),
        "ablation_max_abs_logit_change": float((naive - baseline).abs().max()),
        "distinct_naive_predictions": int(naive_top.unique().numel()),
        "captum_disagreements": int(captum_wrong.sum()),
        "captum_disagreements_at_ties": int((captum_wrong & ties).sum()),
        "pairs_checked": int(naive_top.numel()),
    }


def subset(channels: int, count: int) -> list[int]:
    """`count` units spread evenly over the layer's channels."""
    count = max(1, min(count, channels))
    return sorted({int(u) for u in np.linspace(0, channels - 1, count).round()})


def bench_model(name: str, args: argparse.Namespace) -> dict[str, object]:
    """All three methods on one model; returns a row of the table."""
    layer, channels, layer_name, unit_dim = LAYERS[name]
    model = build(name, args.seed)
    dataset = RandomImages(args.images, args.seed)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))], dtype=torch.int64)
    units = subset(channels, args.naive_units)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection, untimed
        model(images[: min(2, len(images))])
    engine = bench_engine(model, layer, images, labels, args, unit_dim)
    if engine["maps"].shape[unit_dim] != channels:
        found = engine["maps"].shape[unit_dim]
        raise RuntimeError(f"{name} {layer} has {found} units, not {channels}")
    naive, naive_s = bench_naive(model, layer, images, units, args.batch_size, unit_dim)
    attributions, captum_groups, captum_s = bench_captum(
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
    checks = check_predictions(
        engine["engine"], engine["maps"], labels, units, naive, attributions, args.batch_size
    )
    counted = engine["counts"].correct[units].sum(1)
    naive_pairs = len(units) * len(images)
    captum_pairs = captum_groups * len(images)
    row = {
        "model": name,
        "layer": f"{layer} ({layer_name})",
        "units": channels,
        "images": len(images),
        "subset_units": len(units),
        "method": engine["method"],
        "describe": engine["describe"],
        "replays_suffix": engine["replays_suffix"],
        "units_per_call": engine["units_per_call"],
        "engine_build_s": engine["build_s"],
        "engine_extract_s": engine["extract_s"],
        "engine_run_s": engine["run_s"],
        "engine_s": engine["seconds"],
        "engine_pairs_per_s": engine["pairs_per_s"],
        "engine_run_flops": engine["run_flops"],
        "engine_run_gflops": engine["run_gflops"],
        "naive_s": naive_s,
        "naive_pairs_per_s": naive_pairs / naive_s,
        "captum_s": captum_s,
        "captum_evaluations": captum_pairs,
        "captum_pairs_per_s": captum_pairs / captum_s,
        "speedup_vs_naive": engine["pairs_per_s"] / (naive_pairs / naive_s),
        "speedup_vs_captum": engine["pairs_per_s"] / (captum_pairs / captum_s),
        "engine_counts_match_naive": bool(
            np.array_equal(counted, (naive.argmax(-1) == labels).sum(1).numpy())
        ),
        **checks,
    }
    del engine, naive, attributions, model
    return row


def aggregate_gflops(rows: list[dict[str, object]]) -> float:
    """Counted FLOPs of engine.run over timed engine.run seconds, summed over `rows`."""
    flops = sum(row["engine_run_flops"] for row in rows)
    return flops / sum(row["engine_run_s"] for row in rows) / 1e9


def matmul_gflops(size: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of a size x size matmul over `repeats` timed runs (after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    torch.matmul(left, right)
    best = min(timed(lambda: torch.matmul(left, right))[1] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def rss_child(args: argparse.Namespace) -> None:
    """Subprocess body: streaming extraction to HDF5 then engine.run; prints peak RSS as JSON."""
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
    ("units_per_call", "upc"),
    ("engine_extract_s", "extract s"),
    ("engine_run_s", "run s"),
    ("engine_pairs_per_s", "engine pairs/s"),
    ("subset_units", "subset"),
    ("naive_pairs_per_s", "naive pairs/s"),
    ("captum_pairs_per_s", "captum pairs/s"),
    ("speedup_vs_naive", "x naive"),
    ("speedup_vs_captum", "x captum"),
    ("disagree", "disagree eng/cap (ties)"),
    ("logit_check", "|eng-naive| / |ablation effect|"),
]


def main() -> None:
    """Run the benchmark, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="N, images per model")
    parser.add_argument("--naive-units", type=int, default=8, help="unit subset for naive/Captum")
    parser.add_argument("--models", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward")
    parser.add_argument("--units-per-call", type=int, default=32, help="engine units per call")
    parser.add_argument("--perturbations", type=int, default=4, help="Captum perturbations/eval")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--rss-model", choices=list(LAYERS), default="resnet50")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "results" / "benchmarks" / "ablation.json"
    )
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = hardware(torch.get_num_threads(), ("torchvision", "timm", "captum"))
    print(
        f"# {info['date']}  {info['cpu']}, {info['logical_cores']} logical / "
        f"{info['physical_cores']} physical cores, {info['memory_gb']} GB, "
        f"load {info['load_average_at_start']}"
    )
    print(
        f"# python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"timm {info['timm']}, captum {info['captum']}, numpy {info['numpy']}, "
        f"{info['threads']} torch threads"
    )
    print(
        f"# N={args.images} random 224x224 images, random weights; naive and Captum on "
        f"{args.naive_units} evenly spaced units; batch {args.batch_size}; "
        f"Captum perturbations_per_eval {args.perturbations}"
    )
    rows = []
    for name in args.models:
        row = bench_model(name, args)
        row["disagree"] = (
            f"{row['engine_disagreements']}/{row['captum_disagreements']} "
            f"({row['engine_disagreements_at_ties']}/{row['captum_disagreements_at_ties']})"
        )
        row["logit_check"] = (
            f"{row['engine_max_abs_logit_diff']:.1e} / {row['ablation_max_abs_logit_change']:.1e}"
        )
        rows.append(row)
        print(
            f"#   {name}: {row['describe']}; engine {row['engine_s']:.2f} s, "
            f"naive {row['naive_s']:.2f} s, captum {row['captum_s']:.2f} s",
            flush=True,
        )
    print()
    print_table(rows, COLUMNS)
    print()
    matmul = matmul_gflops(args.matmul_size, 5)
    replaying = [row for row in rows if row["replays_suffix"]] or rows
    engine_gflops = aggregate_gflops(replaying)
    engine_gflops_all = aggregate_gflops(rows)
    for row in rows:
        print(
            f"engine GFLOP/s {row['model']}: {row['engine_run_gflops']:.1f} "
            f"({row['engine_run_flops'] / 1e9:.2f} GFLOP in {row['engine_run_s']:.2f} s of run"
            f"{'' if row['replays_suffix'] else '; closed form, no suffix replay'})"
        )
    print(
        f"engine GFLOP/s, suffix replay ({', '.join(row['model'] for row in replaying)}): "
        f"{engine_gflops:.1f}; all models: {engine_gflops_all:.1f}"
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
    targets: dict[str, dict[str, object]] = {}
    for row in rows:
        if row["model"] in SPEEDUP_TARGETS:
            goal = SPEEDUP_TARGETS[row["model"]]
            targets[f"speedup_vs_naive {row['model']}"] = {
                "value": row["speedup_vs_naive"],
                "target": f">= {goal:g}",
                "met": row["speedup_vs_naive"] >= goal,
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
    print()
    for key, target in targets.items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {key}: {target['value']:.4g} (want {target['target']}) {verdict}")
    total = time.perf_counter() - started
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"total {total:.0f} s; load average at end {info['load_average_at_end']}")
    report = {
        "hardware": info,
        "settings": {
            key: value
            for key, value in vars(args).items()
            if key not in ("json", "rss_child", "skip_rss")
        },
        "speedup_vs_naive": {row["model"]: row["speedup_vs_naive"] for row in rows},
        "speedup_vs_captum": {row["model"]: row["speedup_vs_captum"] for row in rows},
        "engine_gflops": engine_gflops,
        "engine_gflops_all_models": engine_gflops_all,
        "engine_gflops_models": [row["model"] for row in replaying],
        "engine_gflops_per_model": {row["model"]: row["engine_run_gflops"] for row in rows},
        "matmul_gflops": matmul,
        "rss_ratio_8x": rss_ratio,
        "rss": {"model": args.rss_model, "runs": rss},
        "models": {row["model"]: row for row in rows},
        "targets": targets,
        "total_s": total,
    }
    write_report(args.json, report)


if __name__ == "__main__":
    main()
