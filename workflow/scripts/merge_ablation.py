"""Rule adapter: merge a layer's ablation shards into drops.csv, class_drops.csv and HDF5."""

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from unitablation.drops import drop_tables  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.shard_store import load_counts  # noqa: E402
from unitablation.store import ActivationStore, atomic_paths  # noqa: E402


def softmax_true_class(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability of the true class per image, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities[np.arange(len(labels)), labels]


def main(
    shards: Sequence[str],
    store_path: str,
    drops_out: str,
    class_drops_out: str,
    prob_drops_out: str,
    ablation: Mapping[str, Any],
) -> None:
    """Baseline from the stored full-network logits; ablated counts from the shards."""
    counts, attrs = load_counts(shards)
    with ActivationStore(store_path) as store:
        labels, logits, classes = store.labels(), store.logits(), store.classes
    sizes = np.bincount(labels, minlength=len(classes))
    if not np.array_equal(sizes, counts.class_sizes):
        raise ValueError(f"shards were computed on other images than {store_path}")
    baseline_hits = np.bincount(
        labels, weights=logits.argmax(1) == labels, minlength=len(classes)
    ).astype(np.int64)
    baseline_prob = np.bincount(
        labels, weights=softmax_true_class(logits, labels), minlength=len(classes)
    )
    mismatch = int(np.abs(baseline_hits - counts.baseline_correct).sum())
    print(
        f"{len(counts.units)} units, method {counts.method}; baseline through the replay path "
        f"differs from the full forward in {mismatch} class count(s)",
        file=sys.stderr,
    )
    tables = drop_tables(
        counts.units,
        counts.correct,
        counts.prob_sum,
        baseline_hits,
        baseline_prob,
        sizes,
        classes,
        thresholds=ablation["hurt_thresholds"],
        near_ties=counts.near_ties,
    )
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
            handle.create_dataset("class_sizes", data=sizes)
            handle.create_dataset("baseline_correct", data=baseline_hits)
            handle.attrs["classes"] = list(classes)
            handle.attrs.update({key: attrs[key] for key in ("model", "layer", "basis", "mode")})
    worst = tables.drops.sort_values("max_class_drop", ascending=False).head(3)
    print(worst.to_string(index=False), file=sys.stderr)


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.shards,  # noqa: F821
            snakemake.input.store,  # noqa: F821
            snakemake.output.drops,  # noqa: F821
            snakemake.output.class_drops,  # noqa: F821
            snakemake.output.prob_drops,  # noqa: F821
            snakemake.params.ablation,  # noqa: F821
        )
