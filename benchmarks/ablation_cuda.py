"""The ablation engine on a CUDA device: agreement with the naive hook path there, and speed.

For each model (random weights, N random 224x224 images) it times the engine (extraction pass +
all units) and the naive full forward per unit (on a subset), both on the GPU in full float32,
and counts prediction disagreements on the subset, separating float near-ties.

    python benchmarks/ablation_cuda.py [--images 64] [--naive-units 16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from unitablation.ablation import AblationEngine
from unitablation.devices import use_full_float32
from unitablation.extraction import LayerRecorder

CASES = {
    "alexnet": "features.11",
    "vgg16": "features.29",
    "resnet18": "layer3",
    "resnet50": "layer4",
}


def seconds(function, device: torch.device) -> tuple[object, float]:
    """(result, wall seconds) of one call, with the device synchronised around it."""
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = function()
    torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


@torch.no_grad()
def check_model(name: str, layer: str, args: argparse.Namespace, device: torch.device) -> None:
    """Print one table row: the engine and the naive path on one model, on the GPU."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=1000).to(device).eval()
    images = torch.randn(args.images, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (args.images,))
    engine = AblationEngine(model, layer, device, units_per_call=64)
    model(images[:2])  # warm-up: cuDNN initialisation is not part of either method

    def extract_and_run():
        with LayerRecorder(model, [layer]) as recorder:
            model(images)
        maps = recorder.outputs[layer]
        units = range(maps.shape[1])
        return maps, engine.run([(maps, labels)], units, 1000)

    (maps, _), engine_s = seconds(extract_and_run, device)
    channels = maps.shape[1]
    subset = list(range(0, channels, max(1, channels // args.naive_units)))[: args.naive_units]
    fast = engine.logits(maps, subset)
    baseline = model(images).float().cpu()
    module = dict(model.named_modules())[layer]

    def naive():
        outputs = []
        for unit in subset:
            handle = module.register_forward_hook(
                lambda _m, _i, out, unit=unit: out.index_fill(
                    1, torch.tensor([unit], device=device), 0.0
                )
            )
            outputs.append(model(images).float().cpu())
            handle.remove()
        return torch.stack(outputs)

    slow, naive_s = seconds(naive, device)
    differs = fast.argmax(-1) != slow.argmax(-1)
    top = slow.topk(2, dim=-1).values
    near = (top[..., 0] - top[..., 1]) < 1e-5
    engine_rate = channels * args.images / engine_s
    naive_rate = len(subset) * args.images / naive_s
    print(
        f"{name} | {layer} | {engine.method} | {channels} | {engine_rate:.4g} | "
        f"{naive_rate:.4g} | {engine_rate / naive_rate:.1f} | "
        f"{int(differs.sum())} ({int((differs & near).sum())}) | "
        f"{float((fast - slow).abs().max()):.1e} / {float((slow - baseline).abs().max()):.1e}",
        flush=True,
    )


@torch.no_grad()
def main() -> None:
    """Print one row per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--naive-units", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    use_full_float32()
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, N={args.images}")
    print(
        "model | layer | method | units | engine pairs/s | naive pairs/s | speedup | "
        "disagreements (near ties)"
    )
    for name, layer in CASES.items():
        check_model(name, layer, args, device)


if __name__ == "__main__":
    main()
