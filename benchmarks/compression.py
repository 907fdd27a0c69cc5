"""HDF5 compression of stored maps: size, extraction time and read time for each
`activations.compression` (none, lzf, gzip), on CPU.

Two cases, each rendering the generated world's concept set as a Broden directory in a temporary
folder and extracting it with unitablation.extraction.extract_activations, as the pipeline does:

- world: the default config's sizes (64 x 64 images, 400 concept images), tinyalex with the
  default widths and seeded random weights, layers features.relu3, relu4, relu5;
- broden: Broden's image size (224 x 224 images, 112 x 112 segmentations), torchvision AlexNet
  with seeded random weights, conv5 after its ReLU (features.11, 256 x 13 x 13).

Per layer (one store per layer, as the pipeline writes) and compression: the stored maps' bytes
(HDF5 storage size) and the size ratio none / this; extraction time (forward + write of one
layer's store, the forward is the same for all, after a warm-up extraction); write time alone
(the maps, already in memory, into a dataset with the store's chunks); a full read of each
layer's maps in windows of 256 images (ActivationStore.iter_maps); and concept IoU of each layer
from the store (unitablation.concepts.concept_iou over store_reader: unit blocks of image windows),
whose results must equal those from the uncompressed store (read and IoU also in CPU seconds,
process time, which a busy machine inflates less than wall-clock). Reads hit the page cache (the
store was just written): they measure decompression, not the disk. Two filters that are not
config values (gzip level 4; gzip without the shuffle) are measured for size and write time only.
Random weights, not trained ones: trained ReLU maps are sparser, so compression there may differ.

    python benchmarks/compression.py [--world-images 400] [--broden-images 300] [--threads 2]
        [--json benchmarks/measured/compression.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from reporting import ROOT, commit_label

COMPRESSIONS = ("none", "lzf", "gzip")


def concept_loader(root: Path, image_size: int, images: int, batch_size: int) -> Any:
    """Write the world's concept set at `image_size` under root; its Broden set and a loader."""
    from torch.utils.data import DataLoader

    from unitablation.broden import read_broden
    from unitablation.images import FileListSet, Preprocess
    from unitablation.world import WorldSpec
    from unitablation.world_export import write_concept_set

    spec = WorldSpec(image_size=image_size, concept_images=images)
    write_concept_set(root / "broden", spec)
    broden = read_broden(root / "broden")
    files = [root / "broden" / "images" / record.image for record in broden.records]
    dataset = FileListSet(files, [-1] * len(files), Preprocess())
    return broden, DataLoader(dataset, batch_size=batch_size, shuffle=False)


def case_model(case: str) -> tuple[Any, list[str], int]:
    """(model with seeded random weights, layers, image size) of a case."""
    import torch

    torch.manual_seed(0)
    if case == "world":
        from unitablation.models import TINY_ARCH, ModelSpec, build_model

        model = build_model(ModelSpec(TINY_ARCH, 12))
        return model, ["features.relu3", "features.relu4", "features.relu5"], 64
    import torchvision

    return torchvision.models.alexnet(weights=None), ["features.11"], 224


#: Filters measured besides the config's: why gzip runs at level 1, and neither behind the
#: byte shuffle.
EXTRA_FILTERS: dict[str, dict[str, Any]] = {
    "gzip-4 (not a config value)": {"compression": "gzip", "compression_opts": 4},
    "gzip-1 + shuffle (not a config value)": {
        "compression": "gzip",
        "compression_opts": 1,
        "shuffle": True,
    },
    "lzf + shuffle (not a config value)": {"compression": "lzf", "shuffle": True},
}


def write_seconds(
    maps: Any, chunks: tuple[int, ...], filters: dict[str, Any], path: Path
) -> tuple[float, float]:
    """Wall and CPU seconds to write in-memory maps into a new dataset with the store's chunks
    and `filters`."""
    import h5py

    started, cpu = time.perf_counter(), time.process_time()
    with h5py.File(path, "w") as handle:
        handle.create_dataset("maps", data=maps, chunks=chunks, **filters)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    path.unlink()
    return seconds, cpu


def full_read(store: Any, layer: str) -> float:
    """Read every map of a layer in windows of 256 images (the sum keeps the reads honest)."""
    return float(sum(batch.sum() for _, batch in store.iter_maps(layer, 256)))


def measure_case(case: str, images: int, root: Path) -> list[dict[str, Any]]:
    """Rows of one case: per layer and compression, size, extraction, write, read and IoU times."""
    import h5py
    import numpy as np
    import torch
    from reporting import timed

    from unitablation.concepts import concept_iou, concept_labels, store_reader
    from unitablation.extraction import COMPRESSION_FILTERS, extract_activations
    from unitablation.store import ActivationStore

    model, layers, size = case_model(case)
    broden, loader = concept_loader(root / case, size, images, 50)
    labels = concept_labels(broden)
    device = torch.device("cpu")
    warm = root / case / "warm-up.h5"
    extract_activations(model, layers[:1], loader, warm, device, {})
    rows = []
    for layer in layers:
        reference, base_bytes, base_maps = None, 0, None
        variants = {**COMPRESSION_FILTERS, **EXTRA_FILTERS}
        for compression, filters in variants.items():
            path = root / case / f"{layer}.{compression.split()[0]}.h5"
            extract_s = None
            if compression in COMPRESSION_FILTERS:
                _, extract_s = timed(
                    partial(
                        extract_activations,
                        model,
                        [layer],
                        loader,
                        path,
                        device,
                        {},
                        compression=compression,
                    )
                )
            else:
                with h5py.File(root / case / f"{layer}.none.h5", "r") as source:
                    maps = source["layers"][layer]["maps"]
                    with h5py.File(path, "w") as target:
                        target.create_dataset("maps", data=maps[:], chunks=maps.chunks, **filters)
            with h5py.File(path, "r") as store:
                maps = store["layers"][layer]["maps"] if "layers" in store else store["maps"]
                stored, shape, chunks = maps.id.get_storage_size(), maps.shape[1:], maps.chunks
                data = maps[:]
            write_s, write_cpu_s = write_seconds(data, chunks, filters, root / case / "write.h5")
            base_bytes = base_bytes or stored
            base_maps = data if base_maps is None else base_maps
            row = {
                "case": case,
                "layer": layer,
                "map_shape": [int(side) for side in shape],
                "images": images,
                "compression": compression,
                "bytes_per_image": stored / images,
                "ratio_to_none": base_bytes / stored,
                "extract_s": extract_s,
                "write_s": write_s,
                "write_cpu_s": write_cpu_s,
                "maps_identical_to_none": bool(np.array_equal(data, base_maps)),
            }
            if compression in COMPRESSION_FILTERS:
                with ActivationStore(path) as store:
                    cpu = time.process_time()
                    _, read_s = timed(partial(full_read, store, layer))
                    row["read_cpu_s"], cpu = time.process_time() - cpu, time.process_time()
                    reader = store_reader(store, layer, broden)
                    result, iou_s = timed(partial(concept_iou, reader, shape[0], labels))
                    row["concept_iou_cpu_s"] = time.process_time() - cpu
                reference = reference or result
                row["read_s"], row["concept_iou_s"] = read_s, iou_s
                fields = ("iou", "thresholds", "intersection", "top_images", "top_scores")
                row["iou_fields_differing_from_none"] = [
                    name
                    for name in fields
                    if not np.array_equal(getattr(result, name), getattr(reference, name))
                ]
                row["iou_identical_to_none"] = not row["iou_fields_differing_from_none"]
            rows.append(row)
    return rows


def relative_times(rows: list[dict[str, Any]]) -> None:
    """Add each row's times relative to the same case and layer stored without compression."""
    base = {(r["case"], r["layer"]): r for r in rows if r["compression"] == "none"}
    for row in rows:
        ref = base[(row["case"], row["layer"])]
        for key in (
            "extract_s",
            "write_s",
            "write_cpu_s",
            "read_s",
            "read_cpu_s",
            "concept_iou_s",
            "concept_iou_cpu_s",
        ):
            known = row.get(key) is not None
            row[f"{key}_vs_none"] = row[key] / ref[key] if known else None


COLUMNS = [
    ("case", "case"),
    ("layer", "layer"),
    ("compression", "compression"),
    ("bytes_per_image", "bytes/image"),
    ("ratio_to_none", "size ratio"),
    ("extract_s", "extract s"),
    ("extract_s_vs_none", "x none"),
    ("write_cpu_s", "write CPU s"),
    ("write_cpu_s_vs_none", "x none"),
    ("read_cpu_s", "read CPU s"),
    ("read_cpu_s_vs_none", "x none"),
    ("concept_iou_s", "IoU s"),
    ("concept_iou_s_vs_none", "x none"),
    ("concept_iou_cpu_s", "IoU CPU s"),
    ("concept_iou_cpu_s_vs_none", "x none"),
    ("maps_identical_to_none", "maps same"),
    ("iou_identical_to_none", "IoU same"),
]


def docs_tables(report: dict[str, Any]) -> dict[str, str]:
    """Markdown blocks of a compression report by name (for benchmarks/docs_tables.py)."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, rule]
    for row in report["rows"]:
        cells = [row.get(key) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    info = report["hardware"]
    setup = (
        f"Measured {info['date_utc']} at commit `{report['git_commit']}` on {info['cpu']} "
        f"({info['logical_cores']} logical cores), torch threads: {info['threads']}, h5py "
        f"{info['h5py']} (HDF5 {info['hdf5']}); load average (1, 5, 15 min) "
        f"{', '.join(str(x) for x in info['load_average_at_start'])} at the start and "
        f"{', '.join(str(x) for x in info['load_average_at_end'])} at the end. Ratios below 1 "
        "are the machine's load changing between the runs compared.\n"
    )
    blocks = {"compression": "\n".join(lines) + "\n", "summary": summary(report)}
    return {**blocks, "setup": setup}


def summary(report: dict[str, Any]) -> str:
    """One line per compression value: the range over layers of its ratios to none."""
    keys = [
        ("ratio_to_none", "stores smaller by"),
        ("write_cpu_s_vs_none", "write CPU time x"),
        ("read_cpu_s_vs_none", "full read CPU time x"),
        ("concept_iou_cpu_s_vs_none", "concept IoU CPU time x"),
        ("extract_s_vs_none", "extraction wall time x"),
    ]
    lines = []
    for compression in ("lzf", "gzip"):
        rows = [row for row in report["rows"] if row["compression"] == compression]
        parts = []
        for key, words in keys:
            values = [row[key] for row in rows if row.get(key) is not None]
            if values:
                parts.append(f"{words} {min(values):.3g}-{max(values):.3g}")
        layers = len(rows)
        lines.append(f"- `{compression}` ({layers} layers): " + ", ".join(parts) + ".")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def main() -> None:
    """Measure both cases, print the table and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-images", type=int, default=400)
    parser.add_argument("--broden-images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/measured/compression.json")
    args = parser.parse_args()
    import h5py
    import torch
    from reporting import hardware, print_table, write_report

    torch.set_num_threads(args.threads)
    info = hardware(args.threads, ["h5py", "torchvision"])
    info["hdf5"] = h5py.version.hdf5_version
    info["date_utc"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as folder:
        rows = measure_case("world", args.world_images, Path(folder))
        rows += measure_case("broden", args.broden_images, Path(folder))
    relative_times(rows)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table([{key: _cell(row.get(key)) for key, _ in COLUMNS} for row in rows], COLUMNS)
    report = {"hardware": info, "git_commit": commit_label(), "rows": rows}
    write_report(args.json, report)


if __name__ == "__main__":
    main()
