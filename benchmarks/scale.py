"""Paper scale on CPU: per-item costs measured at Broden's image size, and the paper's runs
projected from them.

Measured here, in this one run:

- render: the generated world's concept set at Broden's size (WorldSpec(image_size=224): 224 x
  224 images, 112 x 112 segmentations), `--images` of them written as a Broden directory
  (unitablation.world_export.write_concept_set), seconds per image;
- concept IoU: for a `--units`-unit layer of seeded random non-negative maps (ReLU of a spatially
  smoothed Gaussian) at each of `--map-sizes`, stored through unitablation.extraction with
  `--compression`, unitablation.concepts.concept_iou streamed from the store (store_reader) over
  that concept set, in a fresh child process: seconds, seconds per (unit, image) pair, and the
  child's peak RSS (VmHWM) at all images and at half of them (streaming: it should not grow);
- extraction: torchvision AlexNet (features.11, conv5 after ReLU), VGG16 (features.29, conv5_3
  after ReLU) and ResNet-50 (layer4) with seeded random weights, one layer each, over the first
  `--extract-images` rendered images through unitablation.extraction.extract_activations (after a
  warm-up batch): images per second, and the stored maps' bytes per image with `--compression`.

Projected (every projected figure says so) from those per-item costs on this machine: each
model's extraction of ImageNet's 50,000 validation images and of Broden's 63,305 images (time,
store size), the concept IoU of each model's layer over Broden (the per-pair cost of the nearest
measured map size times units times 63,305), and the ablation of every unit of the layer over the
50,000 images from the engine's median pairs/s in benchmarks/measured/ablation.json
(benchmarks/ablation.py; "not available" without it). Projections are linear in the item counts;
they assume the measured machine and load.

    python benchmarks/scale.py [--images 1000] [--units 512] [--map-sizes 7 14]
        [--extract-images 32] [--models alexnet vgg16 resnet50] [--compression gzip]
        [--threads 2] [--json benchmarks/measured/scale.json]

Only the standard library is imported at module level (torch and the library inside functions),
so that benchmarks/docs_tables.py can call `docs_tables` cheaply.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reporting import ROOT, commit_label, peak_rss_mb, proc_status_mb

IMAGENET_VAL = 50_000
BRODEN_IMAGES = 63_305

#: Model -> (layer studied, its units, map side): the layers of benchmarks/ablation.py.
MODELS: dict[str, tuple[str, int, int]] = {
    "alexnet": ("features.11", 256, 13),
    "vgg16": ("features.29", 512, 14),
    "resnet50": ("layer4", 2048, 7),
}


def utc_now() -> str:
    """The current date and time in UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def render(root: Path, images: int) -> dict[str, Any]:
    """Write the world's concept set at Broden's size under root; seconds per image."""
    from unitablation.world import WorldSpec
    from unitablation.world_export import write_concept_set

    spec = WorldSpec(image_size=224, concept_images=images)
    started, cpu = time.perf_counter(), time.process_time()
    write_concept_set(root, spec)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "images": images,
        "image_size": spec.image_size,
        "seg_size": spec.seg_size,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "s_per_image": seconds / images,
        "cpu_s_per_image": cpu / images,
    }


def random_maps_model(units: int, size: int, seed: int) -> Any:
    """A module whose `layer` returns seeded random non-negative maps (units, size, size) for the
    image indices it is given, smooth like conv features, each row fixed by (seed, index): the
    extraction writes a store of them batch by batch, and a shorter store holds the same rows."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Maps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Identity()

        def forward(self, index: torch.Tensor) -> torch.Tensor:
            rows = []
            for k in index.tolist():
                generator = torch.Generator().manual_seed(seed * 1_000_003 + int(k))
                rows.append(torch.randn(units, size, size, generator=generator))
            kernel = torch.ones(units, 1, 3, 3) / 9.0
            smooth = F.conv2d(torch.stack(rows), kernel, padding=1, groups=units) * 3.0
            return self.layer(torch.relu(smooth)).mean(dim=(2, 3))

    return Maps()


def write_maps_store(path: Path, images: int, units: int, size: int, compression: str) -> None:
    """A store of `images` random maps (units, size, size) as layer `layer`, via extraction."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from unitablation.extraction import extract_activations

    index = torch.arange(images)
    loader = DataLoader(TensorDataset(index, torch.full((images,), -1)), batch_size=100)
    model = random_maps_model(units, size, seed=size)
    cpu = torch.device("cpu")
    extract_activations(model, ["layer"], loader, path, cpu, {}, compression=compression)


def child_concept_iou(store: str, broden_dir: str, images: int) -> dict[str, Any]:
    """In this (child) process: concept IoU of the store's first `images` rows, time and RSS."""
    from unitablation.broden import read_broden
    from unitablation.concepts import concept_iou, concept_labels, store_reader
    from unitablation.store import ActivationStore

    broden = read_broden(broden_dir)
    broden.records = broden.records[:images]  # the first rows of the concept set
    labels = concept_labels(broden)
    with ActivationStore(store) as source:
        units = int(source.layer("layer")["maps"].shape[1])
        reader = store_reader(source, "layer", broden)  # checks the store has `images` rows
        before = proc_status_mb("VmRSS")
        started, cpu = time.perf_counter(), time.process_time()
        result = concept_iou(reader, units, labels)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "images": images,
        "units": units,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "s_per_pair": seconds / (units * images),
        "cpu_s_per_pair": cpu / (units * images),
        "rss_before_mb": before,
        "peak_rss_mb": peak_rss_mb(),
        "detectors_over_0.04": int((result.iou.max(axis=1) >= 0.04).sum()),
    }


def run_child(arguments: list[str]) -> dict[str, Any]:
    """Run this script as a child (a fresh interpreter: its peak RSS is its own); its JSON."""
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {arguments} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_iou(
    root: Path, broden_dir: Path, images: int, units: int, sizes: list[int], compression: str
) -> list[dict[str, Any]]:
    """Per map size: store bytes per image, concept IoU time and peak RSS at N and N / 2."""
    import h5py

    rows = []
    for size in sizes:
        path, half_path = root / f"maps{size}.h5", root / f"maps{size}-half.h5"
        started = time.perf_counter()
        write_maps_store(path, images, units, size, compression)
        write_s = time.perf_counter() - started
        write_maps_store(half_path, max(1, images // 2), units, size, compression)
        with h5py.File(path, "r") as store:
            stored = store["layers"]["layer"]["maps"].id.get_storage_size()
        full = run_child(["--child-iou", str(path), str(broden_dir), str(images)])
        half = run_child(["--child-iou", str(half_path), str(broden_dir), str(max(1, images // 2))])
        half_path.unlink()
        rows.append(
            {
                "map_size": size,
                "units": units,
                "images": images,
                "compression": compression,
                "store_bytes_per_image": stored / images,
                "store_write_s": write_s,
                "iou": full,
                "iou_half_images": half,
            }
        )
        path.unlink()
    return rows


def build_torchvision(name: str) -> Any:
    """A torchvision model with seeded random weights (no download)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def measure_extraction(
    root: Path, broden_dir: Path, models: list[str], images: int, compression: str
) -> list[dict[str, Any]]:
    """Per model: images per second of extracting its layer, and the store's bytes per image."""
    import h5py
    import torch
    from torch.utils.data import DataLoader

    from unitablation.broden import read_broden
    from unitablation.extraction import extract_activations
    from unitablation.images import FileListSet, Preprocess

    broden = read_broden(broden_dir)
    files = [broden_dir / "images" / record.image for record in broden.records[:images]]
    preprocess = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    dataset = FileListSet(files, [-1] * len(files), preprocess)
    loader = DataLoader(dataset, batch_size=16, shuffle=False)
    cpu = torch.device("cpu")
    rows = []
    for name in models:
        layer, units, side = MODELS[name]
        model = build_torchvision(name)
        with torch.no_grad():
            model(torch.stack([dataset[0][0], dataset[1][0]]))  # warm-up
        path = root / f"{name}.h5"
        started, cpu_s = time.perf_counter(), time.process_time()
        extract_activations(model, [layer], loader, path, cpu, {}, compression=compression)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_s
        with h5py.File(path, "r") as store:
            maps = store["layers"][layer]["maps"]
            stored, shape = maps.id.get_storage_size(), [int(s) for s in maps.shape[1:]]
        if shape != [units, side, side]:
            raise RuntimeError(f"{name} {layer} maps are {shape}, expected {[units, side, side]}")
        path.unlink()
        rows.append(
            {
                "model": name,
                "layer": layer,
                "map_shape": shape,
                "images": images,
                "compression": compression,
                "seconds": seconds,
                "cpu_seconds": cpu_s,
                "images_per_s": images / seconds,
                "cpu_s_per_image": cpu_s / images,
                "store_bytes_per_image": stored / images,
                "raw_bytes_per_image": 4 * units * side * side,
            }
        )
    return rows


def ablation_rates(path: Path) -> dict[str, float]:
    """Engine median pairs/s per model from benchmarks/ablation.py's JSON; {} without it."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    rates = {}
    for name, row in (report.get("models") or {}).items():
        engine = row.get("engine") or {}
        if "pairs_per_s_median" in engine:
            rates[name] = float(engine["pairs_per_s_median"])
    return rates


def project(
    extraction: list[dict[str, Any]], iou: list[dict[str, Any]], rates: dict[str, float]
) -> list[dict[str, Any]]:
    """The paper's runs per model, projected linearly from the measured per-item costs: wall
    hours at the measured load (`_h`) and CPU core-hours (`_core_h`, process time, which the
    load inflates less)."""
    rows = []
    for row in extraction:
        name = row["model"]
        _, units, side = MODELS[name]
        nearest = min(iou, key=lambda r: abs(r["map_size"] - side)) if iou else None
        rate = rates.get(name)
        pairs_iou = units * BRODEN_IMAGES
        rows.append(
            {
                "model": name,
                "layer": row["layer"],
                "units": units,
                "imagenet_extraction_h": IMAGENET_VAL * row["seconds"] / row["images"] / 3600,
                "imagenet_extraction_core_h": IMAGENET_VAL * row["cpu_s_per_image"] / 3600,
                "imagenet_store_gb": IMAGENET_VAL * row["store_bytes_per_image"] / 1e9,
                "imagenet_ablation_h": None if rate is None else units * IMAGENET_VAL / rate / 3600,
                "ablation_pairs_per_s": rate,
                "broden_extraction_h": BRODEN_IMAGES * row["seconds"] / row["images"] / 3600,
                "broden_extraction_core_h": BRODEN_IMAGES * row["cpu_s_per_image"] / 3600,
                "broden_store_gb": BRODEN_IMAGES * row["store_bytes_per_image"] / 1e9,
                "broden_iou_h": None
                if nearest is None
                else nearest["iou"]["s_per_pair"] * pairs_iou / 3600,
                "broden_iou_core_h": (
                    None if nearest is None else nearest["iou"]["cpu_s_per_pair"] * pairs_iou / 3600
                ),
                "broden_iou_from_map_size": None if nearest is None else nearest["map_size"],
            }
        )
    return rows


def _figure(value: object, digits: int = 3) -> str:
    if value is None:
        return "not available"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(head: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_figure(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def docs_tables(report: dict[str, Any]) -> dict[str, str]:
    """Markdown blocks of a scale report by name: `setup`, `measured`, `projected`."""
    info, args = report["hardware"], report["args"]
    load = ", ".join(f"{x:.2f}" for x in report["load_average_before"])
    end = ", ".join(f"{x:.2f}" for x in report["load_average_after"])
    setup = (
        f"Measured {report['date_utc']} at commit `{report['git_commit']}` on {info['cpu']} "
        f"({info['logical_cores']} logical cores), torch threads: {args['threads']}, torch "
        f"{info['torch']}, h5py {info['h5py']} (HDF5 {info['hdf5']}); load average (1, 5, 15 "
        f"min) {load} before and {end} after; {report['total_s']:.0f} s in all. Stores written "
        f"with compression `{args['compression']}`.\n"
    )
    render_row = report["render"]
    measured = [
        [
            "render the concept set, per image (measured)",
            f"{render_row['s_per_image'] * 1e3:.3g} ms "
            f"({render_row['cpu_s_per_image'] * 1e3:.3g} ms CPU)",
            f"{render_row['images']} images of {render_row['image_size']} x "
            f"{render_row['image_size']}, segmentation {render_row['seg_size']} x "
            f"{render_row['seg_size']}",
        ]
    ]
    for row in report["concept_iou"]:
        iou, half = row["iou"], row["iou_half_images"]
        shape = f"{row['units']} x {row['map_size']} x {row['map_size']}"
        measured.append(
            [
                f"concept IoU, {shape} maps, per (unit, image) pair (measured)",
                f"{iou['s_per_pair'] * 1e6:.3g} us ({iou['cpu_s_per_pair'] * 1e6:.3g} us CPU)",
                f"{iou['seconds']:.3g} s for {iou['images']} images; peak RSS "
                f"{iou['peak_rss_mb']:.0f} MB ({half['peak_rss_mb']:.0f} MB at "
                f"{half['images']} images; {iou['rss_before_mb']:.0f} MB before the call)",
            ]
        )
        measured.append(
            [
                f"stored {shape} maps, per image (measured)",
                f"{row['store_bytes_per_image'] / 1e3:.4g} kB",
                f"raw {4 * row['units'] * row['map_size'] ** 2 / 1e3:.4g} kB",
            ]
        )
    for row in report["extraction"]:
        shape = " x ".join(str(side) for side in row["map_shape"])
        measured.append(
            [
                f"extraction, {row['model']} {row['layer']} ({shape}) (measured)",
                f"{row['images_per_s']:.3g} images/s "
                f"({row['cpu_s_per_image']:.3g} CPU s per image)",
                f"{row['images']} images; stored {row['store_bytes_per_image'] / 1e3:.4g} kB "
                f"per image (raw {row['raw_bytes_per_image'] / 1e3:.4g} kB)",
            ]
        )
    projected = [
        [
            row["model"],
            f"{row['layer']} ({row['units']} units)",
            f"{_figure(row['imagenet_extraction_h'])} h "
            f"({_figure(row['imagenet_extraction_core_h'])} core-h), "
            f"{_figure(row['imagenet_store_gb'])} GB",
            "not available"
            if row["imagenet_ablation_h"] is None
            else f"{_figure(row['imagenet_ablation_h'])} h "
            f"(at {_figure(row['ablation_pairs_per_s'])} pairs/s)",
            f"{_figure(row['broden_extraction_h'])} h ({_figure(row['broden_extraction_core_h'])}"
            f" core-h), {_figure(row['broden_store_gb'])} GB",
            "not available"
            if row["broden_iou_h"] is None
            else f"{_figure(row['broden_iou_h'])} h ({_figure(row['broden_iou_core_h'])} core-h; "
            f"per-pair cost at {row['broden_iou_from_map_size']} x "
            f"{row['broden_iou_from_map_size']})",
        ]
        for row in report["projected"]
    ]
    return {
        "setup": setup,
        "measured": _table(["what", "cost", "how"], measured),
        "projected": _table(
            [
                "model",
                "layer",
                "ImageNet val 50,000: extraction (projected)",
                "ImageNet val: ablation of every unit (projected)",
                "Broden 63,305: extraction (projected)",
                "Broden: concept IoU (projected)",
            ],
            projected,
        ),
    }


def hardware(threads: int) -> dict[str, Any]:
    """CPU, cores, memory and versions of what the figures were measured on."""
    import h5py
    import numpy as np
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }


def reproject(path: Path) -> None:
    """Redo a report's projections (arithmetic only) with the ablation rates committed now."""
    report = json.loads(path.read_text())
    rates = ablation_rates(ROOT / "benchmarks" / "measured" / "ablation.json")
    report["ablation_source"] = (
        "benchmarks/measured/ablation.json" if rates else "not available (no ablation.json)"
    )
    report["projected"] = project(report["extraction"], report["concept_iou"], rates)
    report["reprojected_utc"] = utc_now()
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(docs_tables(report)["projected"])
    print(f"rewrote the projections of {path}")


def main() -> None:
    """Measure, project, print the tables and write the JSON report."""
    if len(sys.argv) == 5 and sys.argv[1] == "--child-iou":
        sys.path.insert(0, str(ROOT / "workflow"))
        print(json.dumps(child_concept_iou(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="rendered concept images")
    parser.add_argument("--units", type=int, default=512, help="units of the IoU layer")
    parser.add_argument("--iou-images", type=int, default=300, help="first images of the IoU")
    parser.add_argument("--map-sizes", type=int, nargs="+", default=[7, 14])
    parser.add_argument("--extract-images", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--compression", default="gzip", choices=["none", "lzf", "gzip"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/measured/scale.json")
    parser.add_argument(
        "--reproject",
        action="store_true",
        help="measure nothing: redo the projections of --json from the current ablation.json",
    )
    args = parser.parse_args()
    if args.reproject:
        reproject(args.json)
        return
    if max(args.extract_images, args.iou_images) > args.images:
        parser.error("--extract-images and --iou-images cannot exceed --images (rendered)")
    import torch

    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    report: dict[str, Any] = {
        "date_utc": utc_now(),
        "git_commit": commit_label(),
        "hardware": hardware(args.threads),
        "args": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
        },
        "load_average_before": load_before,
    }
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        report["render"] = render(root / "broden", args.images)
        print(f"render: {report['render']['s_per_image'] * 1e3:.3g} ms per image", flush=True)
        report["concept_iou"] = measure_iou(
            root, root / "broden", args.iou_images, args.units, args.map_sizes, args.compression
        )
        report["extraction"] = measure_extraction(
            root, root / "broden", args.models, args.extract_images, args.compression
        )
    rates = ablation_rates(ROOT / "benchmarks" / "measured" / "ablation.json")
    report["ablation_source"] = (
        "benchmarks/measured/ablation.json" if rates else "not available (no ablation.json)"
    )
    report["projected"] = project(report["extraction"], report["concept_iou"], rates)
    report["total_s"] = time.perf_counter() - started
    report["load_average_after"] = list(os.getloadavg())
    tables = docs_tables(report)
    for name in ("setup", "measured", "projected"):
        print(tables[name])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
