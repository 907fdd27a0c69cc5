"""Concept IoU throughput and memory: unitablation.concepts against per-image, per-unit loops.

Writes the generated world's concept set (WorldSpec(concept_images=N), 64 x 64 images, 32 x 32
segmentations) to a temporary directory and draws seeded random non-negative maps (ReLU of a
spatially smoothed Gaussian) for U units at h x w. Speed: the label files are read once into
memory (`read s`, shared by both sides and in neither's time); then ours and two loops, all
counting by the default `concepts.counting: netdissect` (every mask layer holding a label is one
occurrence, A over the images where the label's primary category is present), run `--repeats`
times interleaved on the same data, each timed from the read label arrays to the IoU matrix:

- ours: unitablation.concepts.concept_iou(counting="netdissect") (decodes the labels itself);
- loop, max<=T skip: NetDissect-Lite's loop written here: thresholds by numpy.quantile per unit,
  then for every image its stacked label layers (all categories, image-level labels apart) and,
  for every unit whose map max is > T_u (NetDissect-Lite's shortcut: otherwise the mask is
  empty), its map upsampled on its own with F.interpolate, thresholded, and the label
  occurrences under the mask counted with one bincount;
- loop: the same without the shortcut (every map upsampled).

All units and images (no extrapolation); the IoUs must be identical. Speedups are ratios of the
medians. Memory: a fresh interpreter per size runs concept_iou streamed from an activation store
(`store_reader`) on N and on 8N concept images and reports its peak RSS (VmHWM).

    python benchmarks/concepts.py [--units 256] [--images 500] [--map-size 8] [--threads 2]
        [--repeats 3] [--json benchmarks/measured/concepts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reporting import (
    hardware,
    load_average,
    peak_rss_mb,
    print_table,
    proc_status_mb,
    run_json_child,
    timed,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET = 20.0
MEMORY_TARGET = 1.25
GROWTH = 8
#: The files whose uncommitted changes would make a report's figures differ from the commit's.
MEASURED_CODE = (
    "benchmarks/concepts.py",
    "workflow/unitablation/broden.py",
    "workflow/unitablation/concepts.py",
    "workflow/unitablation/masks.py",
)


def random_maps(images: int, units: int, size: int, seed: int) -> Any:
    """Seeded non-negative (images, units, size, size) float32 maps, smooth like conv features."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.standard_normal((images, units, size, size), dtype=np.float32))
    kernel = torch.ones(units, 1, 3, 3) / 9.0
    smooth = F.conv2d(noise, kernel, padding=1, groups=units) * 3.0
    return torch.relu(smooth).numpy()


def preloaded(broden: Any) -> Any:
    """The Broden set with every image's label arrays read once into memory (for timing)."""
    from unitablation.broden import Broden

    stacks = [broden.load_labels(i) for i in range(len(broden.records))]

    class Preloaded(Broden):
        """A Broden whose load_labels returns the arrays read beforehand."""

        def __init__(self) -> None:
            self.__dict__.update(broden.__dict__)

        def load_labels(self, i: int) -> dict:
            """The label arrays of image i, read beforehand."""
            return stacks[i]

    return Preloaded()


def loop_labels(broden: Any) -> tuple[list[int], Any, list[tuple], Any]:
    """Per image, what NetDissect reads: every layer of every category, image-level labels apart.

    Layers hold column + 1 (0: unlabelled or not a concept), so one bincount counts them.
    Returns the label numbers, their primary categories, per image (size, present categories,
    layers, image-level columns), and G.
    """
    import numpy as np

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
    return numbers, category_columns, images, truth[1:]


def loop_iou(maps: Any, broden: Any, quantile: float, skip: bool) -> Any:
    """Labels as NetDissect reads them, per-unit thresholds, then per image, per unit: upsample,
    threshold, count occurrences. With `skip`, maps whose max is <= T_u are not upsampled."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from unitablation.concepts import EPSILON

    numbers, category_columns, images, truth = loop_labels(broden)
    n_images, n_units = maps.shape[:2]
    thresholds = np.array(
        [np.quantile(maps[:, u].astype(np.float64), 1 - quantile) for u in range(n_units)]
    )
    size = len(numbers) + 1
    both = np.zeros((n_units, size), dtype=np.int64)
    units_cat = np.zeros((n_units, int(category_columns.max()) + 1), dtype=np.int64)
    for i in range(n_images):
        shape, present, pixels, scalars = images[i]
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
    area = units_cat[:, category_columns] + truth[None, :]
    return both / (area - both + EPSILON)


def memory_child(root: Path, store: Path, units: int) -> None:
    """In a fresh interpreter: concept_iou streamed from the store; print peak RSS as JSON."""
    import torch

    from unitablation.broden import read_broden
    from unitablation.concepts import concept_iou, store_reader
    from unitablation.store import ActivationStore

    torch.set_num_threads(1)
    broden = read_broden(root)
    baseline = proc_status_mb("VmRSS")
    started = time.perf_counter()
    with ActivationStore(store) as handle:
        result = concept_iou(store_reader(handle, "conv", broden), units, broden)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "images": len(broden.records),
                "units": units,
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak_rss_mb(),
                "seconds": seconds,
                "detectors": int((result.best()[1] >= 0.04).sum()),
            }
        )
    )


def write_store(path: Path, maps: Any, paths: list[str]) -> None:
    """A one-layer activation store ('conv') holding the maps, chunked by image."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.attrs["layers"] = '["conv"]'
        f.attrs["classes"] = "[]"
        f.create_dataset("labels", data=np.full(len(maps), -1, dtype=np.int64))
        f.create_dataset("logits", data=np.zeros((len(maps), 2), dtype=np.float32))
        f.create_dataset("paths", data=np.array(paths, dtype=h5py.string_dtype()))
        group = f.create_group("layers").create_group("conv")
        group.create_dataset("maps", data=maps, chunks=(16, *maps.shape[1:]))
        group.create_dataset("mean", data=maps.mean(axis=(2, 3)))
        group.create_dataset("max", data=maps.max(axis=(2, 3)))


def measure_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Peak RSS of concept_iou streamed from a store at N and GROWTH * N images (fresh children)."""
    from unitablation.broden import read_broden
    from unitablation.world import WorldSpec
    from unitablation.world_export import write_concept_set

    runs = []
    for images in (args.images, GROWTH * args.images):
        root, store = tmp / f"memory{images}", tmp / f"memory{images}.h5"
        write_concept_set(root, WorldSpec(concept_images=images, seed=args.seed))
        paths = [record.image for record in read_broden(root).records]
        write_store(store, random_maps(images, args.units, args.map_size, args.seed), paths)
        command = [sys.executable, __file__, "--memory-child", str(root), str(store)]
        found, _ = run_json_child(command + ["--units", str(args.units)], f"{images} images")
        runs.append(found)
        print(
            f"memory: {images} images, {args.units} units: peak RSS {found['peak_rss_mb']:.0f} "
            f"MB (after imports {found['baseline_rss_mb']:.0f} MB), {found['seconds']:.1f} s"
        )
    small, large = runs
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    growth = (large["peak_rss_mb"] - large["baseline_rss_mb"]) / max(
        small["peak_rss_mb"] - small["baseline_rss_mb"], 1e-9
    )
    return {"runs": runs, "peak_ratio": ratio, "above_imports_ratio": growth, "growth": GROWTH}


def measure_speed(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Ours and both loops, interleaved `repeats` times on the same maps and label arrays."""
    import numpy as np

    from unitablation.broden import read_broden
    from unitablation.concepts import concept_iou
    from unitablation.world import WorldSpec
    from unitablation.world_export import write_concept_set

    root = tmp / "concepts"
    write_concept_set(root, WorldSpec(concept_images=args.images, seed=args.seed))
    broden, read_s = timed(lambda: preloaded(read_broden(root)))
    maps = random_maps(args.images, args.units, args.map_size, args.seed)

    def ours() -> Any:
        """The library's IoU matrix from the label arrays."""
        return concept_iou(
            lambda units: maps[:, units],
            args.units,
            broden,
            quantile=args.quantile,
            unit_block=args.unit_block,
            image_batch=args.image_batch,
            counting="netdissect",
        ).iou

    reaching = reaching_maps(maps, args.quantile)
    segmentation = (broden.records[0].sh, broden.records[0].sw)
    methods = {
        "ours": ours,
        "loop, max<=T skip": lambda: loop_iou(maps, broden, args.quantile, skip=True),
        "loop": lambda: loop_iou(maps, broden, args.quantile, skip=False),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    results: dict[str, Any] = {}
    bound_times: list[float] = []
    for repeat in range(args.repeats):
        for name, method in methods.items():
            results[name], seconds = timed(method)
            times[name].append(seconds)
            print(f"repeat {repeat + 1}: {name} {seconds:.3f} s", flush=True)
        _, seconds = timed(lambda: upsample_all(reaching, segmentation))
        bound_times.append(seconds)
        print(
            f"repeat {repeat + 1}: upsampling the reaching maps alone {seconds:.3f} s", flush=True
        )
    pairs = args.units * args.images
    reference = float(np.median(times["ours"]))
    rows = []
    for name in methods:
        median = float(np.median(times[name]))
        rows.append(
            {
                "method": name,
                "median_s": median,
                "min_s": min(times[name]),
                "runs_s": times[name],
                "pairs_per_s": pairs / median,
                "speedup_median": median / reference,
                "speedup_min": float(min(times[name]) / min(times["ours"])),
                "max_abs_iou_diff": float(np.abs(results["ours"] - results[name]).max()),
                "identical": bool(np.array_equal(results["ours"], results[name])),
            }
        )
    bound = float(np.median(bound_times))
    return {
        "read_labels_s": read_s,
        "rows": rows,
        "upsampling_bound": {
            "reaching_maps": len(reaching),
            "median_s": bound,
            "min_s": min(bound_times),
            "runs_s": bound_times,
            "skip_loop_over_bound": float(np.median(times["loop, max<=T skip"])) / bound,
        },
    }


def reaching_maps(maps: Any, quantile: float) -> Any:
    """(P, 1, h, w) tensor of the maps whose max exceeds T_u (numpy.quantile, float64)."""
    import numpy as np
    import torch

    values = maps.transpose(1, 0, 2, 3).reshape(maps.shape[1], -1).astype(np.float64)
    thresholds = np.quantile(values, 1 - quantile, axis=1)
    image, unit = np.nonzero(maps.max(axis=(2, 3)) > thresholds[None, :])
    return torch.from_numpy(np.ascontiguousarray(maps[image, unit][:, None]))


def upsample_all(chosen: Any, size: tuple[int, int]) -> None:
    """F.interpolate of every chosen map, 1,024 at a time, as ours batches them.

    The mask is defined by that call's output, so an exact method that upsamples each map whose
    max exceeds T_u spends at least this long; the skip loop's time over it bounds its speedup.
    """
    import torch.nn.functional as F

    for start in range(0, len(chosen), 1024):
        F.interpolate(chosen[start : start + 1024], size=size, mode="bilinear", align_corners=False)


COLUMNS = [
    ("method", "method"),
    ("median_s", "median s"),
    ("min_s", "min s"),
    ("pairs_per_s", "unit*img/s"),
    ("speedup_median", "ours x (median)"),
    ("speedup_min", "ours x (min)"),
    ("identical", "identical IoU"),
]


def main() -> None:
    """Run the benchmark, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--images", type=int, default=500, help="concept images")
    parser.add_argument("--map-size", type=int, default=8, help="h = w of the unit maps")
    parser.add_argument("--quantile", type=float, default=0.005)
    parser.add_argument("--unit-block", type=int, default=64)
    parser.add_argument("--image-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak RSS runs")
    parser.add_argument("--memory-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "measured" / "concepts.json"
    )
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.units)
        return
    import torch

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = hardware(torch.get_num_threads())
    print(
        f"# {info['date']} commit {info['git']['commit'][:12]}  {info['cpu']}, "
        f"{info['logical_cores']} logical / {info['physical_cores']} physical cores, "
        f"{info['memory_gb']} GB, load {info['load_average_at_start']}"
    )
    print(f"# python {info['python']}, torch {info['torch']}, {info['threads']} torch threads")
    with tempfile.TemporaryDirectory() as folder:
        speed = measure_speed(args, Path(folder))
        memory = None if args.no_memory else measure_memory(args, Path(folder))
    print()
    print_table(speed["rows"], COLUMNS)
    identical = all(row["identical"] for row in speed["rows"])
    skip, plain = speed["rows"][1]["speedup_median"], speed["rows"][2]["speedup_median"]
    print(
        f"label files read once: {speed['read_labels_s']:.2f} s (in neither side's time); "
        f"target x skip loop (median) {skip:.3g} (want >= {SPEEDUP_TARGET:g}) "
        f"{'met' if skip >= SPEEDUP_TARGET else 'MISSED'}; x plain loop {plain:.3g}"
    )
    if memory is not None:
        print(
            f"peak RSS at {GROWTH}N / N images: {memory['peak_ratio']:.3f} (want <= "
            f"{MEMORY_TARGET:g}); above the imports: {memory['above_imports_ratio']:.3f}"
        )
    after = load_average()
    total = time.perf_counter() - started
    print(
        f"total {total:.0f} s; load average before {info['load_average_at_start']}, after {after}"
    )
    report = {
        "hardware": info,
        "git": info["git"],
        "args": {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()},
        "load_average_before": info["load_average_at_start"],
        "load_average_after": after,
        "speed": speed,
        "memory": memory,
        "identical_iou": identical,
        "speedup_vs_loop_skip_median": skip,
        "speedup_vs_loop_median": plain,
        "targets": {
            "speedup_vs_loop_skip_median": {
                "value": skip,
                "target": f">= {SPEEDUP_TARGET:g}",
                "met": bool(skip >= SPEEDUP_TARGET),
            },
            "peak_rss_ratio": {
                "value": None if memory is None else memory["peak_ratio"],
                "target": f"<= {MEMORY_TARGET:g}",
                "met": bool(memory is not None and memory["peak_ratio"] <= MEMORY_TARGET),
            },
            "identical_iou": {"value": bool(identical), "target": "True", "met": bool(identical)},
        },
        "total_s": total,
    }
    write_report(args.json, report)
    if not identical:
        raise SystemExit("IoUs differ between the implementation and the loops")


def figure(value: float) -> str:
    """A measured figure for the docs: 3 significant digits, thousands separated."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def docs_tables(report: dict) -> dict[str, str]:
    """The docs' blocks of a report: `speed` (provenance, table) and `memory` (peak RSS)."""
    info, args, git = report["hardware"], report["args"], report["git"]
    before = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    after = ", ".join(f"{x:.2f}" for x in report["load_average_after"])
    dirty = [path for path in git["dirty_paths"] if path in MEASURED_CODE]
    code = (
        f"with uncommitted changes to {', '.join(f'`{path}`' for path in dirty)}"
        if dirty
        else "measured code as committed"
    )
    busy = (
        "; more runnable processes than cores, so absolute times are far above an idle "
        "machine's and the ratios are uncertain"
        if max(report["load_average_before"][0], report["load_average_after"][0])
        > info["logical_cores"]
        else ""
    )
    provenance = [
        f"- Measured {info['date']} at commit `{git['commit'][:12]}` ({code}).",
        f"- Machine: {info['cpu']}, {info['logical_cores']} logical / {info['physical_cores']} "
        f"physical cores, {info['memory_gb']} GB; {info['threads']} torch threads; python "
        f"{info['python']}, torch {info['torch']}, numpy {info['numpy']}.",
        f"- Load average (1, 5, 15 min): {before} before the run, {after} after it "
        f"({report['total_s']:.0f} s){busy}.",
        f"- World concept set of {args['images']} images (32 x 32 segmentations), "
        f"{args['units']} units of random {args['map_size']} x {args['map_size']} maps, "
        f"quantile {args['quantile']}, counting `netdissect`; {args['repeats']} interleaved "
        f"repeats per side from label arrays already read (reading the files took "
        f"{report['speed']['read_labels_s']:.2f} s, in neither side's time).",
    ]
    lines = [
        "| method | median s | min s | unit x image pairs/s | ours x (median) | identical IoU |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["speed"]["rows"]:
        lines.append(
            f"| {row['method']} | {figure(row['median_s'])} | {figure(row['min_s'])} | "
            f"{figure(row['pairs_per_s'])} | **{figure(row['speedup_median'])}** | "
            f"{'yes' if row['identical'] else '**no**'} |"
        )
    target = report["targets"]["speedup_vs_loop_skip_median"]
    lines += [
        "",
        f"Target x skip loop (median) >= {SPEEDUP_TARGET:g}: "
        f"{'met' if target['met'] else '**missed**'} ({figure(target['value'])}).",
    ]
    bound = report["speed"].get("upsampling_bound")
    if bound:
        lines += [
            "",
            f"Upsampling alone: F.interpolate of the {bound['reaching_maps']:,} maps whose max "
            f"exceeds T_u, in batches of 1,024 and nothing else, took "
            f"{figure(bound['median_s'])} s (median; min {figure(bound['min_s'])} s). The mask "
            f"is defined by that call's output, so a method that upsamples every such map cannot "
            f"beat the skip loop by more than x {figure(bound['skip_loop_over_bound'])} here"
            + (
                f", below the {SPEEDUP_TARGET:g} x target."
                if bound["skip_loop_over_bound"] < SPEEDUP_TARGET
                else "."
            ),
        ]
    blocks = {"speed": "\n".join([*provenance, "", *lines])}
    memory = report.get("memory")
    if memory:
        table = [
            "| concept images | units | peak RSS MB | RSS after imports MB | seconds |",
            "| --- | --- | --- | --- | --- |",
        ]
        for run in memory["runs"]:
            table.append(
                f"| {run['images']} | {run['units']} | {figure(run['peak_rss_mb'])} | "
                f"{figure(run['baseline_rss_mb'])} | {figure(run['seconds'])} |"
            )
        table += [
            "",
            f"Peak RSS at {memory['growth']} x the images: x {memory['peak_ratio']:.3f} "
            f"(target <= {MEMORY_TARGET:g}); above the imports: "
            f"x {memory['above_imports_ratio']:.3f}.",
        ]
        blocks["memory"] = "\n".join(table)
    return blocks


if __name__ == "__main__":
    main()
