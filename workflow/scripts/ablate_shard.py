"""Rule adapter: ablate one shard of units of one layer over the whole eval split."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from unitablation.ablation import AblationEngine
from unitablation.counts import check_baseline, compare_baseline
from unitablation.devices import use_full_float32
from unitablation.images import ImageFolderSet, model_preprocess
from unitablation.lease import gpu_lease
from unitablation.logs import logged_to, progress_options
from unitablation.models import load_configured_model
from unitablation.rotation import haar_rotation, parse_basis
from unitablation.shard_store import save_counts
from unitablation.store import ActivationStore

LOG = logging.getLogger("unitablation.scripts.ablate_shard")


def stored_batches(store: ActivationStore, layer: str, labels: np.ndarray, batch_size: int):
    """Yield (raw layer outputs, labels) tensors streamed from the activation store."""
    for offset, outputs in store.iter_outputs(layer, batch_size):
        yield torch.from_numpy(outputs), torch.from_numpy(labels[offset : offset + len(outputs)])


def main(
    store_path: str,
    weights: str,
    images_dir: str,
    shard_out: str,
    model_name: str,
    layer: str,
    basis: str,
    units: Sequence[int],
    model_entry: Mapping[str, Any],
    ablation: Mapping[str, Any],
    device_name: str,
    threads: int,
) -> None:
    """Run the engine on the shard's units and save the per-class counts."""
    seed = parse_basis(basis)
    torch.set_num_threads(threads)
    use_full_float32()
    with gpu_lease(device_name) as lease, ActivationStore(store_path) as store:
        LOG.info(f"device: {lease.description}")
        model, _, classes = load_configured_model(
            model_entry, weights, lease.device, store.classes, model_name=model_name
        )
        labels = store.labels()
        layout = store.layout(layer)
        # a_u(x) per image (tokens: the mean over patch tokens), averaged over the eval set
        channel_means = torch.from_numpy(store.layer(layer)["mean"][:].mean(axis=0))
        rotation = None
        if seed is not None:
            rotation = torch.from_numpy(haar_rotation(layout.units, seed)).float()
        replacement = None
        if ablation["mode"] == "mean":  # the mean of each unit's (or direction's) coordinate
            replacement = channel_means if rotation is None else rotation @ channel_means
        engine = AblationEngine(
            model,
            layer,
            lease.device,
            replacement=replacement,
            method=ablation["method"],
            units_per_call=ablation["units_per_call"],
            tie_margin=ablation["tie_margin"],
            rotation=rotation,
            unit_dim=layout.unit_dim,
        )
        LOG.info(
            f"{model_name} {layer} units {units[0]}..{units[-1]} ({len(units)}), "
            f"{len(labels)} images, {layout.describe()}, mode {ablation['mode']}: "
            f"{engine.describe()}",
        )
        if engine.needs_images:
            preprocess = model_preprocess(model_entry)
            batches = DataLoader(
                ImageFolderSet(images_dir, preprocess), batch_size=ablation["batch_size"]
            )
        else:
            batches = stored_batches(store, layer, labels, ablation["batch_size"])
        total = -(-len(labels) // ablation["batch_size"])
        counts = engine.run(
            batches,
            units,
            len(classes),
            progress=lambda items: tqdm(items, total=total, **progress_options("image batches")),
        )
        source = "images" if engine.needs_images else f"{maps_dtype(store, layer)} maps"
        agreement = compare_baseline(
            counts.baseline_predictions, store.logits(), ablation["tie_margin"]
        )
    LOG.info(
        f"near ties (top-2 logits closer than {ablation['tie_margin']}): "
        f"{int(counts.near_ties.sum())}; gross losses (correct -> wrong): "
        f"{int(counts.lost.sum())}",
    )
    LOG.info(
        f"unablated predictions through the ablation path ({source}) that differ from the "
        f"stored full-network logits: {agreement.differing} "
        f"({agreement.beyond_ties} outside float ties)",
    )
    if source != "float16 maps":  # full precision must reproduce the network
        check_baseline(agreement, model_name, layer, source)
    save_counts(
        shard_out,
        counts,
        {
            "model": model_name,
            "layer": layer,
            "basis": basis,
            "mode": ablation["mode"],
            "baseline_source": source,
            "baseline_mismatches": agreement.differing,
        },
    )


def maps_dtype(store: ActivationStore, layer: str) -> str:
    """Precision of the stored maps the replay reads (float32, or float16 by config)."""
    group = store.layer(layer)
    if "maps" not in group:
        raise ValueError(f"activation store {store.path} holds no maps for layer {layer!r}")
    return str(group["maps"].dtype)


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.store,
            snakemake.input.weights,
            snakemake.input.images,
            snakemake.output.shard,
            snakemake.wildcards.model,
            snakemake.wildcards.layer,
            snakemake.wildcards.basis,
            snakemake.params.units,
            snakemake.params.model,
            snakemake.params.ablation,
            snakemake.params.device,
            snakemake.threads,
        )
