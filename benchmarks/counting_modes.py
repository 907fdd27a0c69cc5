"""Concept detectors under the three counting rules, from the stores of a finished run.

For every results/<model>/activations/concept/<layer>.h5 of a run (unit basis), computes the
Network Dissection IoU of every unit with every concept of the run's Broden folder under
`concepts.counting` netdissect, lite and union (labels decoded once), and prints per
(model, layer): detectors (best IoU >= --iou-threshold) under each rule, units whose best concept
or detector status differs between rules, and max |IoU difference| between rules over the whole
units x concepts matrix. Where the run's own results/<model>/<layer>/unit/concepts.h5 exists with
the same quantile, it also checks that the recomputed matrix of the rule the run used (its
`counting` attribute; union for runs made before the attribute existed) equals it. Writes
everything as JSON.

    python benchmarks/counting_modes.py [--results results] [--broden results/world/broden]
        [--quantile 0.005] [--iou-threshold 0.04] [--json results/benchmarks/counting_modes.json]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import h5py
import numpy as np
from reporting import print_table, write_report

from unitablation.broden import Broden, read_broden
from unitablation.concepts import (
    COUNTING,
    ConceptLabels,
    ConceptResult,
    concept_iou,
    concept_labels,
    store_reader,
)
from unitablation.store import ActivationStore

PAIRS = list(itertools.combinations(COUNTING, 2))


def stores(results: Path) -> list[tuple[str, str, Path]]:
    """(model, layer, store path) of every concept-set store under a results folder, sorted."""
    found = sorted(results.glob("*/activations/concept/*.h5"))
    return [(path.parents[2].name, path.stem, path) for path in found]


def layer_results(
    path: Path, layer: str, labels: ConceptLabels, broden: Broden, quantile: float
) -> dict[str, ConceptResult]:
    """The layer's IoU under every counting rule (unit basis)."""
    with ActivationStore(path) as store:
        n_units = store.layer(layer)["mean"].shape[1]
        return {
            counting: concept_iou(
                store_reader(store, layer, broden), n_units, labels, quantile, counting=counting
            )
            for counting in COUNTING
        }


def run_check(
    results: Path, model: str, layer: str, found: dict[str, ConceptResult], quantile: float
) -> object:
    """max |IoU diff| against the run's own concepts.h5 under its rule and quantile, else None."""
    path = results / model / layer / "unit" / "concepts.h5"
    if not path.is_file():
        return None
    with h5py.File(path, "r") as handle:
        counting = str(handle.attrs.get("counting", "union"))
        if float(handle.attrs["quantile"]) != quantile:
            return None
        stored = handle["iou"][:]
    return {"counting": counting, "max_abs_diff": float(np.abs(stored - found[counting].iou).max())}


def summarise(found: dict[str, ConceptResult], threshold: float) -> dict[str, object]:
    """Detector counts per rule and, per pair of rules, IoU and decision differences."""
    best = {counting: result.best() for counting, result in found.items()}
    row: dict[str, object] = {
        f"detectors_{c}": int((best[c][1] >= threshold).sum()) for c in COUNTING
    }
    for a, b in PAIRS:
        key = f"{a}_vs_{b}"
        row[f"max_abs_iou_diff_{key}"] = float(np.abs(found[a].iou - found[b].iou).max())
        row[f"best_concept_changed_{key}"] = int((best[a][0] != best[b][0]).sum())
        row[f"detector_changed_{key}"] = int(
            ((best[a][1] >= threshold) != (best[b][1] >= threshold)).sum()
        )
    return row


def main() -> None:
    """Compute, print and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--broden", type=Path, help="default: <results>/world/broden")
    parser.add_argument("--quantile", type=float, default=0.005)
    parser.add_argument("--iou-threshold", type=float, default=0.04)
    parser.add_argument(
        "--json", type=Path, help="default: <results>/benchmarks/counting_modes.json"
    )
    args = parser.parse_args()
    broden_root = args.broden or args.results / "world" / "broden"
    found_stores = stores(args.results)
    if not found_stores:
        raise SystemExit(f"no {args.results}/<model>/activations/concept/<layer>.h5 found")
    broden = read_broden(broden_root)
    labels = concept_labels(broden)
    rows = []
    for model, layer, path in found_stores:
        found = layer_results(path, layer, labels, broden, args.quantile)
        row = {"model": model, "layer": layer, "units": int(found["union"].iou.shape[0])}
        row |= summarise(found, args.iou_threshold)
        row["run_check"] = run_check(args.results, model, layer, found, args.quantile)
        rows.append(row)
        print(f"{model} {layer}: done", file=sys.stderr)
    print(
        f"# {broden_root}: {len(labels)} images, {len(labels.index.numbers)} concepts; quantile "
        f"{args.quantile}; detector: best IoU >= {args.iou_threshold}; unit basis"
    )
    columns = [("model", "model"), ("layer", "layer"), ("units", "units")]
    columns += [(f"detectors_{c}", f"det {c}") for c in COUNTING]
    columns += [(f"max_abs_iou_diff_{a}_vs_{b}", f"max|dIoU| {a}-{b}") for a, b in PAIRS]
    columns += [(f"detector_changed_{a}_vs_{b}", f"det chg {a}-{b}") for a, b in PAIRS]
    print_table(rows, columns)
    checks = [row["run_check"] for row in rows if row["run_check"] is not None]
    if checks:
        worst = max(check["max_abs_diff"] for check in checks)
        print(f"recomputed vs the run's concepts.h5 (its own rule): max |IoU diff| {worst:.3g}")
    overall = {
        f"{a}_vs_{b}": max(row[f"max_abs_iou_diff_{a}_vs_{b}"] for row in rows) for a, b in PAIRS
    }
    print(
        "max |IoU diff| over all layers: " + ", ".join(f"{k} {v:.4g}" for k, v in overall.items())
    )
    out = args.json or args.results / "benchmarks" / "counting_modes.json"
    report = {
        "settings": {
            "results": str(args.results),
            "broden": str(broden_root),
            "quantile": args.quantile,
            "iou_threshold": args.iou_threshold,
        },
        "rows": rows,
        "max_abs_iou_diff": overall,
    }
    write_report(out, report)


if __name__ == "__main__":
    main()
