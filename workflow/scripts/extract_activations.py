"""Rule adapter: one forward pass of a model over an image set, layer outputs to HDF5."""

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from unitablation.broden import read_broden  # noqa: E402
from unitablation.devices import use_full_float32  # noqa: E402
from unitablation.extraction import extract_activations  # noqa: E402
from unitablation.images import FileListSet, ImageFolderSet, default_preprocess  # noqa: E402
from unitablation.lease import gpu_lease  # noqa: E402
from unitablation.logs import logged_to, progress_options  # noqa: E402
from unitablation.models import check_layers, file_sha256, load_configured_model  # noqa: E402


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
) -> None:
    """Build the model from its checkpoint, run it once over the split, write the store."""
    torch.set_num_threads(threads)
    use_full_float32()
    with gpu_lease(device_name) as lease:
        print(f"device: {lease.description}", file=sys.stderr)
        device = lease.device
        preprocess = default_preprocess(model_entry["arch"], model_entry.get("preprocess"))
        if split == "eval":
            dataset = ImageFolderSet(source, preprocess)
            paths = dataset.relative_paths()
            hint = dataset.classes
        else:
            broden = read_broden(source)
            paths = [record.image for record in broden.records]
            files = [Path(source) / "images" / path for path in paths]
            dataset = FileListSet(files, [-1] * len(files), preprocess)
            hint = None
        model, spec, classes = load_configured_model(model_entry, weights, device, hint)
        if split == "eval" and classes != dataset.classes:
            raise ValueError(
                f"eval image folder {source} has classes {dataset.classes[:5]}... but checkpoint "
                f"{weights} was trained on {classes[:5]}..."
            )
        check_layers(spec, layers, model_name)
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
        extract_activations(
            model,
            layers,
            loader,
            store_out,
            device,
            attrs,
            paths=paths,
            maps_dtype=activations["maps_dtype"],
            progress=lambda batches: tqdm(batches, **progress_options(f"{model_name} {split}")),
        )
        print(f"wrote {store_out}: {len(dataset)} images, layers {list(layers)}", file=sys.stderr)


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.images,  # noqa: F821
            snakemake.input.weights,  # noqa: F821
            snakemake.output.store,  # noqa: F821
            snakemake.wildcards.split,  # noqa: F821
            snakemake.wildcards.model,  # noqa: F821
            snakemake.params.model,  # noqa: F821
            snakemake.params.layers,  # noqa: F821
            snakemake.params.activations,  # noqa: F821
            snakemake.params.device,  # noqa: F821
            snakemake.threads,  # noqa: F821
        )
