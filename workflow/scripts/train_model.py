"""Rule adapter: train one miniature model variant on an ImageFolder and save its weights."""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from unitablation.devices import use_full_float32  # noqa: E402
from unitablation.images import ImageFolderSet, model_preprocess, stack_dataset  # noqa: E402
from unitablation.lease import gpu_lease  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.models import ModelSpec, build_model, save_checkpoint  # noqa: E402
from unitablation.store import atomic_paths  # noqa: E402
from unitablation.training import TrainConfig, train_model  # noqa: E402


def main(
    images_dir: str,
    weights_out: str,
    history_out: str,
    model_entry: Mapping[str, Any],
    training: Mapping[str, Any],
    seed: int,
    device_name: str,
    threads: int,
) -> None:
    """Train from a fixed seed; write the checkpoint and a per-epoch history CSV."""
    torch.set_num_threads(threads)
    use_full_float32()
    with gpu_lease(device_name) as lease:
        print(f"device: {lease.description}", file=sys.stderr)
        device = lease.device
        dataset = ImageFolderSet(images_dir, model_preprocess(model_entry))
        images, labels = stack_dataset(dataset)
        spec = ModelSpec.from_config(model_entry, len(dataset.classes), images.shape[-1])
        print(
            f"training {spec} on {len(dataset)} images, {len(dataset.classes)} classes",
            file=sys.stderr,
        )
        torch.manual_seed(seed)
        model = build_model(spec)

        def report(record: dict[str, float]) -> None:
            print(", ".join(f"{key}={value:.4g}" for key, value in record.items()), file=sys.stderr)

        history = train_model(
            model, images, labels, TrainConfig.from_config(training, seed), device, on_epoch=report
        )
        with atomic_paths([weights_out, history_out]) as (weights_tmp, history_tmp):
            save_checkpoint(weights_tmp, model, dataset.classes)
            pd.DataFrame(history).to_csv(history_tmp, index=False, float_format="%.6g")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.images,  # noqa: F821
            snakemake.output.weights,  # noqa: F821
            snakemake.output.history,  # noqa: F821
            snakemake.params.model,  # noqa: F821
            snakemake.params.training,  # noqa: F821
            snakemake.params.seed,  # noqa: F821
            snakemake.params.device,  # noqa: F821
            snakemake.threads,  # noqa: F821
        )
