# Helpers only: config validation, paths, per-rule params. No rules here.

import functools
import os
import re
import sys
import warnings
from pathlib import Path

from snakemake.utils import validate

# The one place that makes the library importable: here, and (through PYTHONPATH, which every
# job's process inherits, locally, in a conda env or under SLURM) in every rule script.
LIBRARY_DIR = str(Path(workflow.basedir) / "workflow")
if LIBRARY_DIR not in sys.path:
    sys.path.insert(0, LIBRARY_DIR)
if LIBRARY_DIR not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    # update(), not item assignment: Snakemake's linter takes `os.environ[...]` for a variable
    # the user must set; this one is set here, for the jobs.
    os.environ.update(
        PYTHONPATH=os.pathsep.join(
            part for part in (LIBRARY_DIR, os.environ.get("PYTHONPATH")) if part
        )
    )

validate(config, "../schemas/config.schema.yaml")

WORLD_DIR = "results/world"
TRAINED_ARCH = "tinyalex"
SPLITS = ("eval", "concept")
ROTATED_BASES = tuple(f"rot{seed}" for seed in config["rotation"]["seeds"])
BASES = ("unit", *ROTATED_BASES)
SHARD_KEYS = ("mode", "method", "units_per_call", "batch_size", "tie_margin")


def canonical(value):
    """Dicts with sorted keys, recursively, so params compare equal however config orders keys."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def section_settings(section):
    """One config section, canonical and without `threads` (those go to the scheduler)."""
    return canonical({k: v for k, v in config[section].items() if k != "threads"})


def world_settings(wildcards):
    """The world keys the generator reads."""
    return section_settings("world")


def training_settings(wildcards):
    """The training keys the trainer reads."""
    return section_settings("training")


def activation_settings(wildcards):
    """The extraction keys the extractor reads."""
    return section_settings("activations")


def env_file(name):
    """Path of a conda env file, relative to the rule files (Snakemake resolves it so)."""
    return f"../../envs/{name}.yaml"


def script_file(name):
    """Path of a rule script, relative to the rule files."""
    return f"../scripts/{name}"


def model_names():
    """Studied model names: `only_models` when set (its order), else every entry, config order."""
    # Real-data configs set only_models: --configfile merges over config.yaml's variants.
    selected = config.get("only_models")
    if selected is None:
        return list(config["models"])
    unknown = [name for name in selected if name not in config["models"]]
    if unknown:
        raise ValueError(f"config error in only_models: {unknown} not in models")
    return list(selected)


def model_entry(name):
    """The config entry of one model."""
    return config["models"][name]


def model_layers(name):
    """Layers studied in one model: its own list, else the global one."""
    return list(model_entry(name).get("layers") or config["layers"])


def layers_of(wildcards):
    """Layers studied in the model of a job."""
    return model_layers(wildcards.model)


def job_layer(wildcards):
    """The one layer a per-layer job reads, as a list."""
    return [wildcards.layer]


def is_trained(name):
    """Whether the pipeline trains this model itself (the miniature family)."""
    return model_entry(name).get("arch") == TRAINED_ARCH


@functools.cache
def configured_layouts(name):
    """Layouts of a model's studied layers, from config alone (one probe of the network, on
    the meta device where it can be); config errors name the key: an unknown source (with the
    closest valid names), a missing layer (listing valid module paths), one called more than
    once per forward (naming the enclosing block), an output no layout reads (its shape).
    """
    from unitablation.model_sources import EntryError, check_entry
    from unitablation import models

    entry = model_entry(name)
    try:
        check_entry(entry)
        spec = models.ModelSpec.from_config(entry, 2, config["world"]["image_size"])
        model = models.probe_model(spec)
    except EntryError as error:
        key = f"models.{name}.{error.key}"
        raise ValueError(f"config error in {key}: {error}") from None
    except ValueError as error:  # e.g. model_kwargs giving a non-square input
        raise ValueError(f"config error in models.{name}: {error}") from None
    key = f"models.{name}.layers" if entry.get("layers") else "layers"
    label = f"model {name!r} ({spec.arch})"
    side, prefix = models.input_size(spec), entry.get("prefix_tokens")
    try:
        return models.check_model_layers(model, model_layers(name), label, side, prefix)
    except ValueError as error:
        raise ValueError(f"config error in {key}: {error}") from None


def check_config_layers():
    """Fail at start when a model's source or layers are wrong (see configured_layouts)."""
    try:
        import unitablation.models  # noqa: F401
    except ImportError as error:  # e.g. a Snakemake-only env with --sdm conda
        warnings.warn(
            f"cannot import the library to check layer names now ({error}); "
            "extraction jobs will check them"
        )
        return
    for name in model_names():
        configured_layouts(name)


check_config_layers()


def train_images(wildcards):
    """ImageFolder root a trained model learns from."""
    return model_entry(wildcards.model).get("train_images", f"{WORLD_DIR}/train")


def split_source(wildcards):
    """The image set of one split: ImageFolder val root (eval) or Broden directory (concept)."""
    if wildcards.split == "eval":
        return model_entry(wildcards.model).get("eval_images", f"{WORLD_DIR}/val")
    return concept_source(wildcards)


def model_weights(wildcards):
    """Weights of a model: trained here, the local file config names, or for a factory
    that initialises its module itself, the factory's file (editing it reruns jobs)."""
    entry = model_entry(wildcards.model)
    if is_trained(wildcards.model):
        return f"results/{wildcards.model}/model.pt"
    if "weights" not in entry and entry.get("factory"):
        return factory_path(wildcards.model)
    return entry["weights"]


def factory_path(name):
    """The Python file of a model's factory (as configured, or the module's file), else None."""
    from unitablation.model_sources import factory_file

    target = model_entry(name).get("factory")
    return factory_file(target) if target else None


def factory_input(wildcards):
    """The factory file of a model that has one, as a named input of every job that builds
    the model (so editing the file reruns them; its kwargs travel in params)."""
    path = factory_path(wildcards.model)
    return {"factory": path} if path else {}


def class_list_path(name):
    """The class list file a model entry's `classes` names (shipped or a path), else None."""
    from unitablation.class_lists import SHIPPED_LISTS

    value = model_entry(name).get("classes")
    if value in SHIPPED_LISTS:
        return str(Path(workflow.basedir) / "resources" / "classes" / f"{value}.txt")
    return value


def class_inputs(wildcards):
    """Class-name sources of an extraction besides its checkpoint: the entry's class list,
    else (concept split, model not trained here) the eval split's class folders."""
    path = class_list_path(wildcards.model)
    if path:
        return {"class_list": path}
    if wildcards.split == "concept" and not is_trained(wildcards.model):
        return {"class_folders": eval_images(wildcards)}
    return {}


def check_config_classes():
    """Fail at start when a model's `classes` is no readable class list of its width."""
    from unitablation.class_lists import read_class_list

    for name in model_names():
        entry = model_entry(name)
        if "classes" not in entry:
            continue
        key = f"models.{name}.classes"
        if is_trained(name):
            raise ValueError(
                f"config error in {key}: a {TRAINED_ARCH} takes its class names from its "
                "train_images folders; remove the key"
            )
        try:
            names = read_class_list(class_list_path(name)).names
        except ValueError as error:
            raise ValueError(f"config error in {key}: {error}") from None
        width = entry.get("num_classes")
        if width and len(names) != width:
            raise ValueError(
                f"config error in {key}: {class_list_path(name)} names {len(names)} classes "
                f"but models.{name}.num_classes is {width}"
            )


check_config_classes()


def model_spec_params(wildcards):
    """The model entry with the image size resolved: what building the network reads."""
    entry = dict(model_entry(wildcards.model))
    entry.setdefault("image_size", config["world"]["image_size"])
    entry.pop("layers", None)
    return canonical(entry)


def gpu_count(wildcards):
    """GPUs a torch job holds: 1 when config pins CUDA, else 0 (auto never blocks a CPU run)."""
    return 1 if config["device"].startswith("cuda") else 0


def units_per_layer(name):
    """Units of every studied layer of a model (channels, features or token features),
    known from config alone (the layouts checked at start)."""
    return {layer: layout.units for layer, layout in configured_layouts(name).items()}


def shard_count(model, layer):
    """Shards of a layer: units split into runs of `ablation.shard_size`."""
    return -(-units_per_layer(model)[layer] // config["ablation"]["shard_size"])


def shard_files(wildcards):
    """Every shard file of one (model, layer, basis)."""
    return [
        f"results/{wildcards.model}/{wildcards.layer}/{wildcards.basis}/shards/{index:04d}.h5"
        for index in range(shard_count(wildcards.model, wildcards.layer))
    ]


def shard_units(wildcards):
    """Unit indices of one shard."""
    size = config["ablation"]["shard_size"]
    total = units_per_layer(wildcards.model)[wildcards.layer]
    start = int(wildcards.shard) * size
    return list(range(start, min(start + size, total)))


def shard_settings(wildcards):
    """The ablation keys a shard job reads (not the merge-only ones)."""
    return {key: config["ablation"][key] for key in SHARD_KEYS}


#: Concept keys that change no IoU: threads go to the scheduler, unit_block and image_batch to
#: resources (memory only), iou_threshold to unit_table (the detector flag).
CONCEPT_IOU_EXCLUDED = ("unit_block", "image_batch", "iou_threshold")


def concept_settings(wildcards):
    """The concept keys that change the IoU outputs (quantile, top_k, counting)."""
    settings = section_settings("concepts")
    return {k: v for k, v in settings.items() if k not in CONCEPT_IOU_EXCLUDED}


def detector_threshold(wildcards):
    """The best IoU that makes a unit a detector (read by unit_table only)."""
    return config["concepts"]["iou_threshold"]


#: `concept_set` value naming the embedded world's concept set (generated by the pipeline).
WORLD_CONCEPT_SET = "world"


def concept_dir(name):
    """Broden-layout concept directory of a model, or None when it has no concept set.

    `world` (and, for a model trained here, a missing key) is the world's generated set.
    """
    entry = model_entry(name)
    value = entry.get("concept_set", WORLD_CONCEPT_SET if is_trained(name) else None)
    return f"{WORLD_DIR}/broden" if value == WORLD_CONCEPT_SET else value


def has_concept_set(name):
    """Whether concept IoU is measured for a model (it has a concept set)."""
    return concept_dir(name) is not None


def concept_source(wildcards):
    """Broden-layout concept directory of a model (only asked for where it has one)."""
    path = concept_dir(wildcards.model)
    if path is None:
        raise ValueError(
            f"model {wildcards.model} has no concept_set: no concept job applies"
        )
    return path


def concept_table_input(wildcards):
    """concepts.csv of a (model, layer, basis) for unit_table, none without a concept set."""
    if not has_concept_set(wildcards.model):
        return {}
    return {
        "concepts": f"results/{wildcards.model}/{wildcards.layer}/{wildcards.basis}/concepts.csv"
    }


def eval_images(wildcards):
    """ImageFolder root of a model's eval split (read only by the hook fallback)."""
    return model_entry(wildcards.model).get("eval_images", f"{WORLD_DIR}/val")


def analysis_settings(wildcards):
    """The statistics keys the per-layer analysis reads."""
    return canonical(config["analysis"])


def cumulative_settings(wildcards):
    """The cumulative-ablation keys its script reads (threads go to the scheduler)."""
    settings = section_settings("cumulative")
    for key in ("mode", "method", "units_per_call", "tie_margin"):
        settings[key] = config["ablation"][key]
    return canonical(settings)


#: Per-(model, layer, basis) outputs, in every basis: drops, attributes, concepts and statistics.
LAYER_TABLES = (
    "drops.csv",
    "class_drops.csv",
    "attributes.csv",
    "concepts.csv",
    "units.csv",
    "correlations.csv",
    "class_prediction.csv",
    "concentration.csv",
)


#: Per-layer tables that exist only for a model with a concept set.
CONCEPT_TABLES = ("concepts.csv",)


def layer_keys():
    """Every studied (model, layer, basis), config order."""
    return [
        (name, layer, basis)
        for name in model_names()
        for layer in model_layers(name)
        for basis in BASES
    ]


def layer_tables(table):
    """One per-layer table of every (model, layer, basis) that has it (concept tables only
    for models with a concept set)."""
    return [
        f"results/{m}/{l}/{b}/{table}"
        for m, l, b in layer_keys()
        if table not in CONCEPT_TABLES or has_concept_set(m)
    ]


def model_splits(name):
    """Image sets a model's layers are extracted on: eval, and concept where it has a set."""
    return [split for split in SPLITS if split == "eval" or has_concept_set(name)]


def comparison_units(wildcards):
    """units.csv of every (model, layer, basis)."""
    return layer_tables("units.csv")


def comparison_correlations(wildcards):
    """correlations.csv of every (model, layer, basis)."""
    return layer_tables("correlations.csv")


def comparison_predictions(wildcards):
    """class_prediction.csv of every (model, layer, basis)."""
    return layer_tables("class_prediction.csv")


def comparison_concentration(wildcards):
    """concentration.csv of every (model, layer, basis)."""
    return layer_tables("concentration.csv")


def baselines(wildcards):
    """baseline.csv of every model, config order."""
    return [f"results/{name}/baseline.csv" for name in model_names()]


def all_cumulative_tables(wildcards):
    """cumulative.csv of every (model, layer), unit basis."""
    return [
        f"results/{name}/{layer}/unit/cumulative.csv"
        for name in model_names()
        for layer in model_layers(name)
    ]


def figure_outputs():
    """Every registered figure, PNG and PDF (workflow/unitablation/figures/)."""
    study = figure_study()
    return [
        path
        for spec in figure_registry.figures()
        for path in figure_registry.outputs(spec, study)
    ]


def all_outputs():
    """Final targets: per-layer tables in every basis, comparisons, figures and the summary."""
    outputs = []
    for name in model_names():
        outputs.append(f"results/{name}/baseline.csv")
        outputs.append(f"results/{name}/activations/eval.h5")
        outputs.extend(
            f"results/{name}/activations/{split}/{layer}.h5"
            for split in model_splits(name)
            for layer in model_layers(name)
        )
    for table in LAYER_TABLES:
        outputs.extend(layer_tables(table))
    outputs.extend(all_cumulative_tables(None))
    outputs.extend(
        ["results/comparison/variants.csv", "results/comparison/rotation.csv"]
    )
    outputs.extend(figure_outputs())
    outputs.append("results/summary.md")
    outputs.append("results/browser/index.html")
    return outputs


def browser_settings(wildcards):
    """The browser keys that change a data script (images per unit, units per class)."""
    return canonical(config["browser"])


def browser_layer_inputs(wildcards):
    """A browser data script's optional inputs: the concept files where the model has a
    concept set, and the layer's cumulative table in the unit basis."""
    inputs = {}
    if has_concept_set(wildcards.model):
        inputs["concepts"] = (
            f"results/{wildcards.model}/{wildcards.layer}/{wildcards.basis}/concepts.h5"
        )
        inputs["concept_store"] = (
            f"results/{wildcards.model}/activations/concept/{wildcards.layer}.h5"
        )
        inputs["broden"] = concept_dir(wildcards.model)
    if wildcards.basis == "unit":
        inputs["cumulative"] = (
            f"results/{wildcards.model}/{wildcards.layer}/unit/cumulative.csv"
        )
    return inputs


def browser_entries(wildcards):
    """The browser's (model, layer, basis) entries, config order."""
    return [{"model": m, "layer": l, "basis": b} for m, l, b in layer_keys()]


def browser_scripts(wildcards):
    """Every browser data script, in the order of browser_entries."""
    return [f"results/browser/data/{m}/{l}/{b}.js" for m, l, b in layer_keys()]


def browser_image_lists(wildcards):
    """The image list beside every browser data script."""
    return [f"results/browser/data/{m}/{l}/{b}.images.json" for m, l, b in layer_keys()]


# Figure inputs: the figure registry (workflow/unitablation/figures/registry.py) says what
# each figure reads; these hand it the config and the job's wildcards.
from unitablation.figures import registry as figure_registry


def figure_study():
    """The models, layers, bases and concept sets the figures' input patterns expand over."""
    names = tuple(model_names())
    return figure_registry.Study(
        models=names,
        layers={name: tuple(model_layers(name)) for name in names},
        bases=tuple(BASES),
        concept_sets={name: concept_dir(name) for name in names},
    )


#: Report placement of each scope's figures (the caption is the figure's own, see below).
FIGURE_REPORT = {
    "layer": lambda name: dict(
        category="Figures",
        subcategory="{model}",
        labels={"figure": name, "layer": "{layer}"},
    ),
    "model": lambda name: dict(
        category="Figures",
        subcategory="{model}",
        labels={"figure": name, "layer": "all layers"},
    ),
    "study": lambda name: dict(
        category="Comparison", labels={"result": f"{name} figure"}
    ),
}


def figure_caption_file(name):
    """A figure's report caption template, workflow/report/figures/<name>.rst (the path is
    relative to the .smk files): the caption its job's params carry for that figure."""
    return f"../report/figures/{name}.rst"


def figure_group_outputs(scope):
    """Named outputs of a scope's figure job: every figure's PNG (in the report, with its own
    caption) and PDF, at the paths of figure_registry.SCOPE_STEMS."""
    outputs = {}
    for spec in figure_registry.figures(scope):
        stem = figure_registry.SCOPE_STEMS[scope].replace("{figure}", spec.name)
        outputs[figure_registry.output_key(spec.name, "png")] = report(
            f"{stem}.png",
            caption=figure_caption_file(spec.name),
            **FIGURE_REPORT[scope](spec.name),
        )
        outputs[figure_registry.output_key(spec.name, "pdf")] = f"{stem}.pdf"
    return outputs


def figure_group_logs(scope):
    """One log per figure of a scope's figure job, by figure name."""
    where = {
        "layer": "{model}/{layer}",
        "model": "{model}",
        "study": "comparison",
    }[scope]
    return {
        spec.name: f"results/logs/figure_{spec.name}/{where}.log"
        for spec in figure_registry.figures(scope)
    }


def figure_group_names(scope):
    """The figures a scope's job draws, in order (params: a new figure reruns the group)."""
    return [spec.name for spec in figure_registry.figures(scope)]


def figure_group_inputs(scope):
    """Input function of a scope's figure job: every figure's inputs, by figure."""

    def inputs(wildcards):
        return figure_registry.group_inputs(
            scope, dict(wildcards.items()), figure_study()
        )

    return inputs


def figure_group_settings(scope):
    """The config keys a scope's figures read, the union of their entries' config_keys."""
    return canonical(figure_registry.group_settings(scope, config))


def figure_group_captions(scope):
    """Params function: each figure's report caption with the job's {model} and {layer}."""

    def captions(wildcards):
        return figure_registry.group_captions(scope, dict(wildcards.items()))

    return captions


# --- Real data and models: download items and key maps (rules in download.smk) ---------------
from unitablation.checkpoints import conversion_settings, load_keymaps
from unitablation.download import (
    DownloadError,
    UnpinnedError,
    check_fetchable,
    load_items,
)

RESOURCES_DIR = Path(workflow.basedir) / "resources"
DOWNLOADS = load_items(RESOURCES_DIR / "downloads.yaml", config["downloads"])
KEYMAPS = load_keymaps(RESOURCES_DIR / "checkpoint_keymaps.yaml")


def download_path(name):
    """Installed path of a download item: its file, or its folder for an archive."""
    return DOWNLOADS[name].path()


def download_names(kind, convertible=False):
    """Wildcard pattern of the item names of one kind (or of the convertible checkpoints).

    Never matches when there is none, so that the rule then never applies.
    """
    names = [
        name
        for name, item in DOWNLOADS.items()
        if item.kind == kind and (item.convert is not None or not convertible)
    ]
    return "|".join(map(re.escape, names)) or "(?!)"


def download_settings(wildcards):
    """What fetching an item reads; fails before any job if it has no URL or no allowed pin."""
    item = DOWNLOADS[wildcards.item]
    filename = dict(wildcards.items()).get("filename")
    if filename is not None and filename != item.filename:
        raise ValueError(
            f"download item {item.name!r} installs {item.path()}, not {filename}"
        )
    allowed = config["allow_unpinned_downloads"]
    try:
        check_fetchable(item, allowed)
    except UnpinnedError as error:
        hint = "On the command line: --config allow_unpinned_downloads=True."
        raise ValueError(f"{error} {hint}") from None
    except DownloadError as error:
        raise ValueError(str(error)) from None
    return item.settings(allowed)


def convert_source(wildcards):
    """The downloaded checkpoint an item's conversion reads."""
    return download_path(wildcards.item)


def convert_settings(wildcards):
    """Architecture, classes and key-map rules of an item's checkpoint conversion."""
    return conversion_settings(DOWNLOADS[wildcards.item], KEYMAPS)


# --- end real data and models ------------------------------------------------------------------


wildcard_constraints:
    model="|".join(map(re.escape, model_names())),
    split="|".join(SPLITS),
    layer="|".join(
        sorted({re.escape(l) for m in model_names() for l in model_layers(m)})
    ),
    basis="|".join(BASES),
    shard=r"\d{4}",
