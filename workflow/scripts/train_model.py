"""Rule adapter: train one miniature model variant on an ImageFolder and save its weights."""

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from unitablation.devices import use_full_float32
from unitablation.images import ImageFolderSet, model_preprocess, stack_dataset
from unitablation.lease import gpu_lease
from unitablation.logs import logged_to
from unitablation.models import ModelSpec, build_model, save_checkpoint
from unitablation.store import atomic_paths
from unitablation.training import TrainConfig, train_model

LOG = logging.getLogger("unitablation.scripts.train_model")


def main(
    images_dir: str,
    weights_out: str,
    history_out: str,
    model_entry: Mapping[str, Any],
    training: Mapping[str, Any],
    seed: int,
    device_name: str,
    threads: int,
) -> None:
    """Train from a fixed seed; write the checkpoint and a per-epoch history CSV."""
    torch.set_num_threads(threads)
    use_full_float32()
    with gpu_lease(device_name) as lease:
        LOG.info(f"device: {lease.description}")
        device = lease.device
        dataset = ImageFolderSet(images_dir, model_preprocess(model_entry))
        images, labels = stack_dataset(dataset)
        spec = ModelSpec.from_config(model_entry, len(dataset.classes), images.shape[-1])
        LOG.info(f"training {spec} on {len(dataset)} images, {len(dataset.classes)} classes")
        torch.manual_seed(seed)
        model = build_model(spec)

        def report(record: dict[str, float]) -> None:
            LOG.info(", ".join(f"{key}={value:.4g}" for key, value in record.items()))

        history = train_model(
            model, images, labels, TrainConfig.from_config(training, seed), device, on_epoch=report
        )
        with atomic_paths([weights_out, history_out]) as (weights_tmp, history_tmp):
            save_checkpoint(weights_tmp, model, dataset.classes)
            pd.DataFrame(history).to_csv(history_tmp, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.images,
            snakemake.output.weights,
            snakemake.output.history,
            snakemake.params.model,
            snakemake.params.training,
            snakemake.params.seed,
            snakemake.params.device,
            snakemake.threads,
        )
