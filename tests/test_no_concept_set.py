"""A model without a concept set: concept IoU skipped, every table, figure and the summary say so.

One tiny Snakemake run with two models: `plain` (a tinyalex trained here, which keeps the world's
concept set by default) and `resnet` (a seeded torchvision ResNet-18 whose weights the test
writes, with no `concept_set`). Plus library-level checks of the same behaviour on small tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_runs import snakemake, tiny_config

from unitablation.concept_status import NO_CONCEPT_SET, concepts_measured, unmeasured_concepts
from unitablation.statistics import correlation_table
from unitablation.tables import comparison_row

PLAIN_LAYER = "features.relu5"
RESNET_LAYER = "layer4"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run of `plain` (world concept set) and `resnet` (no concept set), exit 0."""
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("no_concept_set")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), root / "resnet18.pt")
    config = tiny_config()
    config["models"] = {
        "plain": {**config["models"]["plain"], "layers": [PLAIN_LAYER]},
        "resnet": {
            "arch": "resnet18",
            "weights": str(root / "resnet18.pt"),
            "num_classes": 3,
            "eval_images": "results/world/val",
            "layers": [RESNET_LAYER],
            "preprocess": {"resize": None, "crop": None},
        },
    }
    config["ablation"]["shard_size"] = 512  # one shard per layer
    config["rotation"]["seeds"] = []  # the unit basis is enough: rotated bases add only time
    config["cumulative"] = {"max_k": 2}
    config["analysis"] = {"bootstrap": 20, "permutations": 20}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(root, "--cores", "2", config=path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_no_concept_jobs_run_for_the_model_without_a_concept_set(run: Path) -> None:
    resnet = run / "results" / "resnet"
    assert not list(resnet.rglob("concepts.csv")) and not list(resnet.rglob("concepts.h5"))
    assert not (resnet / "activations" / "concept").exists()
    assert not (run / "results/logs/concept_iou/resnet").exists()
    # the tinyalex keeps the world's concept set when its entry names none
    assert (run / f"results/plain/{PLAIN_LAYER}/unit/concepts.csv").is_file()
    assert (run / f"results/plain/activations/concept/{PLAIN_LAYER}.h5").is_file()


def test_browser_cards_have_no_concept_images_without_a_concept_set(run: Path) -> None:
    def data(model: str, layer: str) -> dict:
        text = (run / f"results/browser/data/{model}/{layer}/unit.js").read_text()
        return json.loads(text[len("unitBrowser.register(") : -len(");\n")])

    resnet = data("resnet", RESNET_LAYER)
    assert not resnet["has_concepts"] and len(resnet["rows"]) == 512
    assert all(card["concept_images"] == [] for card in resnet["cards"])
    assert all(len(card["eval_images"]) == 4 for card in resnet["cards"])
    assert data("plain", PLAIN_LAYER)["has_concepts"]
    assert (run / "results/browser/index.html").is_file()


def test_unit_table_keeps_concept_columns_empty(run: Path) -> None:
    units = pd.read_csv(run / f"results/resnet/{RESNET_LAYER}/unit/units.csv")
    assert len(units) == 512
    for column in ("iou", "concept", "concept_category", "is_detector", "threshold"):
        assert column in units and units[column].isna().all(), column
    assert "concept_class" in units and units["concept_class"].isna().all()
    assert not concepts_measured(units)
    plain = pd.read_csv(run / f"results/plain/{PLAIN_LAYER}/unit/units.csv")
    assert concepts_measured(plain) and plain["is_detector"].dtype == bool
    log = (run / f"results/logs/unit_table/resnet/{RESNET_LAYER}/unit.log").read_text()
    assert f"{NO_CONCEPT_SET}, concept IoU not measured" in log


def test_statistics_give_the_reason(run: Path) -> None:
    layer = run / f"results/resnet/{RESNET_LAYER}/unit"
    correlations = pd.read_csv(layer / "correlations.csv", keep_default_na=False)
    iou = correlations[correlations["attribute"] == "iou"]
    assert len(iou) == 2 and (iou["undefined_reason"] == NO_CONCEPT_SET).all()
    assert (iou["spearman"] == "").all() and (iou["n_units"] == 0).all()
    others = correlations[correlations["attribute"] == "selectivity"]
    assert (others["undefined_reason"] != NO_CONCEPT_SET).all()
    prediction = pd.read_csv(layer / "class_prediction.csv")
    concept = prediction[prediction["attribute"] == "concept_class"]
    assert (concept["n_units"] == 0).all() and concept["top1_hit_rate"].isna().all()
    plain = pd.read_csv(run / f"results/plain/{PLAIN_LAYER}/unit/correlations.csv")
    assert not (plain["undefined_reason"] == NO_CONCEPT_SET).any()


def test_comparison_and_summary_cope_with_the_mix(run: Path) -> None:
    rotation = pd.read_csv(run / "results/comparison/rotation.csv")
    by_model = {model: rows for model, rows in rotation.groupby("model")}
    assert by_model["resnet"]["n_detectors"].isna().all()
    assert by_model["resnet"]["iou_mean"].isna().all()
    assert by_model["plain"]["n_detectors"].notna().all()
    summary = (run / "results/summary.md").read_text()
    assert f"model `resnet`: {NO_CONCEPT_SET}, concept IoU not measured" in summary
    assert "`plain`" in summary and "model `plain`: no concept set" not in summary
    assert f"concept detectors not measured ({NO_CONCEPT_SET})" in summary


def test_figures_are_written_and_say_no_concept_set(run: Path) -> None:
    figures = run / "results/figures"
    for stem in (
        f"resnet/{RESNET_LAYER}/examples",
        f"resnet/{RESNET_LAYER}/attributes",
        "resnet/rotation",
        "resnet/class_prediction",
        "comparison/variants",
        f"plain/{PLAIN_LAYER}/examples",
    ):
        for suffix in ("png", "pdf"):
            assert (figures / f"{stem}.{suffix}").stat().st_size > 0, stem
    log = (run / f"results/logs/figure_examples/resnet/{RESNET_LAYER}.log").read_text()
    assert NO_CONCEPT_SET in log


def units_without_concepts(n: int = 6) -> pd.DataFrame:
    """A units.csv-like table of a layer without a concept set."""
    rng = np.random.default_rng(0)
    units = pd.DataFrame(
        {
            "unit": np.arange(n),
            "overall_drop": rng.random(n),
            "max_class_drop": rng.random(n) * 10,
            "selectivity": rng.random(n),
            "dead": False,
            "constant": False,
        }
    )
    return units.merge(unmeasured_concepts(np.arange(n)), on="unit")


def test_correlation_rows_of_an_unmeasured_attribute_name_the_reason() -> None:
    units = units_without_concepts()
    table = correlation_table(units, bootstrap=10, unmeasured={"iou": NO_CONCEPT_SET})
    iou = table[table["attribute"] == "iou"]
    assert (iou["undefined_reason"] == NO_CONCEPT_SET).all() and iou["spearman"].isna().all()
    plain = correlation_table(units, bootstrap=10)
    reasons = plain.loc[plain["attribute"] == "iou", "undefined_reason"]
    assert (reasons == "fewer than 3 units with finite values").all()
    selectivity = table[table["attribute"] == "selectivity"]
    assert selectivity["spearman"].notna().all()


def test_comparison_row_leaves_detectors_empty_without_a_concept_set() -> None:
    units = units_without_concepts()
    units["most_hurt_class"] = "a"
    empty = pd.DataFrame(columns=["attribute", "target", "spearman"])
    row = comparison_row(
        units, empty, pd.DataFrame(), 90.0, {"model": "m", "layer": "l", "basis": "unit"}
    )
    assert np.isnan(row["n_detectors"]) and np.isnan(row["iou_mean"])
    units["iou"] = 0.0
    units["is_detector"] = [True, False, True, False, False, False]
    row = comparison_row(
        units, empty, pd.DataFrame(), 90.0, {"model": "m", "layer": "l", "basis": "unit"}
    )
    assert row["n_detectors"] == 2
