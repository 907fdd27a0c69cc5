"""Rule adapter: per-unit attributes of one layer (weight norms, selectivity, correlation)."""

import logging
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
import torch

from unitablation.attributes import (
    accumulate,
    attribute_table,
    find_producer,
    incoming_l1,
    is_rectified,
    outgoing_attributes,
    rotated_summaries,
)
from unitablation.logs import logged_to
from unitablation.models import load_configured_model
from unitablation.rotation import haar_rotation, parse_basis
from unitablation.store import ActivationStore, atomic_paths

LOG = logging.getLogger("unitablation.scripts.unit_attributes")
ROWS_PER_READ = 4096
MAPS_PER_READ = 256


def stored_rows(store: ActivationStore, layer: str):
    """Yield (means, maxima, labels, logits) row batches of the eval store."""
    group = store.layer(layer)
    for start in range(0, len(store), ROWS_PER_READ):
        rows = slice(start, start + ROWS_PER_READ)
        yield (
            group["mean"][rows],
            group["max"][rows],
            store.file["labels"][rows],
            store.file["logits"][rows],
        )


def rotated_rows(store: ActivationStore, layer: str, rotation: np.ndarray):
    """Yield the same row batches for rotated units, computed from the stored maps."""
    for start, maps in store.iter_maps(layer, MAPS_PER_READ):
        rows = slice(start, start + len(maps))
        means, maxima = rotated_summaries(maps, rotation)
        yield means, maxima, store.file["labels"][rows], store.file["logits"][rows]


def main(
    store_path: str,
    weights: str,
    table_out: str,
    matrices_out: str,
    layer: str,
    basis: str,
    model_entry: Mapping[str, Any],
) -> None:
    """Weights from the checkpoint, activations streamed from the eval store."""
    seed = parse_basis(basis)
    with ActivationStore(store_path) as store:
        classes = store.classes
        layout = store.layout(layer)
        channels = layout.units
        LOG.info(f"layer {layer}: {layout.describe()}")
        rotation = None if seed is None else haar_rotation(channels, seed)
        model, _, _ = load_configured_model(model_entry, weights, torch.device("cpu"), classes)
        producer = find_producer(model, layer)
        if producer.op is None:
            LOG.warning(f"l1_in undefined for {layer}: {producer.reason}")
        l1_in, l1_in_bn = incoming_l1(producer, channels, rotation)
        l1_out, out_class = outgoing_attributes(model, layer, channels, rotation)
        rectified = rotation is None and is_rectified(model, layer)
        rows = (
            stored_rows(store, layer) if rotation is None else rotated_rows(store, layer, rotation)
        )
        stats = accumulate(rows, len(classes))
    table, class_means, correlation = attribute_table(
        stats, classes, l1_in, l1_in_bn, l1_out, out_class, rectified=rectified
    )
    excluded = int(table["class_correlation"].isna().sum())
    dead = [int(unit) for unit in table.loc[table["dead"], "unit"]]
    constant = [int(unit) for unit in table.loc[table["constant"], "unit"]]
    LOG.info(
        f"{channels} units; correlation undefined (constant activation) for {excluded}; "
        f"maps rectified: {rectified}; dead (never active on the eval set, rectified maps "
        f"only): {len(dead)} {dead}; constant: {len(constant)} {constant}"
    )
    with atomic_paths([table_out, matrices_out]) as (table_tmp, matrices_tmp):
        table.to_csv(table_tmp, index=False, float_format="%.8g")
        with h5py.File(matrices_tmp, "w") as handle:
            handle.create_dataset("class_means", data=class_means)
            handle.create_dataset("class_correlation", data=correlation)
            handle.attrs["classes"] = list(classes)
            handle.attrs["layer"] = layer
            handle.attrs["basis"] = basis


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.store,
            snakemake.input.weights,
            snakemake.output.table,
            snakemake.output.matrices,
            snakemake.wildcards.layer,
            snakemake.wildcards.basis,
            snakemake.params.model,
        )
