"""Bad data files fail the job that reads them, name the file, and leave no output behind.

A module fixture copies the tiny run's world into a user-data layout (`data/train`, `data/val`,
`data/broden`, as a researcher's own folders would be) and builds the stores every case starts
from. Each case damages one file and asks Snakemake for the one output that reads it, with
`--keep-incomplete` so that whatever the job wrote stays where it is: that job (and no other)
must fail, its own log must hold the library's message naming the damaged file (the fixture's
logs are removed first, and Snakemake's output, which lists every input file, does not count),
and none of the job's outputs (nor any `.partial` temporary) may exist afterwards.

Cases whose jobs read none of each other's files share one copy of that directory and one
Snakemake call (`--keep-going`, so every job of the call runs): each case's job must fail, for
its own file, and no job but its cases' may fail, so a case that another one hid or broke fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
import torch
import torchvision
import yaml
from workflow_runs import snakemake, tiny_config

from unitablation.broden import load_mask, read_broden, save_mask
from unitablation.models import ModelSpec, build_model, save_checkpoint

pytestmark = pytest.mark.workflow

MODEL = "m"
RESNET = "r"
LAYER = "features.relu5"
EVAL_STORE = f"results/{MODEL}/activations/eval/{LAYER}.h5"
CONCEPT_STORE = f"results/{MODEL}/activations/concept/{LAYER}.h5"
CONCEPT_OUTPUTS = (
    f"results/{MODEL}/{LAYER}/unit/concepts.csv",
    f"results/{MODEL}/{LAYER}/unit/concepts.h5",
)
SHARD = f"results/{MODEL}/{LAYER}/unit/shards/0000.h5"
ATTRIBUTE_OUTPUTS = (
    f"results/{MODEL}/{LAYER}/unit/attributes.csv",
    f"results/{MODEL}/{LAYER}/unit/attributes.h5",
)


def user_data_config(workdir: Path) -> Path:
    """The tiny config studying one tinyalex on user folders, plus a ResNet-18 on given weights."""
    config = tiny_config()
    plain = config["models"]["plain"]
    folders = {
        "train_images": "data/train",
        "eval_images": "data/val",
        "concept_set": "data/broden",
    }
    config["models"] = {
        MODEL: {**plain, **folders},
        RESNET: {
            "arch": "resnet18",
            "weights": "data/resnet18.pt",
            "eval_images": "data/val",
            "concept_set": "data/broden",
            "layers": ["layer4"],
        },
    }
    config["only_models"] = [MODEL, RESNET]
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_resnet(path: Path, classes: list[str], first_filters: int = 64) -> None:
    """A ResNet-18 checkpoint (random weights); other than 64 first filters makes it misfit."""
    model = torchvision.models.resnet18(num_classes=len(classes))
    model.conv1 = torch.nn.Conv2d(3, first_filters, kernel_size=7, stride=2, padding=3, bias=False)
    save_checkpoint(path, model, classes)


def eval_classes(workdir: Path) -> list[str]:
    """Class folder names of the user eval set."""
    return sorted(p.name for p in (workdir / "data" / "val").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def prepared(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with user-data folders, a trained model and its eval/concept stores."""
    workdir = tmp_path_factory.mktemp("bad_data_base")
    for split in ("train", "val", "broden"):
        shutil.copytree(
            tiny_run / "results" / "world" / split,
            workdir / "data" / split,
            ignore=shutil.ignore_patterns(".snakemake_timestamp"),
        )
    write_resnet(workdir / "data" / "resnet18.pt", eval_classes(workdir))
    config = user_data_config(workdir)
    result = snakemake(workdir, "--cores", "2", EVAL_STORE, CONCEPT_STORE, config=config)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def first_image(folder: Path) -> Path:
    """The first PNG (sorted) under `folder`."""
    return sorted(folder.rglob("*.png"))[0]


def corrupt_eval_image(workdir: Path) -> Path:
    """Overwrite one eval image with bytes that are no image at all."""
    image = first_image(workdir / "data" / "val")
    image.write_bytes(b"this is not an image\n" * 20)
    return image


def truncate(path: Path) -> Path:
    """Cut a file to half its length, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_concept_image(workdir: Path) -> Path:
    """Cut one concept image (not a mask) in half."""
    broden = read_broden(workdir / "data" / "broden")
    return truncate(broden.image_path(0))


def first_mask(workdir: Path) -> Path:
    """The first mask PNG that index.csv names."""
    broden = read_broden(workdir / "data" / "broden")
    for record in broden.records:
        for entries in record.cells.values():
            for entry in entries:
                if isinstance(entry, str):
                    return broden.root / "images" / entry
    raise AssertionError("the tiny concept set has no mask PNG")


def truncated_mask(workdir: Path) -> Path:
    """Cut one mask PNG in half."""
    return truncate(first_mask(workdir))


def mask_with_unknown_ids(workdir: Path) -> Path:
    """Rewrite one mask so some pixels carry a label number label.csv does not define."""
    mask = first_mask(workdir)
    ids = load_mask(mask)
    ids[0, :] = 4321
    save_mask(mask, ids)
    return mask


def index_without_column(workdir: Path) -> Path:
    """Drop the `sh` column (segmentation height) from index.csv."""
    index = workdir / "data" / "broden" / "index.csv"
    lines = index.read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("sh")
    kept = [",".join(c for k, c in enumerate(line.split(",")) if k != drop) for line in lines]
    index.write_text("\n".join(kept) + "\n")
    return index


def empty_eval_class(workdir: Path) -> Path:
    """Remove every image of the last eval class (its folder stays, empty)."""
    folder = sorted(p for p in (workdir / "data" / "val").iterdir() if p.is_dir())[-1]
    for image in folder.iterdir():
        image.unlink()
    return folder


def truncated_store(workdir: Path) -> Path:
    """Cut the eval activation store of the layer in half."""
    return truncate(workdir / EVAL_STORE)


def store_without_means(workdir: Path) -> Path:
    """Delete the per-image channel means of the layer from its eval store."""
    path = workdir / EVAL_STORE
    with h5py.File(path, "a") as handle:
        del handle[f"layers/{LAYER}/mean"]
    return path


def misfit_tinyalex(workdir: Path) -> Path:
    """Replace the trained model with a tinyalex of other widths (same classes)."""
    path = workdir / "results" / MODEL / "model.pt"
    classes = eval_classes(workdir)
    spec = ModelSpec.from_config(
        {"arch": "tinyalex", "widths": [5, 6, 8, 8, 8], "hidden": 16}, len(classes), 32
    )
    save_checkpoint(path, build_model(spec), classes)
    return path


def misfit_resnet(workdir: Path) -> Path:
    """Replace the configured ResNet-18 weights with a checkpoint whose conv1 has 32 filters."""
    path = workdir / "data" / "resnet18.pt"
    write_resnet(path, eval_classes(workdir), first_filters=32)
    return path


@dataclass(frozen=True)
class Case:
    """A damaged file, the output that reads it, and the failing job's log and message."""

    name: str
    damage: Callable[[Path], Path]  # damages a file in the working directory, returns its path
    targets: tuple[str, ...]  # outputs asked for
    removed: tuple[str, ...]  # outputs removed first, so that the reading job runs
    rule: str  # the job that must fail
    log: str  # its log
    message: str  # what its log must say, {file} standing for the damaged file


EVAL_LOG = f"results/logs/extract_activations/{MODEL}_eval_{LAYER}.log"
CONCEPT_LOG = f"results/logs/extract_activations/{MODEL}_concept_{LAYER}.log"
CONCEPT_IOU_LOG = f"results/logs/concept_iou/{MODEL}/{LAYER}/unit.log"
EXTRACT = "extract_activations"

#: The messages are those of docs/reliability.md's table (its `...` left out).
CASES = [
    Case(
        "corrupt eval image",
        corrupt_eval_image,
        (EVAL_STORE,),
        (EVAL_STORE,),
        EXTRACT,
        EVAL_LOG,
        "cannot read image {file}: cannot identify image file '{file}'",
    ),
    Case(
        "truncated concept image",
        truncated_concept_image,
        (CONCEPT_STORE,),
        (CONCEPT_STORE,),
        EXTRACT,
        CONCEPT_LOG,
        "cannot read image {file}: image file is truncated",
    ),
    Case(
        "truncated mask png",
        truncated_mask,
        CONCEPT_OUTPUTS,
        (),
        "concept_iou",
        CONCEPT_IOU_LOG,
        "{file}: cannot read mask PNG: image file is truncated",
    ),
    Case(
        "mask ids not in label.csv",
        mask_with_unknown_ids,
        CONCEPT_OUTPUTS,
        (),
        "concept_iou",
        CONCEPT_IOU_LOG,
        "{file}: color ids [4321] are not in label.csv",
    ),
    Case(
        "index.csv without sh column",
        index_without_column,
        (CONCEPT_STORE,),
        (CONCEPT_STORE,),
        EXTRACT,
        CONCEPT_LOG,
        "{file}: missing required column(s) sh",
    ),
    Case(
        "class with no eval images",
        empty_eval_class,
        (EVAL_STORE,),
        (EVAL_STORE,),
        EXTRACT,
        EVAL_LOG,
        "class folder {file} holds no images",
    ),
    Case(
        "truncated activation store",
        truncated_store,
        (SHARD,),
        (),
        "ablate_shard",
        f"results/logs/ablate_shard/{MODEL}/{LAYER}/unit/0000.log",
        "cannot open activation store {file}: Unable to synchronously open file (truncated file:",
    ),
    Case(
        "store without a dataset",
        store_without_means,
        ATTRIBUTE_OUTPUTS,
        (),
        "unit_attributes",
        f"results/logs/unit_attributes/{MODEL}/{LAYER}/unit.log",
        f"{{file}}: group '/layers/{LAYER}' has no dataset(s) ['mean']",
    ),
    Case(
        "tinyalex checkpoint of other widths",
        misfit_tinyalex,
        (EVAL_STORE,),
        (EVAL_STORE,),
        EXTRACT,
        EVAL_LOG,
        "checkpoint {file} does not fit tinyalex: "
        "Error(s) in loading state_dict for TinyAlex: size mismatch",
    ),
    Case(
        "resnet18 weights of wrong shapes",
        misfit_resnet,
        (f"results/{RESNET}/activations/eval/layer4.h5",),
        (),
        EXTRACT,
        f"results/logs/extract_activations/{RESNET}_eval_layer4.log",
        "checkpoint {file} does not fit resnet18: "
        "Error(s) in loading state_dict for ResNet: size mismatch",
    ),
]


def words(text: str) -> str:
    """Text with every run of whitespace as one space (messages may wrap onto tab-led lines)."""
    return " ".join(text.split())


#: Cases run together: no case damages or removes a file that another one's job reads.
GROUPS = (
    ("corrupt eval image", "truncated concept image"),
    ("class with no eval images", "index.csv without sh column"),
    ("truncated activation store", "truncated mask png", "resnet18 weights of wrong shapes"),
    ("store without a dataset", "mask ids not in label.csv"),
    ("tinyalex checkpoint of other widths",),
)
FAILED_JOB = re.compile(r"^Error in rule (\w+):\n(?:    .*\n)*?    log: (\S+)", re.MULTILINE)


@dataclass(frozen=True)
class GroupRun:
    """One Snakemake call on a copy of the prepared directory with its cases' damage."""

    workdir: Path
    cases: tuple[Case, ...]
    bad_files: dict[str, str]  # case name -> damaged file, relative to workdir
    result: subprocess.CompletedProcess

    def failed_jobs(self) -> list[tuple[str, str]]:
        """(rule, log) of every job Snakemake reported as failed, sorted."""
        return sorted(FAILED_JOB.findall(self.result.stderr))


def run_group(prepared: Path, workdir: Path, cases: tuple[Case, ...]) -> GroupRun:
    """Copy `prepared`, remove and damage what the cases say, and ask for all their targets."""
    shutil.copytree(prepared, workdir, symlinks=True)
    shutil.rmtree(workdir / "results" / "logs")  # the fixture's logs must not count
    for name in (name for case in cases for name in case.removed):
        (workdir / name).unlink()
    bad_files = {case.name: case.damage(workdir).relative_to(workdir).as_posix() for case in cases}
    targets = [target for case in cases for target in case.targets]
    result = snakemake(
        workdir,
        *("--cores", "2", "--keep-going", "--keep-incomplete", *targets),
        config=workdir / "config.yaml",
    )
    return GroupRun(workdir, cases, bad_files, result)


@pytest.fixture(scope="module")
def group_runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, GroupRun]:
    """Every group's run, by the name of each of its cases."""
    by_name = {case.name: case for case in CASES}
    runs = {}
    for names in GROUPS:
        workdir = tmp_path_factory.mktemp("bad_data_group") / "run"
        run = run_group(prepared, workdir, tuple(by_name[name] for name in names))
        runs.update(dict.fromkeys(names, run))
    return runs


def test_groups_hold_every_case_once() -> None:
    names = [name for group in GROUPS for name in group]
    assert sorted(names) == sorted(case.name for case in CASES)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_file_fails_its_job_naming_the_file(
    group_runs: dict[str, GroupRun], case: Case
) -> None:
    """The reading job fails, and its own log (no other) carries the library's message."""
    run = group_runs[case.name]
    workdir, stderr = run.workdir, run.result.stderr
    assert run.result.returncode != 0, stderr[-3000:]
    failed, expected = run.failed_jobs(), {(c.rule, c.log) for c in run.cases}
    assert (case.rule, case.log) in failed, stderr[-3000:]
    assert set(failed) <= expected and len(set(failed)) == len(failed), stderr[-3000:]
    log = (workdir / case.log).read_text()
    message = case.message.format(file=run.bad_files[case.name])
    assert words(message) in words(log), f"{case.log} lacks {message!r}:\n{log[-3000:]}"
    for name in case.targets:
        assert not (workdir / name).exists(), f"{name} left behind after the failure"
    leftovers = sorted(p.name for p in (workdir / "results").rglob("*.partial"))
    assert not leftovers, leftovers


def test_cases_damage_what_they_say(prepared: Path, tmp_path: Path) -> None:
    """Each damage function changes the file it names (so a passing case is not vacuous)."""
    for case in CASES:
        name, damage = case.name, case.damage
        workdir = tmp_path / name.replace(" ", "_")
        shutil.copytree(prepared / "data", workdir / "data")
        shutil.copytree(prepared / "results", workdir / "results")
        target = damage(workdir)
        original = prepared / target.relative_to(workdir)
        if target.is_dir():
            assert len(list(target.iterdir())) < len(list(original.iterdir())), name
        elif original.exists():
            assert target.read_bytes() != original.read_bytes(), name
