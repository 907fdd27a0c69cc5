"""Concept IoU throughput: unitablation.concepts against a per-image, per-unit loop, on CPU.

Writes the generated world's concept set (WorldSpec(concept_images=N), 64 x 64 images, 32 x 32
segmentations) to a temporary directory, draws seeded random non-negative maps (ReLU of a
spatially smoothed Gaussian) for U units at h x w, and times, end to end from the Broden directory
(label decoding, thresholds and counting), both sides counting by the same rule, the default
`concepts.counting: netdissect` (the original NetDissect's: every mask layer holding a label is
one occurrence, A over the images where the label's primary category is present):

- ours: unitablation.concepts.concept_iou(counting="netdissect");
- loop: NetDissect-Lite's tally loop written here, with the original NetDissect's A:
  thresholds by numpy.quantile per unit, then for every image its stacked label layers (all
  categories) and image-level labels, and for every unit with max > T_u its map upsampled on its
  own with F.interpolate, thresholded, and the label occurrences under the mask counted with
  one bincount.

Both run over ALL units and images (no extrapolation); the IoUs must be identical. Throughput is
(unit, image) pairs per second. Prints a table and writes the figures as JSON.

    python benchmarks/concepts.py [--units 256] [--images 500] [--map-size 8] [--threads 2]
        [--json results/benchmarks/concepts.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from reporting import hardware, print_table, timed, write_report

from unitablation.broden import Broden, read_broden
from unitablation.concepts import EPSILON, concept_iou, concept_labels
from unitablation.world import WorldSpec
from unitablation.world_export import write_concept_set

ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET = 20.0


def random_maps(images: int, units: int, size: int, seed: int) -> np.ndarray:
    """Seeded non-negative (images, units, size, size) float32 maps, smooth like conv features."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.standard_normal((images, units, size, size), dtype=np.float32))
    kernel = torch.ones(units, 1, 3, 3) / 9.0
    smooth = F.conv2d(noise, kernel, padding=1, groups=units) * 3.0
    return torch.relu(smooth).numpy()


@dataclass
class LoopLabels:
    """The loop's labels: per image its size, present categories, layers and image-level labels."""

    numbers: list[int]
    category_columns: np.ndarray  # (L,) primary category index of each label column
    images: list[tuple[tuple[int, int], list[int], np.ndarray, list[int]]]
    truth: np.ndarray  # (L,) G_c, occurrences


def loop_labels(broden: Broden) -> LoopLabels:
    """Per image, what NetDissect reads: every layer of every category, image-level labels apart.

    Layers hold column + 1 (0: unlabelled or not a concept), so one bincount counts them.
    """
    numbers = sorted(n for n, cat in broden.category_of_label.items() if cat in broden.categories)
    lookup = np.zeros(max(broden.category_of_label, default=0) + 1, dtype=np.int64)
    lookup[numbers] = np.arange(1, len(numbers) + 1)
    category_columns = np.array(
        [broden.categories.index(broden.category_of_label[n]) for n in numbers]
    )
    truth = np.zeros(len(numbers) + 1, dtype=np.int64)
    images = []
    for i, record in enumerate(broden.records):
        layers, scalars = [], []
        for category, stack in broden.load_labels(i).items():
            if category not in broden.categories:
                continue
            if category in broden.image_level(i):
                scalars += [int(lookup[n]) - 1 for n in stack[:, 0, 0] if lookup[n]]
            else:
                layers.append(lookup[stack])
        pixels = np.concatenate(layers) if layers else np.zeros((0, record.sh, record.sw), int)
        truth += np.bincount(pixels.ravel(), minlength=len(truth))
        for column in scalars:
            truth[column + 1] += record.sh * record.sw
        present = set(np.unique(pixels[pixels > 0]) - 1) | set(scalars)
        categories = sorted({int(category_columns[c]) for c in present})
        images.append(((record.sh, record.sw), categories, pixels, scalars))
    return LoopLabels(numbers, category_columns, images, truth[1:])


def loop_iou(maps: np.ndarray, labels: LoopLabels, quantile: float, skip: bool) -> np.ndarray:
    """Per-unit thresholds, then per image, per unit: upsample, threshold, count occurrences.

    With `skip`, maps whose max is <= T_u are not upsampled (NetDissect-Lite's shortcut).
    """
    n_images, n_units = maps.shape[:2]
    thresholds = np.array(
        [np.quantile(maps[:, u].astype(np.float64), 1 - quantile) for u in range(n_units)]
    )
    size = len(labels.numbers) + 1
    both = np.zeros((n_units, size), dtype=np.int64)
    units_cat = np.zeros((n_units, int(labels.category_columns.max()) + 1), dtype=np.int64)
    for i in range(n_images):
        shape, present, pixels, scalars = labels.images[i]
        for u in range(n_units):
            feature = maps[i, u]
            if skip and feature.max() <= thresholds[u]:
                continue
            up = F.interpolate(
                torch.from_numpy(feature)[None, None],
                size=shape,
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            mask = up > thresholds[u]
            area = np.count_nonzero(mask)
            units_cat[u, present] += area
            both[u] += np.bincount(pixels[:, mask].ravel(), minlength=size)
            for column in scalars:
                both[u, column + 1] += area
    both = both[:, 1:]
    area = units_cat[:, labels.category_columns] + labels.truth[None, :]
    return both / (area - both + EPSILON)


COLUMNS = [
    ("method", "method"),
    ("units", "units"),
    ("images", "images"),
    ("labels_s", "labels s"),
    ("count_s", "count s"),
    ("pairs_per_s", "unit*img/s"),
    ("speedup", "ours x (count)"),
    ("speedup_end_to_end", "ours x (labels+count)"),
    ("max_abs_iou_diff", "max |IoU diff|"),
]


def main() -> None:
    """Run the benchmark, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--images", type=int, default=500, help="concept images")
    parser.add_argument("--map-size", type=int, default=8, help="h = w of the unit maps")
    parser.add_argument("--quantile", type=float, default=0.005)
    parser.add_argument("--unit-block", type=int, default=64)
    parser.add_argument("--image-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "results" / "benchmarks" / "concepts.json"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = hardware(torch.get_num_threads())
    spec = WorldSpec(concept_images=args.images, seed=args.seed)
    print(
        f"# {info['date']}  {info['cpu']}, {info['logical_cores']} logical / "
        f"{info['physical_cores']} physical cores, {info['memory_gb']} GB, "
        f"load {info['load_average_at_start']}"
    )
    print(
        f"# python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, "
        f"{info['threads']} torch threads"
    )
    print(
        f"# world concept set: {args.images} images {spec.image_size}x{spec.image_size}, "
        f"seg {spec.seg_size}x{spec.seg_size}; {args.units} units of random non-negative "
        f"{args.map_size}x{args.map_size} maps; quantile {args.quantile}; unit block "
        f"{args.unit_block}, image batch {args.image_batch}; both sides count by "
        f"concepts.counting 'netdissect'; all units and images, no "
        f"extrapolation; 'labels s' decodes the label PNGs (once, shared by all layers), "
        f"'count s' is thresholds + upsampling + counting"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "concepts"
        write_concept_set(root, spec)
        broden = read_broden(root)
        maps = random_maps(args.images, args.units, args.map_size, args.seed)

        def read(units: slice) -> np.ndarray:
            """The maps of a block of units (already in memory)."""
            return maps[:, units]

        labels, labels_s = timed(lambda: concept_labels(broden))
        ours_runs = []
        for _ in range(args.repeats):
            result, seconds = timed(
                lambda: concept_iou(
                    read,
                    args.units,
                    labels,
                    quantile=args.quantile,
                    unit_block=args.unit_block,
                    image_batch=args.image_batch,
                    counting="netdissect",
                )
            )
            ours_runs.append(seconds)
        prepared, loop_labels_s = timed(lambda: loop_labels(broden))
        plain, plain_s = timed(lambda: loop_iou(maps, prepared, args.quantile, skip=False))
        skipping, skip_s = timed(lambda: loop_iou(maps, prepared, args.quantile, skip=True))
    ours_s = min(ours_runs)
    pairs = args.units * args.images
    rows = []
    for method, iou, decode_s, count_s in (
        ("ours (netdissect)", result.iou, labels_s, ours_s),
        ("loop (netdissect)", plain, loop_labels_s, plain_s),
        ("loop (netdissect), max<=T skip", skipping, loop_labels_s, skip_s),
    ):
        rows.append(
            {
                "method": method,
                "units": args.units,
                "images": args.images,
                "labels_s": decode_s,
                "count_s": count_s,
                "pairs_per_s": pairs / count_s,
                "speedup": count_s / ours_s,
                "speedup_end_to_end": (decode_s + count_s) / (labels_s + ours_s),
                "max_abs_iou_diff": float(np.abs(result.iou - iou).max()),
                "identical": bool(np.array_equal(result.iou, iou)),
            }
        )
    print()
    print_table(rows, COLUMNS)
    print()
    detectors = int(result.table()["is_detector"].sum())
    identical = all(row["identical"] for row in rows)
    print(
        f"ours count runs (s): {', '.join(f'{t:.3f}' for t in ours_runs)}; identical IoUs: "
        f"{identical}; labels {len(result.label_numbers)}; detectors (IoU >= 0.04) {detectors}"
    )
    speedup = rows[1]["speedup"]
    met = speedup >= SPEEDUP_TARGET
    print(
        f"target speedup_vs_loop (count): {speedup:.4g} (want >= {SPEEDUP_TARGET:g}) "
        f"{'met' if met else 'MISSED'}"
    )
    total = time.perf_counter() - started
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"total {total:.0f} s; load average at end {info['load_average_at_end']}")
    report = {
        "hardware": info,
        "settings": {key: value for key, value in vars(args).items() if key != "json"},
        "speedup_vs_loop": speedup,
        "speedup_vs_loop_skip": rows[2]["speedup"],
        "speedup_vs_loop_end_to_end": rows[1]["speedup_end_to_end"],
        "speedup_vs_loop_skip_end_to_end": rows[2]["speedup_end_to_end"],
        "identical_iou": identical,
        "ours_count_runs_s": ours_runs,
        "rows": rows,
        "targets": {
            "speedup_vs_loop": {"value": speedup, "target": f">= {SPEEDUP_TARGET:g}", "met": met},
            "identical_iou": {"value": identical, "target": "True", "met": identical},
        },
        "total_s": total,
    }
    write_report(args.json, report)
    if not identical:
        raise SystemExit("IoUs differ between the implementation and the loops")


if __name__ == "__main__":
    main()
