"""Rule adapter: one forward pass of a model over an image set, layer outputs to HDF5."""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from unitablation.broden import read_broden
from unitablation.class_lists import read_class_list
from unitablation.devices import use_full_float32
from unitablation.extraction import extract_activations
from unitablation.images import FileListSet, ImageFolderSet, model_preprocess
from unitablation.lease import gpu_lease
from unitablation.logs import logged_to, progress_options
from unitablation.model_sources import describe_source
from unitablation.models import check_layers, file_sha256, load_configured_model

LOG = logging.getLogger("unitablation.scripts.extract_activations")


def main(
    source: str,
    weights: str,
    store_out: str,
    split: str,
    model_name: str,
    model_entry: Mapping[str, Any],
    layers: Sequence[str],
    activations: Mapping[str, Any],
    device_name: str,
    threads: int,
    class_list: str | None = None,
    class_folders: str | None = None,
) -> None:
    """Build the model from its checkpoint, run it once over the split, write the store.

    Class names: the checkpoint's, else the `class_list` file's, else the eval split's class
    folders (`source` itself for the eval split, `class_folders` for the concept set), else
    "0".."K-1". The eval split's folders must be the classes' folders, in output order.
    """
    torch.set_num_threads(threads)
    use_full_float32()
    with gpu_lease(device_name) as lease:
        LOG.info(f"device: {lease.description}")
        device = lease.device
        preprocess = model_preprocess(model_entry)
        LOG.info(f"model: {describe_source(model_entry)}; preprocess: {preprocess.describe()}")
        listed = None
        if class_list:  # messages name the config key as well as the file
            listed = read_class_list(class_list)
            listed = replace(listed, source=f"{class_list} (models.{model_name}.classes)")
        if split == "eval":
            dataset = ImageFolderSet(source, preprocess)
            paths = dataset.relative_paths()
            folders = dataset.classes
        else:
            broden = read_broden(source)
            paths = [record.image for record in broden.records]
            files = [Path(source) / "images" / path for path in paths]
            dataset = FileListSet(files, [-1] * len(files), preprocess)
            folders = ImageFolderSet(class_folders, preprocess).classes if class_folders else None
        model, spec, classes = load_configured_model(
            model_entry, weights, device, folders, listed, model_name
        )
        expected = listed.folders if listed is not None else classes
        if split == "eval" and expected != dataset.classes:
            raise ValueError(
                f"eval image folder {source} has class folders {dataset.classes[:5]}... but "
                f"{'class list ' + listed.source if listed else 'checkpoint ' + str(weights)} "
                f"expects {expected[:5]}... ({len(expected)} classes, output order)"
            )
        check_layers(spec, layers, model_name, prefix_tokens=model_entry.get("prefix_tokens"))
        loader = DataLoader(
            dataset, batch_size=activations["batch_size"], shuffle=False, num_workers=0
        )
        attrs = {
            "model": model_name,
            "arch": spec.arch,
            "weights_sha256": file_sha256(weights),
            "dataset": str(source),
            "split": split,
            "preprocess": preprocess.to_json(),
            "classes": list(classes),
        }
        layouts = extract_activations(
            model,
            layers,
            loader,
            store_out,
            device,
            attrs,
            paths=paths,
            maps_dtype=activations["maps_dtype"],
            # The schema always sets it; a caller outside the pipeline may omit it (raw maps).
            compression=activations.get("compression", "none"),
            progress=lambda batches: tqdm(batches, **progress_options(f"{model_name} {split}")),
            prefix_tokens=model_entry.get("prefix_tokens"),
        )
        for layer, layout in layouts.items():
            LOG.info(f"layer {layer}: {layout.describe()}")
        LOG.info(f"wrote {store_out}: {len(dataset)} images, layers {list(layers)}")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.images,
            snakemake.input.weights,
            snakemake.output.store,
            snakemake.wildcards.split,
            snakemake.wildcards.model,
            snakemake.params.model,
            snakemake.params.layers,
            snakemake.params.activations,
            snakemake.params.device,
            snakemake.threads,
            snakemake.input.get("class_list"),
            snakemake.input.get("class_folders"),
        )
