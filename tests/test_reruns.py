"""Only stale steps rerun: after a full tiny run, each config edit plans exactly the jobs it should.

Each test writes the tiny config with one key changed, asks `snakemake -n` which jobs it would
run against the finished run, and compares the set of (rule, first output) with the set computed
here from the config by hand; the jobs whose own params changed are read from the reasons `-n`
prints. In three of the tests (threshold, shard size, epochs) `--list-changes params` is run too,
but in Snakemake 9.27.1 it also lists outputs whose params did not change (its ParamsChange
iterates its files even when empty), so it is only checked to contain the changed ones.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_runs import ROOT, VARIANTS, planned_jobs, snakemake, tiny_config, write_config

from unitablation.figures import registry as figure_registry

pytestmark = pytest.mark.workflow

Job = tuple[str, str]
#: Registered figures of each scope: one job of its rule draws all of them (first output: the
#: first figure's PNG).
PER_LAYER_FIGURES = tuple(spec.name for spec in figure_registry.figures("layer"))
PER_MODEL_FIGURES = tuple(spec.name for spec in figure_registry.figures("model"))
STUDY_FIGURES = tuple(spec.name for spec in figure_registry.figures("study"))
LAYER_RULE, MODEL_RULE, STUDY_RULE = map(figure_registry.rule_name, ("layer", "model", "study"))
PER_BASIS = {
    "merge_ablation": "drops.csv",
    "unit_attributes": "attributes.csv",
    "concept_iou": "concepts.csv",
    "unit_table": "units.csv",
    "layer_statistics": "correlations.csv",
}
#: The unit browser's rules: one data script per (model, layer, basis), then the page.
BROWSER = ("browser_layer", "browser")


def all_jobs(config: dict[str, Any], units: int = 8) -> set[Job]:
    """Every job of the full DAG of a tiny-style config, as (rule, first output)."""
    layers = config["layers"]
    bases = ["unit", *(f"rot{seed}" for seed in config["rotation"]["seeds"])]
    shards = -(-units // config["ablation"]["shard_size"])
    jobs: set[Job] = {
        ("generate_world", "results/world/train"),
        ("compare", "results/comparison/variants.csv"),
        ("summary", "results/summary.md"),
        ("browser", "results/browser/index.html"),
        ("all", ""),
    }
    jobs.add((STUDY_RULE, f"results/figures/comparison/{STUDY_FIGURES[0]}.png"))
    for model in VARIANTS:
        jobs |= {
            ("train_model", f"results/{model}/model.pt"),
            ("extract_outputs", f"results/{model}/activations/eval.h5"),
            ("baseline_accuracy", f"results/{model}/baseline.csv"),
        }
        jobs.add((MODEL_RULE, f"results/figures/{model}/{PER_MODEL_FIGURES[0]}.png"))
        for layer in layers:
            for split in ("eval", "concept"):
                jobs.add(("extract_activations", f"results/{model}/activations/{split}/{layer}.h5"))
            jobs.add(("cumulative_ablation", f"results/{model}/{layer}/unit/cumulative.csv"))
            jobs.add((LAYER_RULE, f"results/figures/{model}/{layer}/{PER_LAYER_FIGURES[0]}.png"))
            for basis in bases:
                folder = f"results/{model}/{layer}/{basis}"
                jobs |= {(rule, f"{folder}/{table}") for rule, table in PER_BASIS.items()}
                jobs |= {("ablate_shard", f"{folder}/shards/{i:04d}.h5") for i in range(shards)}
                jobs.add(("browser_layer", f"results/browser/data/{model}/{layer}/{basis}.js"))
    return jobs


def select(jobs: Iterable[Job], *rules: str, where: Callable[[str], bool] = lambda path: True):
    """The jobs of some rules whose output satisfies `where`."""
    return {job for job in jobs if job[0] in rules and where(job[1])}


def select_paths(jobs: Iterable[Job], *rules: str) -> set[str]:
    """The first outputs of some rules' jobs."""
    return {path for _, path in select(jobs, *rules)}


def figure_jobs(jobs: Iterable[Job], *names: str) -> set[Job]:
    """The jobs drawing some registered figures: every job of each scope that has one of them
    (a scope's job draws all of its figures)."""
    scopes = {
        LAYER_RULE: PER_LAYER_FIGURES,
        MODEL_RULE: PER_MODEL_FIGURES,
        STUDY_RULE: STUDY_FIGURES,
    }
    return select(jobs, *(rule for rule, drawn in scopes.items() if set(drawn) & set(names)))


def plan(
    tiny_run: Path, tmp_path: Path, changes: dict[str, Any], list_changes: bool = False
) -> tuple[set[Job], set[str]]:
    """Jobs `snakemake -n` plans after a config edit, and the outputs whose params changed;
    with `list_changes`, also that `--list-changes params` names them (a second DAG build, so
    only the tests whose edits change params ask for it)."""
    config = write_config(tmp_path / "edited.yaml", changes)
    dry = snakemake(tiny_run, "-n", config=config)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    changed = {path for _, path in planned_jobs(dry.stdout, reason="Params have changed")}
    if list_changes:
        listed = snakemake(tiny_run, "--list-changes", "params", config=config)
        assert listed.returncode == 0, listed.stderr[-3000:]
        assert changed and changed <= {line.strip() for line in listed.stdout.splitlines()}
    return planned_jobs(dry.stdout), changed


#: The figures that read units.csv or the statistics drawn from it.
FIGURES_OF_UNITS = (
    "drops",
    "examples",
    "attributes",
    "correlations",
    "class_prediction",
    "rotation",
    "variants",
)


def test_unchanged_config_plans_nothing(tiny_run: Path, tmp_path: Path) -> None:
    jobs, changed = plan(tiny_run, tmp_path, {})
    assert jobs == set() and changed == set()


def test_new_rotation_seed_runs_only_that_basis(tiny_run: Path, tmp_path: Path) -> None:
    jobs, changed = plan(tiny_run, tmp_path, {"rotation.seeds": [8]})
    config = tiny_config()
    config["rotation"]["seeds"] = [8]
    full = all_jobs(config)
    expected = {job for job in full if "/rot8/" in job[1] or job[1].endswith("/rot8.js")}
    expected |= figure_jobs(full, "drops", "rotation") | select(full, "compare", "summary", "all")
    expected |= select(full, "browser")
    assert jobs == expected
    assert changed == {"results/browser/index.html"}  # the page's entries: the only reader


def test_added_layer_runs_only_that_layer_and_the_summaries(tiny_run: Path, tmp_path: Path) -> None:
    config = tiny_config()
    config["layers"] = ["features.relu3", *config["layers"]]
    jobs, changed = plan(tiny_run, tmp_path, {"layers": config["layers"]})
    full = all_jobs(config)
    expected = {job for job in full if "features.relu3" in job[1]}
    expected |= figure_jobs(full, *PER_MODEL_FIGURES, *STUDY_FIGURES)
    expected |= select(full, "compare", "summary", "all", "browser")
    assert jobs == expected
    # extraction is per layer, so no existing store changes; only the browser page reads the
    # layer list itself, as its entries (the per-model figures take theirs from their inputs)
    assert changed == {"results/browser/index.html"}


@pytest.mark.parametrize(
    "changes", [{"concepts.quantile": 0.01}, {"concepts.counting": "lite"}, {"concepts.top_k": 3}]
)
def test_concept_iou_keys_rerun_iou_and_what_reads_it(
    tiny_run: Path, tmp_path: Path, changes: dict[str, Any]
) -> None:
    jobs, changed = plan(tiny_run, tmp_path, changes)
    full = all_jobs(tiny_config())
    expected = select(full, "concept_iou", "unit_table", "layer_statistics", "compare", "summary")
    expected |= figure_jobs(full, *FIGURES_OF_UNITS) | select(full, "all", *BROWSER)
    assert jobs == expected
    assert changed == select_paths(full, "concept_iou")


def test_detector_threshold_reruns_the_tables_not_the_iou(tiny_run: Path, tmp_path: Path) -> None:
    jobs, changed = plan(tiny_run, tmp_path, {"concepts.iou_threshold": 0.1}, list_changes=True)
    full = all_jobs(tiny_config())
    expected = select(full, "unit_table", "layer_statistics", "compare", "summary")
    expected |= figure_jobs(full, *FIGURES_OF_UNITS) | select(full, "all", *BROWSER)
    assert jobs == expected and not select(jobs, "concept_iou")
    assert changed == select_paths(full, "unit_table")  # its params carry the threshold


def test_concept_memory_keys_rerun_nothing(tiny_run: Path, tmp_path: Path) -> None:
    """unit_block and image_batch reach concept_iou as resources, which trigger no rerun."""
    jobs, changed = plan(tiny_run, tmp_path, {"concepts.unit_block": 3, "concepts.image_batch": 2})
    assert jobs == set() and changed == set()


def test_figure_setting_reruns_only_that_figures_jobs(tiny_run: Path, tmp_path: Path) -> None:
    """figures.example_units is read by the per-layer examples figure: the per-layer figure
    jobs rerun (they draw it), no per-model or study figure."""
    jobs, changed = plan(tiny_run, tmp_path, {"figures.example_units": 2})
    full = all_jobs(tiny_config())
    assert jobs == figure_jobs(full, "examples") | select(full, "all")
    assert changed == {path for _, path in figure_jobs(full, "examples")}


@pytest.mark.parametrize("changes", [{"browser.images_per_unit": 2}, {"browser.class_units": 3}])
def test_browser_keys_rerun_only_the_browser(
    tiny_run: Path, tmp_path: Path, changes: dict[str, Any]
) -> None:
    jobs, changed = plan(tiny_run, tmp_path, changes)
    full = all_jobs(tiny_config())
    assert jobs == select(full, "all", *BROWSER)
    assert changed == select_paths(full, "browser_layer")


def test_training_epochs_rerun_everything_after_the_world(tiny_run: Path, tmp_path: Path) -> None:
    jobs, changed = plan(tiny_run, tmp_path, {"training.epochs": 2}, list_changes=True)
    full = all_jobs(tiny_config())
    assert jobs == full - {("generate_world", "results/world/train")}
    assert changed == {f"results/{model}/model.pt" for model in VARIANTS}


def test_world_size_reruns_everything(tiny_run: Path, tmp_path: Path) -> None:
    jobs, changed = plan(tiny_run, tmp_path, {"world.val_per_class": 5})
    assert changed == {"results/world/train"}
    assert jobs == all_jobs(tiny_config())


def test_shard_size_reruns_ablation_and_what_reads_drops(tiny_run: Path, tmp_path: Path) -> None:
    jobs, changed = plan(tiny_run, tmp_path, {"ablation.shard_size": 3}, list_changes=True)
    config = tiny_config()
    config["ablation"]["shard_size"] = 3
    full = all_jobs(config)
    expected = select(full, "ablate_shard", "merge_ablation", "unit_table", "layer_statistics")
    expected |= select(full, "compare", "summary", "all") | figure_jobs(full, *FIGURES_OF_UNITS)
    expected |= select(full, *BROWSER)
    assert jobs == expected
    # shards 0000 and 0001 exist and now hold other units; 0002 is new
    assert changed == {path for path in select_paths(full, "ablate_shard") if "0002" not in path}


def test_thread_counts_and_key_order_rerun_nothing(tiny_run: Path, tmp_path: Path) -> None:
    config = tiny_config()
    reordered = {key: config[key] for key in reversed(list(config))}
    reordered["world"] = dict(reversed(list(config["world"].items())))
    path = tmp_path / "reordered.yaml"
    path.write_text(yaml.safe_dump(reordered, sort_keys=False))
    jobs, changed = plan(tiny_run, tmp_path, {"training.threads": 2, "concepts.threads": 2})
    assert jobs == set() and changed == set()
    dry = snakemake(tiny_run, "-n", config=path)
    assert dry.returncode == 0 and planned_jobs(dry.stdout) == set()


def copy_project(tmp_path: Path) -> Path:
    """A copy of the project's workflow files, modification times kept."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Snakefile", "config.yaml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    for folder in ("workflow", "envs", "profiles", "resources"):
        shutil.copytree(
            ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return project


def test_editing_readme_and_comments_reruns_nothing(tiny_run: Path, tmp_path: Path) -> None:
    """README and comments in rule files are not code: nothing to do."""
    project = copy_project(tmp_path)
    (project / "README.md").write_text((ROOT / "README.md").read_text() + "\nA new line.\n")
    for rules in (project / "workflow" / "rules").glob("*.smk"):
        rules.write_text("# an added comment\n" + rules.read_text())
    dry = snakemake(tiny_run, "-n", snakefile=project / "Snakefile")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert planned_jobs(dry.stdout) == set(), dry.stdout[-3000:]


def test_editing_a_script_reruns_its_jobs_unless_code_triggers_are_off(
    tiny_run: Path, tmp_path: Path
) -> None:
    """Snakemake tracks rule scripts by modification time: an edited script reruns its rule's
    jobs and what reads them; `--rerun-triggers` without `code` keeps the results."""
    project = copy_project(tmp_path)
    script = project / "workflow" / "scripts" / "summary.py"
    script.write_text(script.read_text() + "\n# an added comment\n")
    dry = snakemake(tiny_run, "-n", snakefile=project / "Snakefile")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert planned_jobs(dry.stdout) == {("summary", "results/summary.md"), ("all", "")}
    triggers = ("--rerun-triggers", "mtime", "params", "input", "software-env")
    dry = snakemake(tiny_run, "-n", *triggers, snakefile=project / "Snakefile")
    assert dry.returncode == 0 and planned_jobs(dry.stdout) == set(), dry.stdout[-3000:]


def test_helpers_agree_with_the_full_dag(tiny_run: Path, tmp_path: Path) -> None:
    """The hand-built job set is the DAG Snakemake builds from scratch (guards the helper)."""
    config = write_config(tmp_path / "same.yaml", {})
    dry = snakemake(tmp_path / "empty", "-n", config=config)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert planned_jobs(dry.stdout) == all_jobs(tiny_config())
