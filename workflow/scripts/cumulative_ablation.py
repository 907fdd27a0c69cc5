"""Rule adapter: cumulative ablation of each class's top-ranked units of one layer (unit basis)."""

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from unitablation.cumulative import cumulative_ablation, powers_of_two
from unitablation.devices import use_full_float32
from unitablation.images import ImageFolderSet, model_preprocess
from unitablation.lease import gpu_lease
from unitablation.logs import logged_to, progress_options
from unitablation.models import load_configured_model
from unitablation.store import ActivationStore, atomic_path

LOG = logging.getLogger("unitablation.scripts.cumulative_ablation")


def main(
    store_path: str,
    weights: str,
    images_dir: str,
    table_out: str,
    layer: str,
    model_entry: Mapping[str, Any],
    cumulative: Mapping[str, Any],
    seed: int,
    device_name: str,
    threads: int,
) -> None:
    """Rank on one split of the eval images, ablate top-k and random-k sets on the other."""
    torch.set_num_threads(threads)
    use_full_float32()
    batch_size = cumulative["batch_size"]
    with gpu_lease(device_name) as lease, ActivationStore(store_path) as store:
        LOG.info(f"device: {lease.description}")
        model, _, classes = load_configured_model(model_entry, weights, lease.device, store.classes)
        labels = store.labels()
        layout = store.layout(layer)
        LOG.info(f"layer {layer}: {layout.describe()}")
        # a_u(x) per image (tokens: the mean over patch tokens), averaged over the eval set
        channel_means = torch.from_numpy(store.layer(layer)["mean"][:].mean(axis=0))
        replacement = channel_means if cumulative["mode"] == "mean" else None

        def batches(needs_images: bool):
            """A fresh stream of (inputs, labels) over the eval set in store order."""
            if needs_images:
                preprocess = model_preprocess(model_entry)
                return DataLoader(ImageFolderSet(images_dir, preprocess), batch_size=batch_size)
            return (
                (torch.from_numpy(raw), torch.from_numpy(labels[start : start + len(raw)]))
                for start, raw in store.iter_outputs(layer, batch_size)
            )

        total = -(-len(labels) // batch_size)
        result = cumulative_ablation(
            model,
            layer,
            lease.device,
            batches,
            labels,
            classes,
            ranking_fraction=cumulative["ranking_fraction"],
            split_seed=seed,
            random_seed=seed,
            ks=powers_of_two(layout.units, cumulative["max_k"]),
            replacement=replacement,
            method=cumulative["method"],
            units_per_call=cumulative["units_per_call"],
            tie_margin=cumulative["tie_margin"],
            progress=lambda items, stage: tqdm(items, total=total, **progress_options(stage)),
            unit_dim=layout.unit_dim,
        )
    LOG.info(
        f"ranking and sets by {result.method}; "
        f"classes skipped (no ranking or measure images): {result.skipped_classes or 'none'}",
    )
    with atomic_path(table_out) as temporary:
        result.table.to_csv(temporary, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.store,
            snakemake.input.weights,
            snakemake.input.images,
            snakemake.output.table,
            snakemake.wildcards.layer,
            snakemake.params.model,
            snakemake.params.cumulative,
            snakemake.params.seed,
            snakemake.params.device,
            snakemake.threads,
        )
