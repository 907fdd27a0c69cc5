"""Bounded memory: peak RSS of the extraction, ablation-shard and concept-IoU jobs at N and 8N.

Writes two worlds with the project's generator (config.yaml's world: 64 x 64 images, 12 classes;
N and 8N val images, N and 8N concept images, one train image per class) and a freshly
initialised `plain` tinyalex checkpoint, then runs each job as the pipeline does, by calling the
rule script's `main()` with config.yaml's settings (device cpu), each in a fresh Python process:

- extract eval: workflow/scripts/extract_activations.py, val split, one layer (as the rule);
- extract concept: the same script on the concept set (the IoU job's input);
- ablate shard: workflow/scripts/ablate_shard.py, shard 0 (`ablation.shard_size` units);
- concept IoU: workflow/scripts/concept_iou.py, unit basis.

Each process reports its peak RSS (Linux's VmHWM; reporting.peak_rss_mb) and its
RSS right after imports (torch, torchvision, h5py, the script) and building the model from the
checkpoint; "working" is the peak above that. The target is peak(8N) / peak(N) < 1.5 for every
job. Prints a table and writes the figures as JSON.

    python benchmarks/memory.py [--n 600] [--layer features.relu3]
        [--json results/benchmarks/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from reporting import (
    hardware,
    peak_rss_mb,
    print_table,
    proc_status_mb,
    run_json_child,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 1.5
SCALE = 8
MODEL = "plain"
JOBS = ("extract_eval", "extract_concept", "ablate", "iou")
TITLES = {
    "extract_eval": "extract eval",
    "extract_concept": "extract concept",
    "ablate": "ablate shard",
    "iou": "concept IoU",
}


def load_config() -> dict:
    """config.yaml, the embedded default the pipeline runs with."""
    import yaml

    return yaml.safe_load((ROOT / "config.yaml").read_text())


def settings(config: dict, section: str) -> dict:
    """One config section without `threads`, as the rules pass it in params."""
    return {key: value for key, value in config[section].items() if key != "threads"}


def model_entry(config: dict) -> dict:
    """The model entry with the image size resolved, as the rules pass it in params."""
    return {**config["models"][MODEL], "image_size": config["world"]["image_size"]}


# ---------------------------------------------------------------------------------------------
# Child process: one job.


def run_job(job: str, data: Path, layer: str) -> dict[str, object]:
    """Import the rule script, build the model once, then run the script's main()."""
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))  # the rule scripts, as modules
    import ablate_shard
    import concept_iou
    import extract_activations
    import torch
    import torchvision  # noqa: F401  (the jobs import it: store provenance, torchvision models)

    from unitablation.models import load_configured_model

    config = load_config()
    entry = model_entry(config)
    weights = str(data / "model.pt")
    load_configured_model(entry, weights, torch.device("cpu"))
    baseline = proc_status_mb("VmRSS")
    started = time.perf_counter()
    device, stores = "cpu", data / "activations"  # host memory is what is measured
    if job in ("extract_eval", "extract_concept"):
        split = "eval" if job == "extract_eval" else "concept"
        extract_activations.main(
            str(data / ("val" if split == "eval" else "broden")),
            weights,
            str(stores / split / f"{layer}.h5"),
            split,
            MODEL,
            entry,
            [layer],
            settings(config, "activations"),
            device,
            config["activations"]["threads"],
        )
    elif job == "ablate":
        ablation = config["ablation"]
        ablate_shard.main(
            str(stores / "eval" / f"{layer}.h5"),
            weights,
            str(data / "val"),
            str(data / "shards" / "0000.h5"),
            MODEL,
            layer,
            "unit",
            list(range(ablation["shard_size"])),
            entry,
            {
                key: ablation[key]
                for key in ("mode", "method", "units_per_call", "batch_size", "tie_margin")
            },
            device,
            ablation["threads"],
        )
    elif job == "iou":
        torch.set_num_threads(config["concepts"]["threads"])
        concept_iou.main(
            str(stores / "concept" / f"{layer}.h5"),
            str(data / "broden"),
            str(data / "concepts.csv"),
            str(data / "concepts.h5"),
            layer,
            "unit",
            settings(config, "concepts"),
            config["concepts"]["unit_block"],
            config["concepts"]["image_batch"],
        )
    else:
        raise ValueError(f"unknown job {job!r}")
    return {
        "seconds": time.perf_counter() - started,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------------------------------------
# Parent: data, children, report.


def write_data(root: Path, images: int, config: dict, seed: int) -> dict[str, float]:
    """A world with `images` val and concept images, and a freshly initialised checkpoint."""
    import torch

    from unitablation.models import ModelSpec, build_model, save_checkpoint
    from unitablation.world import WorldSpec, class_names
    from unitablation.world_export import write_concept_set, write_image_folder

    world = config["world"]
    if images % world["n_classes"]:
        raise ValueError(f"N={images} is not a multiple of {world['n_classes']} classes")
    spec = WorldSpec(
        **{
            **world,
            "train_per_class": 1,
            "val_per_class": images // world["n_classes"],
            "concept_images": images,
        },
        seed=seed,
    ).validate()
    started = time.perf_counter()
    write_image_folder(root / "folder", spec)
    os.replace(root / "folder" / "val", root / "val")
    write_concept_set(root / "broden", spec)
    torch.manual_seed(seed)
    entry = model_entry(config)
    model = build_model(ModelSpec.from_config(entry, world["n_classes"], world["image_size"]))
    save_checkpoint(root / "model.pt", model, class_names(spec))
    return {"world_s": time.perf_counter() - started}


def child(job: str, data: Path, layer: str) -> dict[str, object]:
    """Run one job in a fresh interpreter; its JSON is the last line of its stdout."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--job",
        job,
        "--data",
        str(data),
        "--layer",
        layer,
    ]
    result, stderr = run_json_child(command, f"{job} on {data}")
    described = [line for line in stderr.splitlines() if " units 0.." in line]
    if described:
        result["describe"] = described[-1].strip()
    return result


COLUMNS = [
    ("job", "job"),
    ("peak_n", "peak MB at N"),
    ("peak_8n", "peak MB at 8N"),
    ("ratio", "ratio 8N/N"),
    ("baseline_n", "after imports MB"),
    ("working_n", "working MB at N"),
    ("working_8n", "working MB at 8N"),
    ("seconds_n", "s at N"),
    ("seconds_8n", "s at 8N"),
]


def main() -> None:
    """Prepare the data, run every job at N and 8N, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="N, eval and concept images")
    parser.add_argument("--layer", default="features.relu3", help="layer of every job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "results" / "benchmarks" / "memory.json"
    )
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args.data, args.layer)))
        return

    started = time.perf_counter()
    config = load_config()
    info = hardware(config["activations"]["threads"], ("h5py", "torchvision"))
    print(
        f"# {info['date']}  {info['cpu']}, {info['logical_cores']} logical / "
        f"{info['physical_cores']} physical cores, {info['memory_gb']} GB, "
        f"load {info['load_average_at_start']}"
    )
    print(
        f"# python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"numpy {info['numpy']}, h5py {info['h5py']}; 1 torch thread per job (config threads)"
    )
    sizes = (args.n, SCALE * args.n)
    print(
        f"# default world ({config['world']['image_size']} x {config['world']['image_size']}, "
        f"{config['world']['n_classes']} classes), N={sizes[0]} and 8N={sizes[1]} val and "
        f"concept images; fresh '{MODEL}' tinyalex, layer {args.layer}; config.yaml settings",
        flush=True,
    )
    runs: dict[int, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as scratch:
        for images in sizes:
            data = Path(scratch) / f"n{images}"
            prepared = write_data(data, images, config, args.seed)
            runs[images] = {}
            for job in JOBS:
                runs[images][job] = child(job, data, args.layer)
                item = runs[images][job]
                print(
                    f"#   N={images} {TITLES[job]}: peak {item['peak_rss_mb']:.0f} MB, "
                    f"after imports {item['baseline_rss_mb']:.0f} MB, {item['seconds']:.1f} s "
                    f"(world written in {prepared['world_s']:.1f} s)",
                    flush=True,
                )
    rows = []
    for job in JOBS:
        small, large = runs[sizes[0]][job], runs[sizes[1]][job]
        row: dict[str, object] = {"job": TITLES[job]}
        for suffix, item in (("n", small), ("8n", large)):
            row[f"peak_{suffix}"] = round(item["peak_rss_mb"])
            row[f"baseline_{suffix}"] = round(item["baseline_rss_mb"])
            row[f"working_{suffix}"] = round(item["peak_rss_mb"] - item["baseline_rss_mb"])
            row[f"seconds_{suffix}"] = round(item["seconds"], 1)
        row["ratio"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
        row["working_ratio"] = round(
            (large["peak_rss_mb"] - large["baseline_rss_mb"])
            / max(1e-9, small["peak_rss_mb"] - small["baseline_rss_mb"]),
            2,
        )
        row["met"] = row["ratio"] < RATIO_TARGET
        row["describe"] = large.get("describe", "")
        rows.append(row)
    print()
    print_table(rows, COLUMNS)
    print()
    for row in rows:
        verdict = "met" if row["met"] else "MISSED"
        print(f"target {row['job']}: ratio {row['ratio']:.3f} (want < {RATIO_TARGET:g}) {verdict}")
    total = time.perf_counter() - started
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"total {total:.0f} s; load average at end {info['load_average_at_end']}")
    report = {
        "hardware": info,
        "settings": {
            "n": args.n,
            "scale": SCALE,
            "layer": args.layer,
            "seed": args.seed,
            "model": MODEL,
            "threads_per_job": 1,
        },
        "jobs": {
            row["job"]: {
                "peak_rss_mb_n": runs[sizes[0]][job]["peak_rss_mb"],
                "peak_rss_mb_8n": runs[sizes[1]][job]["peak_rss_mb"],
                "ratio_8n_over_n": row["ratio"],
                "baseline_rss_mb_n": runs[sizes[0]][job]["baseline_rss_mb"],
                "baseline_rss_mb_8n": runs[sizes[1]][job]["baseline_rss_mb"],
                "working_ratio_8n_over_n": row["working_ratio"],
                "runs": {str(images): runs[images][job] for images in sizes},
                "target": f"< {RATIO_TARGET:g}",
                "met": row["met"],
            }
            for job, row in zip(JOBS, rows, strict=True)
        },
        "total_s": total,
    }
    write_report(args.json, report)


if __name__ == "__main__":
    main()
