"""Class names on the real-model paths: class list files, their precedence, the shipped lists,
Broden's "-s" scene labels, and two pipeline runs on torchvision checkpoints without names.

The pipeline module fixture writes a small world with the library into a user-data layout and
runs two ResNet-18 checkpoints (random weights, plain state dicts: no class names): `named` on
the world's class folders with Broden-style scene labels ("alley-s"), to units.csv; `digits`
on the same images with classes renamed "0".."9" (and one dead unit, so that class columns
mix digits and empty cells), to class_prediction.csv.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
import torchvision
import yaml
from workflow_runs import ROOT, snakemake, tiny_config, write_config

from unitablation.broden import read_broden
from unitablation.class_lists import (
    ClassList,
    format_class_list,
    model_class_names,
    parse_class_list,
    read_class_list,
)
from unitablation.concepts import concept_classes, concept_labels
from unitablation.eval_sets import places365_folder_names
from unitablation.models import load_configured_model, save_checkpoint
from unitablation.store import ActivationStore
from unitablation.world import WorldSpec
from unitablation.world_export import write_concept_set, write_image_folder

CLASSES_DIR = ROOT / "resources" / "classes"
DIGITS = [str(k) for k in range(10)]
DEAD_UNIT = 5
LAYER = "layer4"


# --- class list files ---------------------------------------------------------------------


def test_one_and_two_column_lists(tmp_path: Path) -> None:
    plain = parse_class_list("# a comment\nalley\n\nbeach\n", "a.txt")
    assert plain == ClassList(["alley", "beach"], ["alley", "beach"], "a.txt")
    paired = parse_class_list("n01440764\ttench\nn01443537\tgoldfish\n", "b.txt")
    assert paired.names == ["tench", "goldfish"]
    assert paired.folders == ["n01440764", "n01443537"]
    path = tmp_path / "c.txt"
    path.write_text(format_class_list(["3", "10"], ["x", "y"], "two\nlines"))
    assert path.read_text() == "# two\n# lines\nx\t3\ny\t10\n"
    assert read_class_list(path) == ClassList(["3", "10"], ["x", "y"], str(path))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "no class names"),
        ("a\nb\na\n", "listed twice"),
        ("a\nb;c\n", "contains ';'"),
        ("a\n b\n", "untrimmed"),
        ("x\ta\nb\n", "folder column"),
        ("x\ta\tb\n", "line 1: more than two"),
    ],
)
def test_bad_list_names_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(fragment)) as error:
        read_class_list(path)
    assert "bad.txt" in str(error.value)
    with pytest.raises(ValueError, match="missing.txt"):
        read_class_list(tmp_path / "missing.txt")


def test_precedence_checkpoint_list_folders_indices() -> None:
    listed = ClassList(["tench", "goldfish"], ["n1", "n2"], "list.txt")
    assert model_class_names(2, ["a", "b"], None, ["x", "y"]) == ["a", "b"]
    assert model_class_names(2, None, listed, ["x", "y"]) == ["tench", "goldfish"]
    assert model_class_names(2, None, None, ["x", "y"]) == ["x", "y"]
    assert model_class_names(3, None, None, None) == ["0", "1", "2"]
    assert model_class_names(2, [0, 1], None, None) == ["0", "1"]  # recorded as numbers
    with pytest.raises(ValueError, match="list.txt names 2 classes but checkpoint w.pt has 3"):
        model_class_names(3, None, listed, None, weights="w.pt")
    with pytest.raises(ValueError, match="eval image folders names 2 classes"):
        model_class_names(3, None, None, ["x", "y"])
    with pytest.raises(ValueError, match="list.txt names .* but checkpoint w.pt records"):
        model_class_names(2, ["a", "b"], listed, None, weights="w.pt")


def test_loaded_model_takes_names_by_precedence(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=2)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    named = tmp_path / "named.pt"
    save_checkpoint(named, model, ["cat", "dog"])
    entry = {"arch": "resnet18"}
    listed = ClassList(["tench", "goldfish"], ["n1", "n2"], "list.txt")
    cpu = torch.device("cpu")
    assert load_configured_model(entry, plain, cpu)[2] == ["0", "1"]
    assert load_configured_model(entry, plain, cpu, ["x", "y"])[2] == ["x", "y"]
    assert load_configured_model(entry, plain, cpu, ["x", "y"], listed)[2] == ["tench", "goldfish"]
    assert load_configured_model(entry, named, cpu, ["x", "y"])[2] == ["cat", "dog"]
    with pytest.raises(ValueError, match="records the classes"):
        load_configured_model(entry, named, cpu, None, listed)


# --- the shipped lists -----------------------------------------------------------------------


def test_imagenet_list_is_torchvisions_names_in_wordnet_id_order() -> None:
    listed = read_class_list(CLASSES_DIR / "imagenet.txt")
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert listed.names == list(categories)
    assert len(listed.folders) == 1000 and listed.folders == sorted(set(listed.folders))
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in listed.folders)
    assert dict(zip(listed.folders, listed.names, strict=True))["n01440764"] == "tench"


def test_places365_list_is_the_prepared_folder_names() -> None:
    listed = read_class_list(CLASSES_DIR / "places365.txt")
    assert len(listed.names) == 365 and listed.names == listed.folders
    assert listed.names == sorted(listed.names)  # the folders' sorted order is the output order
    assert {"airfield", "bakery-shop", "field-wild", "zen_garden"} <= set(listed.names)
    assert all(re.fullmatch(r"[a-z_]+(-[a-z_]+)*", name) for name in listed.names)


def generator() -> ModuleType:
    """resources/classes/make_class_lists.py as a module."""
    path = CLASSES_DIR / "make_class_lists.py"
    spec = importlib.util.spec_from_file_location("make_class_lists", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def class_rows(text: str) -> list[str]:
    """The non-comment lines of a class list."""
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_generator_reproduces_the_shipped_lists(tmp_path: Path) -> None:
    """Source files rebuilt from the shipped lists give the shipped lists back."""
    places = read_class_list(CLASSES_DIR / "places365.txt").names
    paths = [f"/{name[0]}/{name.replace('-', '/')}" for name in places]
    assert places365_folder_names("".join(f"{p} {k}\n" for k, p in enumerate(paths))) == places
    categories = tmp_path / "categories_places365.txt"
    categories.write_text("".join(f"{path} {k}\n" for k, path in enumerate(paths)))
    imagenet = read_class_list(CLASSES_DIR / "imagenet.txt")
    synsets = tmp_path / "categories_hybrid1365.txt"
    synsets.write_text(
        "".join(f"{wnid} some name {k}\n" for k, wnid in enumerate(imagenet.folders))
    )
    generator().main(
        ["--imagenet-synsets", str(synsets), "--places365-categories", str(categories)]
        + ["--output", str(tmp_path)]
    )
    assert (tmp_path / "places365.txt").read_text() == (CLASSES_DIR / "places365.txt").read_text()
    assert class_rows((tmp_path / "imagenet.txt").read_text()) == class_rows(
        (CLASSES_DIR / "imagenet.txt").read_text()
    )


# --- Broden's scene labels -------------------------------------------------------------------


def rename_labels(broden: Path, names: dict[str, str]) -> None:
    """Rename labels in label.csv and c_<category>.csv (old name -> new name)."""
    for path in [broden / "label.csv", *broden.glob("c_*.csv")]:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        fields = list(rows[0])
        for row in rows:
            row["name"] = names.get(row["name"], row["name"])
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def world(root: Path, n_classes: int) -> tuple[Path, Path, list[str]]:
    """A small world: eval ImageFolder, Broden concept set and the class names."""
    spec = WorldSpec(32, n_classes, train_per_class=1, val_per_class=3, concept_images=30, seed=4)
    write_image_folder(root / "folders", spec)
    write_concept_set(root / "broden", spec)
    classes = sorted(p.name for p in (root / "folders" / "val").iterdir())
    return root / "folders" / "val", root / "broden", classes


def test_broden_scene_suffix_matches_the_class(tmp_path: Path) -> None:
    _, broden, classes = world(tmp_path, 4)
    labels = concept_labels(read_broden(broden))
    columns = list(range(len(labels.index.names))) + [-1]
    expected = concept_classes(labels, columns, classes)
    assert set(expected) - {""} == set(classes)  # every scene column names its class
    rename_labels(broden, {name: f"{name}-s" for name in classes})
    renamed = concept_labels(read_broden(broden))
    assert [n for n in renamed.index.names if n.endswith("-s")] == [f"{c}-s" for c in classes]
    assert concept_classes(renamed, columns, classes) == expected


# --- the pipeline --------------------------------------------------------------------------


def write_resnet(path: Path, n_classes: int, dead_unit: int | None = None) -> None:
    """ResNet-18 random weights as a plain state dict (no class names); a dead layer4 unit."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=n_classes)
    if dead_unit is not None:  # layer4 = relu(bn2(...) + identity): a huge negative bias kills it
        with torch.no_grad():
            model.layer4[1].bn2.weight[dead_unit] = 0.0
            model.layer4[1].bn2.bias[dead_unit] = -1e4
    torch.save(model.state_dict(), path)


def resnet_entry(data: Path) -> dict:
    """A resnet18 model entry on `data`'s folders at 32 x 32."""
    return {
        "arch": "resnet18",
        "weights": str(data / "resnet18.pt"),
        "eval_images": str(data / "val"),
        "concept_set": str(data / "broden"),
        "layers": [LAYER],
        "preprocess": {"resize": 32, "crop": 32},
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory after the two runs of the module docstring."""
    workdir = tmp_path_factory.mktemp("class_names")
    named, digits = workdir / "named", workdir / "digits"
    val, broden, classes = world(workdir / "world_named", 4)
    named.mkdir()
    val.rename(named / "val")
    broden.rename(named / "broden")
    rename_labels(named / "broden", {name: f"{name}-s" for name in classes})
    write_resnet(named / "resnet18.pt", len(classes))
    val, broden, classes = world(workdir / "world_digits", 10)
    digits.mkdir()
    for digit, name in zip(DIGITS, classes, strict=True):
        (val / name).rename(val / digit)
    val.rename(digits / "val")
    broden.rename(digits / "broden")
    rename_labels(digits / "broden", dict(zip(classes, DIGITS, strict=True)))
    write_resnet(digits / "resnet18.pt", 10, DEAD_UNIT)
    config = tiny_config()
    config["models"] = {"named": resnet_entry(named), "digits": resnet_entry(digits)}
    config["only_models"] = ["named", "digits"]
    config["rotation"] = {"seeds": []}
    config["ablation"].update(shard_size=512, units_per_call=64, batch_size=40)
    config["activations"]["batch_size"] = 40
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    targets = [
        f"results/named/{LAYER}/unit/units.csv",
        f"results/digits/{LAYER}/unit/class_prediction.csv",
    ]
    result = snakemake(workdir, "--cores", "2", *targets, config=path)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV as rows of strings, read without pandas."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.workflow
def test_checkpoint_without_names_finds_concept_implied_classes(pipeline: Path) -> None:
    classes = sorted(p.name for p in (pipeline / "named" / "val").iterdir())
    for split in ("eval", "concept"):
        with ActivationStore(pipeline / f"results/named/activations/{split}/{LAYER}.h5") as store:
            assert store.classes == classes
    implied = [
        row["concept_class"]
        for row in read_rows(pipeline / "results/named" / LAYER / "unit/units.csv")
    ]
    assert any(implied)
    assert set(implied) - {""} <= set(classes)


def hand_rates(
    units: list[dict[str, str]], attribute: str, unit_set: str
) -> tuple[int, float, float]:
    """Counted units and top-1/top-5 hit rates of one attribute, counted by hand from strings."""
    counted = [
        row
        for row in units
        if row[attribute] != ""
        and row["most_hurt_class"] != ""
        and row.get("dead", "False") != "True"
        and row.get("constant", "False") != "True"
        and (unit_set != "hurting" or float(row["max_class_drop"]) > 0)
    ]
    if not counted:
        return 0, float("nan"), float("nan")
    top1 = sum(row[attribute] == row["most_hurt_class"] for row in counted)
    top5 = sum(row[attribute] in row["top5_hurt_classes"].split(";") for row in counted)
    return len(counted), top1 / len(counted), top5 / len(counted)


@pytest.mark.workflow
def test_digit_class_names_keep_their_hit_rates(pipeline: Path) -> None:
    layer_dir = pipeline / "results/digits" / LAYER / "unit"
    with ActivationStore(pipeline / f"results/digits/activations/concept/{LAYER}.h5") as store:
        assert store.classes == DIGITS
    naive = pd.read_csv(layer_dir / "units.csv")
    assert not pd.api.types.is_string_dtype(naive["most_hurt_class"])  # the hazard is real
    units = read_rows(layer_dir / "units.csv")
    selective = [row["selective_class"] for row in units]
    assert selective[DEAD_UNIT] == "" and set(selective) - {""} <= set(DIGITS)
    assert len(set(selective) - {""}) > 1  # digits and an empty cell in one column
    rows = read_rows(layer_dir / "class_prediction.csv")
    positive = 0
    for row in rows:
        n, top1, top5 = hand_rates(units, row["attribute"], row.get("unit_set", "all"))
        assert int(row["n_units"]) == n, row
        if n:
            assert float(row["top1_hit_rate"]) == pytest.approx(top1, rel=1e-5), row
            assert float(row["top5_hit_rate"]) == pytest.approx(top5, rel=1e-5), row
            positive += top1 > 0
    assert positive > 0


# --- config checks -----------------------------------------------------------------------------


@pytest.mark.workflow
@pytest.mark.parametrize(
    "entry, fragments",
    [
        ({"arch": "tinyalex", "classes": "imagenet"}, ["models.m.classes", "train_images"]),
        (
            {"arch": "resnet18", "num_classes": 365, "classes": "imagenet"},
            ["models.m.classes", "1000 classes", "num_classes is 365"],
        ),
        ({"arch": "resnet18", "classes": "lists/none.txt"}, ["models.m.classes", "none.txt"]),
    ],
)
def test_bad_classes_key_fails_before_any_job(
    tmp_path: Path, entry: dict, fragments: list[str]
) -> None:
    files = {"weights": "w.pt", "eval_images": "val", "concept_set": "broden"}
    full = {**entry, **({} if entry["arch"] == "tinyalex" else files), "layers": ["layer4"]}
    if entry["arch"] == "tinyalex":
        full["layers"] = ["features.relu5"]
    config = write_config(tmp_path / "bad.yaml", {"models.m": full, "only_models": ["m"]})
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in output, output[-3000:]


def test_shipped_lists_fit_the_real_configs() -> None:
    configs = [
        p for p in (ROOT / "resources" / "configs").glob("*.yaml") if "example" not in p.name
    ]
    assert len(configs) == 5
    for path in configs:
        config = yaml.safe_load(path.read_text())
        for entry in config["models"].values():
            listed = read_class_list(CLASSES_DIR / f"{entry['classes']}.txt")
            assert len(listed.names) == entry["num_classes"], path.name


def test_generator_cli_needs_a_source() -> None:
    result = subprocess.run(
        [sys.executable, str(CLASSES_DIR / "make_class_lists.py")], capture_output=True, text=True
    )
    assert result.returncode != 0 and "--imagenet-synsets" in result.stderr


# --- extraction with a class list ---------------------------------------------------------------


def extraction_script() -> ModuleType:
    """workflow/scripts/extract_activations.py as a module (its Snakemake adapter stays idle)."""
    path = ROOT / "workflow" / "scripts" / "extract_activations.py"
    spec = importlib.util.spec_from_file_location("extract_activations", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extract(tmp_path: Path, folders: list[str], listed: str) -> Path:
    """Extract the eval split of two class folders with a 2-class ResNet-18 and a class list."""
    from PIL import Image

    for folder in folders:
        (tmp_path / "val" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (40, 90, 200)).save(tmp_path / "val" / folder / "0.png")
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "w.pt")
    (tmp_path / "list.txt").write_text(listed)
    entry = {"arch": "resnet18", "preprocess": {"resize": 32, "crop": 32}}
    store = tmp_path / "eval.h5"
    extraction_script().main(
        str(tmp_path / "val"),
        str(tmp_path / "w.pt"),
        str(store),
        "eval",
        "m",
        entry,
        ["layer4"],
        {"batch_size": 2, "maps_dtype": "float32"},
        "cpu",
        1,
        str(tmp_path / "list.txt"),
    )
    return store


def test_list_names_the_classes_and_its_folders_the_eval_folders(tmp_path: Path) -> None:
    store = extract(tmp_path, ["n01440764", "n01443537"], "n01440764\ttench\nn01443537\tgoldfish\n")
    with ActivationStore(store) as opened:
        assert opened.classes == ["tench", "goldfish"]


@pytest.mark.parametrize(
    "listed, fragment",
    [
        ("n1\ttench\nn2\tgoldfish\n", "expects ['n1', 'n2']"),
        ("tench\ngoldfish\ncock\n", "names 3 classes but checkpoint"),
    ],
)
def test_list_that_misfits_names_the_key(tmp_path: Path, listed: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as error:
        extract(tmp_path, ["n01440764", "n01443537"], listed)
    assert "models.m.classes" in str(error.value) and "list.txt" in str(error.value)
