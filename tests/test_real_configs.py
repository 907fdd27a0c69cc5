"""The real-data configs (resources/configs/) build their full DAG, download rules included.

Dry runs need no data: the layer check and the unit counts come from the meta device. Download
URLs are pointed at a local HTTP server on 127.0.0.1 (tests/httpserver.py); one test lets the
download and preparation rules of a real config really run against small generated stubs.
Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from httpserver import broden_zip, csail_layout, places_stub, save_csail, serving
from workflow_runs import ROOT
from workflow_runs import snakemake as run_workflow

from unitablation.download import load_items
from unitablation.figures import registry as figure_registry
from unitablation.models import ModelSpec, build_model

CONFIGS = ROOT / "resources" / "configs"
ITEMS = load_items(ROOT / "resources" / "downloads.yaml", {})

pytestmark = pytest.mark.workflow

#: Units of each studied layer, written out independently of the pipeline's own meta-device count.
UNITS = {
    "alexnet": {
        "features.1": 64,
        "features.4": 192,
        "features.7": 384,
        "features.9": 256,
        "features.11": 256,
    },
    "vgg16": {"features.22": 512, "features.29": 512},
    "resnet50": {"layer3": 1024, "layer4": 2048},
    "resnet18": {"layer3": 256, "layer4": 512},
}
#: Download and preparation jobs of each config: (download_file, download_archive, prepare, convert)
DOWNLOAD_JOBS = {
    "alexnet_imagenet": {"download_file": 3, "download_archive": 1, "prepare_imagenet_val": 1},
    "vgg16_imagenet": {"download_file": 3, "download_archive": 1, "prepare_imagenet_val": 1},
    "resnet50_imagenet": {"download_file": 3, "download_archive": 1, "prepare_imagenet_val": 1},
    "alexnet_places365": {
        "download_file": 3,
        "download_archive": 1,
        "prepare_places365_val": 1,
        "convert_checkpoint": 1,
    },
    "resnet18_places365": {
        "download_file": 3,
        "download_archive": 1,
        "prepare_places365_val": 1,
        "convert_checkpoint": 1,
    },
}
REAL_CONFIGS = sorted(DOWNLOAD_JOBS)


def snakemake(workdir: Path, *args: str, configs: list[Path]) -> subprocess.CompletedProcess:
    """Snakemake on the project's Snakefile in `workdir`, which holds a copy of config.yaml."""
    return run_workflow(workdir, *args, config=configs, timeout=600)


def job_counts(output: str) -> dict[str, int]:
    """The first "Job stats" table of a dry run, as {rule: count}."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def merged_settings(config: dict) -> tuple[int, int]:
    """Shard size and number of bases, as Snakemake merges the config over config.yaml."""
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    shard_size = config.get("ablation", {}).get("shard_size", default["ablation"]["shard_size"])
    seeds = config.get("rotation", {}).get("seeds", default["rotation"]["seeds"])
    return shard_size, 1 + len(seeds)


def expected_counts(name: str) -> dict[str, int]:
    """Jobs per rule of a real config's full run, from its layers, shard size and bases.

    Extraction jobs are checked apart (check_extraction): their split into jobs is a detail of
    the extraction stage, not of the data.
    """
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    shard_size, bases = merged_settings(config)
    (model,) = config["only_models"]
    entry = config["models"][model]
    units = [UNITS[entry["arch"]][layer] for layer in entry["layers"]]
    layers = len(units)
    shards = sum(-(-n // shard_size) for n in units)
    counts = {
        **DOWNLOAD_JOBS[name],
        "baseline_accuracy": 1,
        "ablate_shard": shards * bases,
        "cumulative_ablation": layers,
        "compare": 1,
        "summary": 1,
        "all": 1,
    }
    for rule in (
        "merge_ablation",
        "unit_attributes",
        "concept_iou",
        "unit_table",
        "layer_statistics",
    ):
        counts[rule] = layers * bases
    # figures: one job per (layer | model | study) of a scope with registered figures, drawing
    # all of that scope's figures
    for scope, jobs in (("layer", layers), ("model", 1), ("study", 1)):
        counts[figure_registry.rule_name(scope)] = jobs if figure_registry.figures(scope) else 0
    return counts


def check_extraction(counts: dict[str, int], name: str) -> None:
    """Extraction covers both splits of the one model: a job per split (one store for all
    layers), or a job per (split, layer) plus at most one outputs-only pass per split."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    layers = len(config["models"][config["only_models"][0]]["layers"])
    if "extract_outputs" in counts:
        assert counts["extract_activations"] == 2 * layers
        assert 1 <= counts["extract_outputs"] <= 2
    else:
        assert counts["extract_activations"] == 2


@pytest.fixture(scope="module")
def local_urls(tmp_path_factory) -> Path:
    """A config that points every download item at a (running) local server, unpinned allowed."""
    with serving({}) as server:
        path = tmp_path_factory.mktemp("urls") / "local_urls.yaml"
        downloads = {name: {"urls": [server.url(item.filename)]} for name, item in ITEMS.items()}
        path.write_text(yaml.safe_dump({"allow_unpinned_downloads": True, "downloads": downloads}))
        yield path
        assert sum(server.plan.requests.values()) == 0  # dry runs fetch nothing


def workdir_with_default_config(tmp_path: Path) -> Path:
    """A working directory holding config.yaml, which Snakemake reads before --configfile."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_dry_run_builds_the_full_dag(tmp_path: Path, local_urls: Path, name: str) -> None:
    workdir = workdir_with_default_config(tmp_path)
    # ImageNet configs also take the paths example (as users do); local_urls then wins
    example = [CONFIGS / "imagenet_paths.example.yaml"] if "imagenet" in name else []
    result = snakemake(workdir, "-n", configs=[CONFIGS / f"{name}.yaml", *example, local_urls])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    counts = job_counts(output)
    expected = expected_counts(name)
    assert {rule: counts.get(rule, 0) for rule in expected} == expected
    check_extraction(counts, name)
    # config.yaml's miniature variants do not leak in although its models are merged
    assert "generate_world" not in counts and "train_model" not in counts
    for variant in ("plain", "batchnorm", "dropout"):
        assert f"results/{variant}/" not in output
    assert not (workdir / "resources").exists() and not (workdir / "results").exists()


def test_expected_counts_are_what_the_configs_say() -> None:
    """The numbers the dry-run test asserts, spelled out by hand (shards per layer, x 4 bases)."""
    assert expected_counts("alexnet_imagenet")["ablate_shard"] == (1 + 2 + 3 + 2 + 2) * 4
    assert expected_counts("vgg16_imagenet")["ablate_shard"] == (4 + 4) * 4
    assert expected_counts("resnet50_imagenet")["ablate_shard"] == (8 + 16) * 4
    assert expected_counts("resnet18_places365")["ablate_shard"] == (2 + 4) * 4
    assert expected_counts("alexnet_places365")["concept_iou"] == 5 * 4


def test_unpinned_items_are_refused_before_any_job(tmp_path: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    result = snakemake(workdir, "-n", configs=[CONFIGS / "resnet18_places365.yaml"])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "pins no checksum" in output and "allow_unpinned_downloads" in output


def test_imagenet_without_a_path_says_what_to_set(tmp_path: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    result = snakemake(
        workdir,
        "-n",
        "--config",
        "allow_unpinned_downloads=True",
        configs=[CONFIGS / "alexnet_imagenet.yaml"],
    )
    assert result.returncode != 0
    assert "downloads.imagenet_val.urls" in result.stdout + result.stderr


def test_only_models_must_name_configured_models(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"only_models": ["resnet_missing"]}))
    result = snakemake(workdir_with_default_config(tmp_path), "-n", configs=[bad])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config error in only_models" in output and "resnet_missing" in output


def test_stubbed_downloads_of_a_real_config_prepare_its_inputs(tmp_path: Path) -> None:
    """resnet18_places365's own download, conversion and preparation jobs, on local stubs."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet18", num_classes=365))
    checkpoint = io.BytesIO()
    save_csail(
        {"arch": "resnet18", "state_dict": csail_layout(model.state_dict(), "resnet18")}, checkpoint
    )
    val_tar, filelist, _ = places_stub([f"class{k:03d}" for k in range(365)], per_class=1)
    files = {
        "resnet18_places365.pth.tar": checkpoint.getvalue(),
        "val_256.tar": val_tar,
        "filelist_places365-standard.tar": filelist,
        "broden1_224.zip": broden_zip(tmp_path, "broden1_224"),
    }
    names = {"places365_resnet18", "places365_val_256", "places365_filelist", "broden1_224"}
    workdir = workdir_with_default_config(tmp_path / "work")
    with serving(files) as server:
        stub = tmp_path / "stubs.yaml"  # stubs pinned by their sha256: no unpinned download
        downloads = {
            name: {
                "urls": [server.url(ITEMS[name].filename)],
                "sha256": hashlib.sha256(files[ITEMS[name].filename]).hexdigest(),
            }
            for name in names
        }
        stub.write_text(yaml.safe_dump({"downloads": downloads}))
        configs = [CONFIGS / "resnet18_places365.yaml", stub]
        targets = [
            "resources/prepared/weights/places365_resnet18.pt",
            "resources/prepared/places365_val",
            "resources/downloads/broden1_224",
        ]
        result = snakemake(workdir, "--cores", "2", *targets, configs=configs)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert set(server.plan.requests) == set(files)
        rest = snakemake(workdir, "-n", configs=configs)
    assert rest.returncode == 0, (rest.stdout + rest.stderr)[-3000:]
    counts = job_counts(rest.stdout + rest.stderr)
    expected = expected_counts("resnet18_places365")
    check_extraction(counts, "resnet18_places365")
    for rule in DOWNLOAD_JOBS["resnet18_places365"]:
        assert rule not in counts  # nothing left to download or prepare
        expected.pop(rule)
    assert {rule: counts.get(rule, 0) for rule in expected} == expected
    prepared = workdir / "resources/prepared/places365_val"
    assert len([p for p in prepared.iterdir() if p.is_dir()]) == 365
