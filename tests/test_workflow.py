"""The real pipeline on a tiny config: from the generated world to HDF5 activations."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_runs import ROOT, TINY, VARIANTS, snakemake

from unitablation.figures import registry as figure_registry
from unitablation.store import ActivationStore

pytestmark = pytest.mark.workflow


def test_tiny_run_writes_every_store(tiny_run: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    world = config["world"]
    for variant in VARIANTS:
        results = tiny_run / "results" / variant
        with ActivationStore(results / "activations" / "eval.h5") as outputs:
            assert len(outputs) == world["n_classes"] * world["val_per_class"]
            counts = np.bincount(outputs.labels(), minlength=world["n_classes"])
            assert counts.tolist() == [world["val_per_class"]] * world["n_classes"]
            assert outputs.logits().shape == (len(outputs), world["n_classes"])
            assert outputs.layers == [] and len(outputs.classes) == world["n_classes"]
            paths = [path.decode() for path in outputs.file["paths"][:]]
            assert all((tiny_run / "results/world/val" / path).is_file() for path in paths)
            logits = outputs.logits()
        for layer in config["layers"]:  # one store per layer, same rows and logits
            with ActivationStore(results / "activations" / "eval" / f"{layer}.h5") as store:
                assert store.layers == [layer]
                np.testing.assert_array_equal(store.logits(), logits)
                maps = store.layer(layer)["maps"]
                assert maps.shape == (len(store), 8, 4, 4)
                np.testing.assert_allclose(
                    store.layer(layer)["mean"][:], maps[:].mean((2, 3)), atol=1e-6
                )
                assert (maps[:] >= 0).all()  # post-ReLU
                assert (
                    store.file.attrs["split"] == "eval"
                    and len(store.file.attrs["weights_sha256"]) == 64
                )
            with ActivationStore(results / "activations" / "concept" / f"{layer}.h5") as store:
                assert len(store) == world["concept_images"]
                assert (store.labels() == -1).all()
                assert store.layer(layer)["maps"].shape[1:] == (8, 4, 4)
        baseline = pd.read_csv(results / "baseline.csv")
        assert list(baseline["class"])[-1] == "overall"
        assert baseline["n_images"].iloc[-1] == len(paths)
        assert baseline["n_correct"].iloc[:-1].sum() == baseline["n_correct"].iloc[-1]
        history = pd.read_csv(results / "training.csv")
        assert history["epoch"].tolist() == [1]
        log_name = f"{variant}_eval_features.relu5.log"
        log = (tiny_run / "results/logs/extract_activations" / log_name).read_text()
        assert "device: cpu" in log and "100%" in log


DROP_COLUMNS = [
    "unit",
    "overall_drop",
    "max_class_drop",
    "most_hurt_class",
    "n_tied",
    "n_classes_hurt_5",
    "n_classes_hurt_10",
    "n_classes_hurt_20",
    "top5_mean_drop",
]


ATTRIBUTE_COLUMNS = [
    "unit",
    "l1_in",
    "l1_in_bn",
    "l1_out",
    "selectivity",
    "selective_class",
    "class_correlation",
    "correlated_class",
    "mean_activation",
    "active_fraction",
    "activation_variance",
]


def test_tiny_run_writes_drop_tables(tiny_run: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    n_classes = config["world"]["n_classes"]
    for variant in VARIANTS:
        classes = pd.read_csv(tiny_run / "results" / variant / "baseline.csv")["class"][:-1]
        for layer in config["layers"]:
            folder = tiny_run / "results" / variant / layer / "unit"
            drops = pd.read_csv(folder / "drops.csv")
            assert set(DROP_COLUMNS) <= set(drops.columns)
            assert drops["unit"].tolist() == list(range(8))
            assert drops["max_class_drop"].between(-100, 100).all()
            assert drops["most_hurt_class"].isin(classes).all()
            class_drops = pd.read_csv(folder / "class_drops.csv")
            assert list(class_drops.columns) == ["unit", *classes]
            np.testing.assert_allclose(
                class_drops[list(classes)].max(axis=1), drops["max_class_drop"], atol=1e-9
            )
            assert sorted(p.name for p in (folder / "shards").iterdir()) == ["0000.h5", "0001.h5"]
            import h5py

            with h5py.File(folder / "class_prob_drops.h5") as handle:
                assert handle["class_prob_drops"].shape == (8, n_classes)
            attributes = pd.read_csv(folder / "attributes.csv")
            assert attributes["unit"].tolist() == list(range(8))
            assert set(ATTRIBUTE_COLUMNS) <= set(attributes.columns)
            assert (attributes["l1_in"] > 0).all() and (attributes["l1_out"] > 0).all()
            assert attributes["selective_class"].isin(classes).all()
            with h5py.File(folder / "attributes.h5") as handle:
                assert handle["class_correlation"].shape == (8, n_classes)
            concepts = pd.read_csv(folder / "concepts.csv")
            assert concepts["unit"].tolist() == list(range(8))
            assert concepts["iou"].between(0, 1).all()
            assert {"concept", "concept_category", "iou_color"} <= set(concepts)
            assert "is_detector" not in concepts  # unit_table decides it (concepts.iou_threshold)
            with h5py.File(folder / "concepts.h5") as handle:
                assert handle["iou"].shape[0] == 8
                np.testing.assert_allclose(handle["iou"][:].max(1), concepts["iou"], atol=1e-6)
                assert handle["top_images"].shape == (8, min(10, config["world"]["concept_images"]))


def test_rotated_basis_drops(tiny_run: Path) -> None:
    """The rotation control writes the same drop tables for basis rot<seed>, from other numbers."""
    config = yaml.safe_load(TINY.read_text())
    for variant in VARIANTS:
        for layer in config["layers"]:
            unit = pd.read_csv(tiny_run / "results" / variant / layer / "unit" / "drops.csv")
            rotated = pd.read_csv(tiny_run / "results" / variant / layer / "rot7" / "drops.csv")
            assert list(rotated.columns) == list(unit.columns)
            assert rotated["unit"].tolist() == list(range(8))
            log = tiny_run / "results/logs/ablate_shard" / variant / layer / "rot7" / "0000.log"
            assert "rotated directions" in log.read_text()


def test_rotated_basis_attributes_and_concepts(tiny_run: Path) -> None:
    """Attributes and IoU exist in the rotated basis, computed from the rotated maps."""
    from unitablation.attributes import rotated_summaries
    from unitablation.rotation import haar_rotation

    config = yaml.safe_load(TINY.read_text())
    rotation = haar_rotation(8, 7)
    for variant in VARIANTS:
        for layer in config["layers"]:
            folder = tiny_run / "results" / variant / layer
            for table in ("attributes.csv", "concepts.csv"):
                unit = pd.read_csv(folder / "unit" / table)
                rotated = pd.read_csv(folder / "rot7" / table)
                assert list(rotated.columns) == list(unit.columns)
                assert len(rotated) == 8
            attributes = pd.read_csv(folder / "rot7" / "attributes.csv")
            store_path = tiny_run / "results" / variant / "activations" / "eval" / f"{layer}.h5"
            with ActivationStore(store_path) as store:
                maps = store.layer(layer)["maps"][:]
            means, maxima = rotated_summaries(maps, rotation)
            np.testing.assert_allclose(attributes["mean_activation"], means.mean(0), rtol=1e-5)
            np.testing.assert_allclose(
                attributes["active_fraction"], (maxima > 0).mean(0), rtol=1e-7
            )


def test_analysis_tables_join_and_summarise_the_per_unit_tables(tiny_run: Path) -> None:
    """units.csv repeats the drop, attribute and concept tables; statistics cover every pair."""
    from unitablation.attribute_registry import class_attributes, numeric_attributes
    from unitablation.statistics import TARGETS

    config = yaml.safe_load(TINY.read_text())
    for variant, layer, basis in itertools.product(VARIANTS, config["layers"], ("unit", "rot7")):
        folder = tiny_run / "results" / variant / layer / basis
        units = pd.read_csv(folder / "units.csv")
        assert units["unit"].tolist() == list(range(8))
        assert set(units[["model", "layer", "basis"]].itertuples(index=False)) == {
            (variant, layer, basis)
        }
        for table in ("drops.csv", "attributes.csv", "concepts.csv"):
            source = pd.read_csv(folder / table).drop(columns=["method"], errors="ignore")
            pd.testing.assert_frame_equal(
                units[source.columns], source, check_dtype=False, check_exact=False, rtol=1e-6
            )
        first = units["top5_hurt_classes"].str.split(";").str[0]
        assert (first == units["most_hurt_class"]).all()
        correlations = pd.read_csv(folder / "correlations.csv")
        assert list(zip(correlations["attribute"], correlations["target"], strict=True)) == [
            (a, t) for a in numeric_attributes() for t in TARGETS
        ]
        assert (correlations["n_units"] + correlations["n_excluded"] == 8).all()
        prediction = pd.read_csv(folder / "class_prediction.csv")
        assert prediction["attribute"].tolist() == [a for a in class_attributes() for _ in "12"]
        assert prediction["unit_set"].tolist() == ["hurting", "all"] * len(class_attributes())
        assert np.allclose(prediction["chance_top1"], 1 / config["world"]["n_classes"])
        if basis != "unit":
            assert not units["dead"].any()  # a rotated direction is never dead
        counted = units[units["selective_class"].notna() & ~units["dead"] & ~units["constant"]]
        for unit_set, members in (
            ("hurting", counted[counted["max_class_drop"] > 0]),
            ("all", counted),
        ):
            row = prediction.set_index(["attribute", "unit_set"]).loc[("selective_class", unit_set)]
            assert row["n_units"] == len(members)
            if len(members):
                hits = (members["selective_class"] == members["most_hurt_class"]).mean()
                assert row["top1_hit_rate"] == pytest.approx(hits)
        concentration = pd.read_csv(folder / "concentration.csv")
        assert concentration["unit"].tolist() == list(range(8))
        np.testing.assert_allclose(
            concentration["max_class_drop"], units["max_class_drop"], atol=1e-3
        )
        losing = concentration["n_lost"] > 0
        assert concentration.loc[losing, "p_value"].between(0, 1, inclusive="right").all()
        assert concentration.loc[~losing, "p_value"].isna().all()
    variants = pd.read_csv(tiny_run / "results/comparison/variants.csv")
    rotation = pd.read_csv(tiny_run / "results/comparison/rotation.csv")
    assert len(variants) == len(VARIANTS) * len(config["layers"]) and set(variants["basis"]) == {
        "unit"
    }
    assert len(rotation) == 2 * len(variants)
    row = variants[(variants["model"] == "plain") & (variants["layer"] == "features.relu5")]
    units = pd.read_csv(tiny_run / "results/plain/features.relu5/unit/units.csv")
    assert row["max_class_drop_mean"].item() == pytest.approx(units["max_class_drop"].mean())
    assert row["n_detectors"].item() == units["is_detector"].sum()
    concentration = pd.read_csv(tiny_run / "results/plain/features.relu5/unit/concentration.csv")
    assert row["n_units_losing"].item() == (concentration["n_lost"] > 0).sum()
    assert row["n_concentrated"].item() == concentration["concentrated"].sum()
    assert units["is_detector"].tolist() == (units["iou"] >= 0.04).tolist()
    baseline = pd.read_csv(tiny_run / "results/plain/baseline.csv")
    assert row["baseline_accuracy"].item() == pytest.approx(baseline["accuracy"].iloc[-1], 1e-4)


def test_cumulative_tables_figures_and_summary(tiny_run: Path) -> None:
    """Every figure exists as PNG and PDF; the summary quotes the comparison tables."""
    config = yaml.safe_load(TINY.read_text())
    for variant, layer in itertools.product(VARIANTS, config["layers"]):
        table = pd.read_csv(tiny_run / "results" / variant / layer / "unit" / "cumulative.csv")
        assert set(table["selection"]) == {"top", "random"}
        assert sorted(set(table["k"])) == [1, 2, 4, 8]
        assert (table["n_ranking_images"] + table["n_measure_images"] == 4).all()
    figures = sorted((tiny_run / "results" / "figures").rglob("*.png"))
    per_scope = {s: len(figure_registry.figures(s)) for s in ("layer", "model", "study")}
    per_model = per_scope["model"] + per_scope["layer"] * len(config["layers"])
    assert len(figures) == per_scope["study"] + len(VARIANTS) * per_model
    for png in figures:
        assert png.stat().st_size > 5000 and png.with_suffix(".pdf").stat().st_size > 1000
    summary = (tiny_run / "results" / "summary.md").read_text()
    variants = pd.read_csv(tiny_run / "results/comparison/variants.csv")
    for item in variants.groupby("model", sort=False).tail(1).itertuples(index=False):
        assert f"`{item.model}` (top-1 {item.baseline_accuracy:.1f}%)" in summary
        assert f"{int(item.n_detectors)} of {int(item.n_units)} units concept detectors" in summary
        assert f"mean max class drop {item.max_class_drop_mean:.2f} points" in summary
    for heading in ("RQ1", "RQ2", "RQ3", "RQ4", "cumulative ablation"):
        assert f"**{heading}" in summary or heading in summary


def test_report_renders_in_headless_chromium(tiny_run: Path) -> None:
    """`snakemake --report` embeds every figure and table; Chromium loads it and shows each."""
    from report_check import check_report

    report = tiny_run / "results" / "report.html"
    result = snakemake(tiny_run, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    check = check_report(report)
    figures = sorted((tiny_run / "results" / "figures").rglob("*.png"))
    assert len(check.figures) == len(figures)  # every PNG figure, embedded and decodable
    assert len(check.displayed) == len(check.figures)  # and each shown by clicking through the app
    assert {"Figures", "Tables", "Comparison", "Summary"} <= set(check.categories)


def test_pipeline_drops_equal_a_full_forward_with_a_zeroing_hook(tiny_run: Path) -> None:
    """Exactness on the trained tiny models, end to end: the shards' per-class counts equal
    those of the whole network run with a hook that zeroes the unit."""
    import h5py
    import torch

    from unitablation.images import ImageFolderSet, default_preprocess, stack_dataset
    from unitablation.models import load_configured_model

    config = yaml.safe_load(TINY.read_text())
    images, labels = stack_dataset(
        ImageFolderSet(tiny_run / "results/world/val", default_preprocess("tinyalex"))
    )
    for variant in VARIANTS:
        entry = {**config["models"][variant], "image_size": config["world"]["image_size"]}
        weights = tiny_run / "results" / variant / "model.pt"
        model, _, classes = load_configured_model(entry, weights, torch.device("cpu"))
        for layer in config["layers"]:
            module = dict(model.named_modules())[layer]
            expected = []
            for unit in range(8):
                handle = module.register_forward_hook(
                    lambda _m, _i, out, unit=unit: out.index_fill(1, torch.tensor([unit]), 0.0)
                )
                with torch.no_grad():
                    hits = (model(images).argmax(1) == labels).double()
                handle.remove()
                expected.append(torch.bincount(labels, hits, len(classes)).long().numpy())
            path = tiny_run / "results" / variant / layer / "unit" / "class_prob_drops.h5"
            with h5py.File(path) as handle:
                np.testing.assert_array_equal(handle["correct"][:], np.stack(expected))


def test_shard_size_does_not_change_results(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    workdir = tmp_path / "reshard"
    shutil.copytree(tiny_run / "results", workdir / "results")
    shutil.copytree(tiny_run / ".snakemake", workdir / ".snakemake")
    config = yaml.safe_load(TINY.read_text())
    config["ablation"]["shard_size"] = 3
    path = tmp_path / "reshard.yaml"
    path.write_text(yaml.safe_dump(config))
    tables = [
        f"results/{variant}/{layer}/{basis}/{table}"
        for variant, layer, basis, table in itertools.product(
            VARIANTS, config["layers"], ("unit", "rot7"), ("drops.csv", "class_drops.csv")
        )
    ]
    result = snakemake(workdir, "--cores", "2", *tables, config=path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for variant in VARIANTS:
        for layer in config["layers"]:
            for basis, table in itertools.product(
                ("unit", "rot7"), ("drops.csv", "class_drops.csv")
            ):
                relative = Path("results", variant, layer, basis, table)
                assert (workdir / relative).read_bytes() == (tiny_run / relative).read_bytes()
            shards = sorted(p.name for p in (workdir / relative.parent / "shards").iterdir())
            assert shards[-3:] == ["0000.h5", "0001.h5", "0002.h5"]


def test_broden_and_image_folder_layout(tiny_run: Path) -> None:
    world = tiny_run / "results" / "world"
    assert sorted(p.name for p in world.iterdir()) == ["broden", "train", "val"]
    index = pd.read_csv(world / "broden" / "index.csv")
    assert list(index.columns) == [
        "image",
        "split",
        "ih",
        "iw",
        "sh",
        "sw",
        "color",
        "object",
        "part",
        "material",
        "scene",
        "texture",
    ]
    assert (index["sh"] * 2 == index["ih"]).all()
    for name in ("category.csv", "label.csv", "c_color.csv", "c_object.csv"):
        assert (world / "broden" / name).is_file()


def test_second_dry_run_has_nothing_to_do(tiny_run: Path) -> None:
    result = snakemake(tiny_run, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_wrong_layer_fails_at_start_listing_valid_names(tmp_path: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    config["models"]["plain"]["layers"] = ["features.relu7"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", config=bad)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "models.plain.layers" in output and "['features.relu7']" in output
    assert "valid module paths are: " in output and "features.relu5" in output
    assert not (tmp_path / "results").exists()


def test_schema_rejects_bad_values_before_any_job(tmp_path: Path) -> None:
    config = yaml.safe_load(TINY.read_text())
    config["world"]["n_classes"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", config=bad)
    assert result.returncode != 0 and "n_classes" in result.stdout + result.stderr


def test_lint_is_clean(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "--lint", config=ROOT / "config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_torchvision_model_from_local_weights(tmp_path: Path) -> None:
    """A torchvision architecture with a local checkpoint runs through the same rules."""
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    config = yaml.safe_load(TINY.read_text())
    config["models"] = {
        "resnet": {
            "arch": "resnet18",
            "weights": str(weights),
            "num_classes": 3,
            "eval_images": "results/world/val",
            "concept_set": "results/world/broden",
            "layers": ["layer3", "layer4"],
            "preprocess": {"resize": None, "crop": None},
        }
    }
    config["ablation"]["shard_size"] = 512  # one shard per layer: this test is about the model
    config["rotation"]["seeds"] = []
    path = tmp_path / "resnet.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "2", config=path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "results" / "resnet" / "model.pt").exists()  # nothing trained
    with ActivationStore(tmp_path / "results/resnet/activations/eval/layer4.h5") as store:
        assert store.layer("layer4")["maps"].shape == (12, 512, 1, 1)
        assert store.file.attrs["arch"] == "resnet18"
    with ActivationStore(tmp_path / "results/resnet/activations/eval/layer3.h5") as store:
        assert store.layer("layer3")["maps"].shape == (12, 256, 2, 2)
    baseline = pd.read_csv(tmp_path / "results/resnet/baseline.csv")
    assert baseline["n_images"].iloc[-1] == 12
