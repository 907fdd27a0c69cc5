"""Rule adapter: merge a layer's ablation shards into drops.csv, class_drops.csv and HDF5.

Every drop is baseline minus ablated, both computed by the engine on the same path (the
shard job has checked that path's baseline against the stored full-network logits)."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from unitablation.drops import drop_tables
from unitablation.logs import logged_to
from unitablation.shard_store import load_counts
from unitablation.store import ActivationStore, atomic_paths

LOG = logging.getLogger("unitablation.scripts.merge_ablation")


def main(
    shards: Sequence[str],
    store_path: str,
    drops_out: str,
    class_drops_out: str,
    prob_drops_out: str,
    ablation: Mapping[str, Any],
) -> None:
    """Baseline and ablated counts from the shards, both through the engine's path."""
    counts, attrs = load_counts(shards)
    with ActivationStore(store_path) as store:
        labels, classes = store.labels(), store.classes
    sizes = np.bincount(labels, minlength=len(classes))
    if not np.array_equal(sizes, counts.class_sizes):
        raise ValueError(f"shards were computed on other images than {store_path}")
    mismatches = int(attrs["baseline_mismatches"])
    LOG.info(
        f"{len(counts.units)} units, method {counts.method}; unablated predictions through the "
        f"ablation path ({attrs['baseline_source']}) differ from the stored full-network logits "
        f"on {mismatches} eval image(s)",
    )
    tables = drop_tables(
        counts.units,
        counts.correct,
        counts.prob_sum,
        counts.baseline_correct,
        counts.baseline_prob_sum,
        sizes,
        classes,
        thresholds=ablation["hurt_thresholds"],
        near_ties=counts.near_ties,
        lost=counts.lost,
    )
    tables.drops.insert(len(tables.drops.columns), "baseline_mismatches", mismatches)
    tables.drops.insert(len(tables.drops.columns), "method", counts.method)
    order = np.argsort(counts.units)
    paths = [drops_out, class_drops_out, prob_drops_out]
    with atomic_paths(paths) as (drops_tmp, class_drops_tmp, prob_drops_tmp):
        tables.drops.to_csv(drops_tmp, index=False, float_format="%.6g")
        tables.class_drops.to_csv(class_drops_tmp, index=False, float_format="%.6g")
        with h5py.File(prob_drops_tmp, "w") as handle:
            handle.create_dataset("units", data=counts.units[order])
            handle.create_dataset("class_prob_drops", data=tables.class_prob_drops)
            handle.create_dataset("correct", data=counts.correct[order])
            handle.create_dataset("lost", data=counts.lost[order])
            handle.create_dataset("class_sizes", data=sizes)
            handle.create_dataset("baseline_correct", data=counts.baseline_correct)
            handle.attrs["classes"] = list(classes)
            handle.attrs.update({key: attrs[key] for key in ("model", "layer", "basis", "mode")})
            handle.attrs["baseline_source"] = attrs["baseline_source"]
            handle.attrs["baseline_mismatches"] = mismatches
    worst = tables.drops.sort_values("max_class_drop", ascending=False).head(3)
    LOG.info("units with the largest class drops:\n%s", worst.to_string(index=False))


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.shards,
            snakemake.input.store,
            snakemake.output.drops,
            snakemake.output.class_drops,
            snakemake.output.prob_drops,
            snakemake.params.ablation,
        )
