"""Model family: the trainable miniature AlexNet, and torchvision nets from local weights."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .class_lists import ClassList, model_class_names
from .store import atomic_path

TINY_ARCH = "tinyalex"

#: torchvision architectures the pipeline can build; weights come from a local file.
TORCHVISION_ARCHS = (
    "alexnet",
    "vgg11",
    "vgg16",
    "vgg16_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "densenet161",
    "googlenet",
)


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an architecture name plus the knobs of the trainable family."""

    arch: str
    num_classes: int
    batchnorm: bool = False
    dropout: float = 0.0
    widths: tuple[int, ...] = (24, 48, 64, 64, 64)
    hidden: int = 256
    image_size: int = 64

    @classmethod
    def from_config(cls, entry: Mapping[str, Any], num_classes: int, image_size: int) -> ModelSpec:
        """Build a spec from one `models.<name>` config entry."""
        return cls(
            arch=entry["arch"],
            num_classes=int(entry.get("num_classes") or num_classes),
            batchnorm=bool(entry.get("batchnorm", False)),
            dropout=float(entry.get("dropout", 0.0)),
            widths=tuple(entry.get("widths", cls.widths)),
            hidden=int(entry.get("hidden", cls.hidden)),
            image_size=int(entry.get("image_size") or image_size),
        )


class TinyAlex(nn.Module):
    """AlexNet in miniature: five convs then fc6 (hidden) and fc7 (logits), named submodules.

    Batch norm and dropout slots exist in every variant (as Identity when off), so module
    paths such as ``features.relu5`` name the same layer in all four training variants.
    """

    def __init__(
        self,
        num_classes: int,
        batchnorm: bool = False,
        dropout: float = 0.0,
        widths: Sequence[int] = (24, 48, 64, 64, 64),
        hidden: int = 256,
        image_size: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"tinyalex needs 5 conv widths, got {list(widths)}")
        if image_size % 16:
            raise ValueError(f"tinyalex needs an image size divisible by 16, got {image_size}")
        kernels = (5, 3, 3, 3, 3)
        strides = (2, 1, 1, 1, 1)
        pooled_after = (1, 2, 5)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for index, (width, kernel, stride) in enumerate(
            zip(widths, kernels, strides, strict=True), 1
        ):
            layers[f"conv{index}"] = nn.Conv2d(
                in_channels, width, kernel, stride=stride, padding=kernel // 2, bias=not batchnorm
            )
            layers[f"bn{index}"] = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
            layers[f"relu{index}"] = nn.ReLU()
            if index in pooled_after:
                layers[f"pool{index}"] = nn.MaxPool2d(2)
            in_channels = width
        self.features = nn.Sequential(layers)
        side = image_size // 16
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                drop6=nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                fc6=nn.Linear(in_channels * side * side, hidden),
                relu6=nn.ReLU(),
                drop7=nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                fc7=nn.Linear(hidden, num_classes),
            )
        )

        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation for convs, small normal for linear layers (as torchvision's VGG)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map a batch of normalised images to class logits."""
        return self.classifier(self.features(images))


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the architecture of `spec` with freshly initialised weights."""
    if spec.arch == TINY_ARCH:
        return TinyAlex(
            spec.num_classes,
            spec.batchnorm,
            spec.dropout,
            spec.widths,
            spec.hidden,
            spec.image_size,
        )
    if spec.arch in TORCHVISION_ARCHS:
        import torchvision

        constructor = getattr(torchvision.models, spec.arch)
        extra = {"aux_logits": False, "init_weights": False} if spec.arch == "googlenet" else {}
        return constructor(weights=None, num_classes=spec.num_classes, **extra)
    known = ", ".join((TINY_ARCH, *TORCHVISION_ARCHS))
    raise ValueError(f"unknown architecture {spec.arch!r}; known: {known}")


def layer_names(model: nn.Module) -> list[str]:
    """Module paths of every submodule whose output can be studied (all but the root)."""
    return [name for name, _ in model.named_modules() if name]


def check_layers(
    spec: ModelSpec, layers: Sequence[str], model_name: str, side: int | None = None
) -> None:
    """Fail with the list of valid module paths if any configured layer does not exist, and
    name the enclosing block of a layer called more than once per forward (no single output)."""
    with torch.device("meta"):
        model = build_model(spec)
    valid = layer_names(model)
    missing = [layer for layer in layers if layer not in valid]
    if missing:
        raise ValueError(
            f"model {model_name!r} ({spec.arch}) has no layer(s) {missing}; "
            f"valid module paths are: {', '.join(valid)}"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"model {model_name!r}: layers listed twice in {list(layers)}")
    calls = module_calls(model, side or input_size(spec))
    for layer in layers:
        if calls[layer] == 0:
            raise ValueError(
                f"model {model_name!r} ({spec.arch}): layer {layer} is never called in a "
                "forward pass, so it has no output to study"
            )
        if calls[layer] > 1:
            raise ValueError(
                f"model {model_name!r} ({spec.arch}): layer {layer} is called {calls[layer]} "
                "times in one forward pass, so it has no single output to ablate (a hook would "
                "replace the unit at every call, the store would keep only the last); "
                f"study the block that encloses it instead: {enclosing_block(layer, calls)}"
            )


def module_calls(model: nn.Module, side: int) -> dict[str, int]:
    """How often each submodule runs in one forward pass of a 1 x 3 x side x side input (cheap
    on a model built on the meta device: no memory, no arithmetic)."""
    calls = {name: 0 for name in layer_names(model)}
    device = next((p.device for p in model.parameters()), torch.device("meta"))

    def count(name: str) -> Callable[..., None]:
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    was_training = model.training
    handles = [
        module.register_forward_hook(count(name)) for name, module in model.named_modules() if name
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, side, side, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def enclosing_block(layer: str, calls: Mapping[str, int]) -> str:
    """The innermost module above `layer` that runs exactly once per forward (e.g. `layer4.1`
    for `layer4.1.relu`), or the whole model's output when there is none."""
    parts = layer.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:end])
        if calls.get(parent) == 1:
            return parent
    return "the model's output (no enclosing module runs once)"


def input_size(spec: ModelSpec, crop: int | None = None) -> int:
    """Side of the square network input: the world's image size, else the crop (224 default)."""
    return spec.image_size if spec.arch == TINY_ARCH else int(crop or 224)


def layer_channels(spec: ModelSpec, layers: Sequence[str], side: int) -> dict[str, int]:
    """Output channels (units) of each layer, from a forward pass on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(spec).eval()
        modules = dict(model.named_modules())
        channels: dict[str, int] = {}
        handles = [
            modules[layer].register_forward_hook(
                lambda _m, _i, output, layer=layer: channels.__setitem__(layer, output.shape[1])
            )
            for layer in layers
        ]
        try:
            model(torch.empty(1, 3, side, side))
        finally:
            for handle in handles:
                handle.remove()
    return channels


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed, for provenance and checksum checks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """Weights as a state dict, plus the class names when the checkpoint records them."""

    state_dict: dict[str, torch.Tensor]
    classes: list[str] | None = None

    def num_classes(self) -> int:
        """Width of the classifier: the last 2-D weight in the state dict."""
        matrices = [
            value
            for key, value in self.state_dict.items()
            if key.endswith("weight") and value.dim() == 2
        ]
        if not matrices:
            raise ValueError("checkpoint has no fully connected layer to read the classes from")
        return int(matrices[-1].shape[0])


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a state dict or a {'state_dict': ..., 'classes': ...} checkpoint, on the CPU."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    classes = None
    if isinstance(payload, dict) and "state_dict" in payload:
        classes = payload.get("classes")
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(
        isinstance(value, torch.Tensor) for value in payload.values()
    ):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    state = {key.removeprefix("module."): value for key, value in payload.items()}
    return Checkpoint(state, list(classes) if classes is not None else None)


def save_checkpoint(path: str | Path, model: nn.Module, classes: Sequence[str]) -> None:
    """Write weights and class names atomically (temporary name, then rename)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as temporary:
        torch.save({"state_dict": state, "classes": list(classes)}, temporary)


def load_model(
    spec: ModelSpec, checkpoint: Checkpoint, device: torch.device, source: str | Path
) -> nn.Module:
    """Build `spec`, load the checkpoint strictly, move to `device` and switch to eval mode."""
    model = build_model(spec)
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {source} does not fit {spec.arch}: {error}") from error
    return model.to(device).eval()


def load_configured_model(
    entry: Mapping[str, Any],
    weights: str | Path,
    device: torch.device,
    classes_hint: Sequence[str] | None = None,
    class_list: ClassList | None = None,
) -> tuple[nn.Module, ModelSpec, list[str]]:
    """Model, spec and class names from a `models.<name>` config entry and its checkpoint.

    Class names come from the checkpoint when it records them, else the entry's `class_list`,
    else `classes_hint` (the eval split's class folders, or the store written from them), else
    "0".."K-1"; all but the last must name exactly the classifier's outputs (class_lists).
    """
    checkpoint = read_checkpoint(weights)
    classes = model_class_names(
        checkpoint.num_classes(), checkpoint.classes, class_list, classes_hint, str(weights)
    )
    entry = {**entry, "num_classes": entry.get("num_classes") or len(classes)}
    spec = ModelSpec.from_config(entry, len(classes), int(entry.get("image_size") or 224))
    return load_model(spec, checkpoint, device, weights), spec, classes
