"""CPU against CUDA on the default world: training and extraction speed, and numerical agreement.

Renders the world (or reads an existing one), trains one miniature variant for a few epochs on
each available device from the same seed, extracts activations with the CPU-trained weights on
every device, and prints a table: seconds per epoch, extraction images per second, the largest
difference of stored maps and logits against the CPU, and the fraction of equal top-1 predictions.

    python benchmarks/devices.py [--epochs 3] [--world results/world] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from unitablation.devices import use_full_float32
from unitablation.extraction import extract_activations
from unitablation.images import ImageFolderSet, model_preprocess, stack_dataset
from unitablation.models import ModelSpec, build_model
from unitablation.store import ActivationStore
from unitablation.training import TrainConfig, train_model
from unitablation.world import WorldSpec
from unitablation.world_export import write_image_folder

LAYERS = ("features.relu3", "features.relu4", "features.relu5")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--world", type=Path, default=None, help="existing world (train/, val/)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tf32", action="store_true", help="keep PyTorch's TF32 default")
    args = parser.parse_args()
    if not args.tf32:
        use_full_float32()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    scratch = Path(tempfile.mkdtemp(prefix="devices-bench-"))
    world = args.world
    if world is None:
        world = scratch / "world"
        write_image_folder(world, WorldSpec())
    preprocess = model_preprocess({"arch": "tinyalex"})
    train = ImageFolderSet(world / "train", preprocess)
    val = ImageFolderSet(world / "val", preprocess)
    images, labels = stack_dataset(train)
    spec = ModelSpec("tinyalex", len(train.classes), batchnorm=True, dropout=0.5)
    rows = []
    reference_weights = None
    for device in devices:
        torch.manual_seed(0)
        model = build_model(spec)
        synchronize(device)
        started = time.perf_counter()
        train_model(model, images, labels, TrainConfig(epochs=args.epochs), device)
        synchronize(device)
        epoch_seconds = (time.perf_counter() - started) / args.epochs
        if reference_weights is None:
            reference_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(reference_weights)
        loader = DataLoader(val, batch_size=100)
        store_path = scratch / f"eval_{device.type}.h5"
        synchronize(device)
        started = time.perf_counter()
        extract_activations(model, LAYERS, loader, store_path, device, {"classes": val.classes})
        synchronize(device)
        rows.append(
            {
                "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                "train_s_per_epoch": epoch_seconds,
                "extract_images_per_s": len(val) / (time.perf_counter() - started),
                "store": store_path,
            }
        )
    with ActivationStore(rows[0]["store"]) as reference:
        reference_logits = reference.logits()
        reference_maps = {layer: reference.layer(layer)["maps"][:] for layer in LAYERS}
        for row in rows:
            with ActivationStore(row.pop("store")) as store:
                logits = store.logits()
                row["max_abs_logit_diff"] = float(np.abs(logits - reference_logits).max())
                row["max_abs_map_diff"] = max(
                    float(np.abs(store.layer(layer)["maps"][:] - reference_maps[layer]).max())
                    for layer in LAYERS
                )
                row["top1_agreement"] = float(
                    (logits.argmax(1) == reference_logits.argmax(1)).mean()
                )
    print(
        f"# {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {len(train)} train / {len(val)} val images"
    )
    header = (
        "device",
        "train_s_per_epoch",
        "extract_images_per_s",
        "max_abs_logit_diff",
        "max_abs_map_diff",
        "top1_agreement",
    )
    print(" | ".join(header))
    for row in rows:
        print(
            " | ".join(
                f"{row[key]:.4g}" if isinstance(row[key], float) else str(row[key])
                for key in header
            )
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
