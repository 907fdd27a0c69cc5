"""Model family: the trainable miniature AlexNet, and networks of any source (torchvision,
timm, the user's factory) with weights from a local file."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .class_lists import ClassList, model_class_names
from .images import model_input_size
from .layer_probe import layer_layouts
from .layouts import Layout
from .model_sources import TINY_ARCH, EntryError, Source, build_source, entry_source, parse_arch
from .store import atomic_path
from .weights import Checkpoint, read_weights
from .weights import read_checkpoint as read_checkpoint  # re-exported: callers import it here


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a source (`arch`), the builder's kwargs, the knobs of the trainable
    family, and the side of the square network input."""

    arch: str
    num_classes: int
    batchnorm: bool = False
    dropout: float = 0.0
    widths: tuple[int, ...] = (24, 48, 64, 64, 64)
    hidden: int = 256
    image_size: int = 64
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    side: int | None = None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any], num_classes: int, image_size: int) -> ModelSpec:
        """Build a spec from one `models.<name>` config entry."""
        source = entry_source(entry)
        size = int(entry.get("image_size") or image_size)
        return cls(
            arch=source.arch(),
            num_classes=int(
                entry.get("num_classes") or source.kwargs.get("num_classes") or num_classes
            ),
            batchnorm=bool(entry.get("batchnorm", False)),
            dropout=float(entry.get("dropout", 0.0)),
            widths=tuple(entry.get("widths", cls.widths)),
            hidden=int(entry.get("hidden", cls.hidden)),
            image_size=size,
            kwargs=dict(source.kwargs),
            side=model_input_size(entry, size),
        )

    def source(self) -> Source:
        """The source this spec builds from."""
        kind, name = parse_arch(self.arch)
        return Source(kind, name, dict(self.kwargs))


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
    """Instantiate the network of `spec` with freshly initialised weights (never a download)."""
    if spec.arch == TINY_ARCH:
        return TinyAlex(
            spec.num_classes,
            spec.batchnorm,
            spec.dropout,
            spec.widths,
            spec.hidden,
            spec.image_size,
        )
    return build_source(spec.source(), spec.num_classes)


def layer_names(model: nn.Module) -> list[str]:
    """Module paths of every submodule whose output can be studied (all but the root)."""
    return [name for name, _ in model.named_modules() if name]


def source_key(spec: ModelSpec) -> str:
    """The entry key a build failure concerns: the factory, the builder kwargs, or the arch."""
    if spec.source().kind == "factory":
        return "factory"
    return "model_kwargs" if spec.kwargs else "arch"


def probe_model(spec: ModelSpec) -> nn.Module:
    """The network of `spec` for shape checks: on the meta device (no memory, no arithmetic)
    when it builds and runs there, else on the CPU; EntryError when it cannot be built.

    The miniature AlexNet is probed on the CPU, where it costs milliseconds: many meta-device
    ops (normal_, batch norm) import torch._dynamo, about 2 s at every Snakemake start.
    """
    side = input_size(spec)
    if spec.source().kind != "tinyalex":
        try:
            with torch.device("meta"):
                model = build_model(spec)
            logits_width(forward_once(model, side))
            return model
        except Exception:  # some sources need real tensors: try again on the CPU
            pass
    try:
        model = build_model(spec)
    except EntryError:
        raise
    except Exception as error:  # a builder or a user's factory may raise anything
        raise EntryError(source_key(spec), f"cannot build {spec.arch}: {error}") from error
    try:
        output = forward_once(model, side)
    except Exception as error:  # e.g. a ViT of a fixed input size given another crop
        raise EntryError(
            "preprocess",
            f"{spec.arch} cannot run on a 1 x 3 x {side} x {side} input ({error}); the side is "
            "the preprocessing's crop (preprocess.crop, else input_size for a factory or an "
            "image size in model_kwargs, else the source's recipe)",
        ) from error
    try:
        logits_width(output)
    except ValueError as error:
        raise EntryError(source_key(spec), f"{spec.arch}: {error}") from None
    return model


def check_layers(
    spec: ModelSpec,
    layers: Sequence[str],
    model_name: str,
    side: int | None = None,
    prefix_tokens: int | None = None,
) -> dict[str, Layout]:
    """Layouts of the configured layers; ValueError listing the valid module paths if a layer
    does not exist, naming the enclosing block of a layer called more than once per forward,
    or naming the layer and its output shape when its layout cannot be interpreted."""
    if side:
        spec = replace(spec, side=side)
    return check_model_layers(
        probe_model(spec),
        layers,
        f"model {model_name!r} ({spec.arch})",
        input_size(spec),
        prefix_tokens,
    )


def check_model_layers(
    model: nn.Module,
    layers: Sequence[str],
    label: str,
    side: int,
    prefix_tokens: int | None = None,
) -> dict[str, Layout]:
    """check_layers on a built model (`label` names it in messages)."""
    valid = layer_names(model)
    missing = [layer for layer in layers if layer not in valid]
    if missing:
        raise ValueError(
            f"{label} has no layer(s) {missing}; valid module paths are: {', '.join(valid)}"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"{label}: layers listed twice in {list(layers)}")
    calls = module_calls(model, side)
    for layer in layers:
        if calls[layer] == 0:
            raise ValueError(
                f"{label}: layer {layer} is never called in a forward pass, so it has no output "
                "to study"
            )
        if calls[layer] > 1:
            raise ValueError(
                f"{label}: layer {layer} is called {calls[layer]} times in one forward pass, so "
                "it has no single output to ablate (a hook would replace the unit at every "
                "call, the store would keep only the last); study the block that encloses it "
                f"instead: {enclosing_block(layer, calls)}"
            )
    try:
        return layer_layouts(model, layers, side, prefix_tokens)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None


def module_calls(model: nn.Module, side: int) -> dict[str, int]:
    """How often each submodule runs in one forward pass of a 1 x 3 x side x side input (cheap
    on a model built on the meta device: no memory, no arithmetic)."""
    calls = {name: 0 for name in layer_names(model)}

    def count(name: str) -> Callable[..., None]:
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    was_training = model.training
    handles = [
        module.register_forward_hook(count(name)) for name, module in model.named_modules() if name
    ]
    try:
        forward_once(model, side)
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
    """Side of the square network input: `crop`, else the spec's side (from its entry's
    preprocessing), else the world's image size for tinyalex and 224 for other sources."""
    if crop:
        return int(crop)
    if spec.side:
        return spec.side
    return spec.image_size if spec.arch == TINY_ARCH else 224


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed, for provenance and checksum checks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, classes: Sequence[str]) -> None:
    """Write weights and class names atomically (temporary name, then rename)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as temporary:
        torch.save({"state_dict": state, "classes": list(classes)}, temporary)


#: The config key that allows a pickled whole model, as error messages name it.
TRUST_KEY = "models.<name>.trust_pickle"


def load_state(model: nn.Module, checkpoint: Checkpoint, arch: str, source: str | Path) -> None:
    """Load a state dict strictly; ValueError naming the file and the architecture."""
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {source} does not fit {arch}: {error}") from error


def load_model(
    spec: ModelSpec, checkpoint: Checkpoint, device: torch.device, source: str | Path
) -> nn.Module:
    """Build `spec`, load the checkpoint strictly, move to `device` and switch to eval mode."""
    model = build_model(spec)
    load_state(model, checkpoint, spec.arch, source)
    return model.to(device).eval()


def classifier_width(spec: ModelSpec, state: Mapping[str, torch.Tensor], source: str) -> int:
    """Classes of a torchvision or timm checkpoint: the rows of the weights whose shape follows
    the builder's num_classes (found by building twice on the meta device)."""
    with torch.device("meta"):
        seven = build_model(replace(spec, num_classes=7)).state_dict()
        eleven = build_model(replace(spec, num_classes=11)).state_dict()
    keys = [
        key
        for key, value in seven.items()
        if value.dim() and value.shape[0] == 7 and eleven[key].shape[0] == 11
    ]
    found = [key for key in keys if key in state and state[key].dim()]
    if not found:
        raise ValueError(
            f"checkpoint {source} has no classifier weights of {spec.arch} ({keys[:2]}) to read "
            "the number of classes from; set models.<name>.num_classes"
        )
    return int(state[found[-1]].shape[0])


def checkpoint_width(
    spec: ModelSpec, entry: Mapping[str, Any], checkpoint: Checkpoint, source: str
) -> int:
    """Classes of a built-in source's checkpoint: tinyalex's last linear layer; else the
    configured num_classes, the classes it records, or its classifier weights."""
    if spec.arch == TINY_ARCH:
        return checkpoint.num_classes()
    stated = entry.get("num_classes") or spec.kwargs.get("num_classes")
    if stated:
        return int(stated)
    if checkpoint.classes is not None:
        return len(checkpoint.classes)
    return classifier_width(spec, checkpoint.state_dict, source)


def forward_once(model: nn.Module, side: int) -> Any:
    """The model's output (eval mode, no grad) on one zero side x side image on its device."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    with torch.no_grad():
        return model.eval()(torch.zeros(1, 3, side, side, device=device))


def logits_width(output: Any) -> int:
    """Classes of a model from its output; ValueError unless it is class logits (N, K)."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"the model's output must be class logits (N, K), got {shape}")
    return int(output.shape[1])


def output_width(model: nn.Module, side: int) -> int:
    """Classes of a built model: the width of its output on one side x side image."""
    return logits_width(forward_once(model, side))


def load_configured_model(
    entry: Mapping[str, Any],
    weights: str | Path,
    device: torch.device,
    classes_hint: Sequence[str] | None = None,
    class_list: ClassList | None = None,
    model_name: str = "<name>",
) -> tuple[nn.Module, ModelSpec, list[str]]:
    """Model, spec and class names from a `models.<name>` config entry and its weights
    (`model_name` names the entry in errors).

    A factory without `weights` comes initialised from the factory (`weights` is then its
    file, not read). A pickled whole model is used as it is (`trust_pickle` only). The number
    of classes: tinyalex's checkpoint; a torchvision or timm entry's num_classes, else the
    classes its checkpoint records, else its classifier weights; a factory's or a whole
    model's output width. Class names come from the checkpoint when it records them, else the
    entry's `class_list`, else `classes_hint` (the eval split's class folders, or the store
    written from them), else "0".."K-1"; all but the last must name exactly the classifier's
    outputs (class_lists).
    """
    image_size = int(entry.get("image_size") or 224)
    spec = ModelSpec.from_config(entry, 2, image_size)
    kind = entry_source(entry).kind
    loaded = None
    if kind != "factory" or entry.get("weights"):
        trust_key = TRUST_KEY.replace("<name>", model_name)
        loaded = read_weights(weights, bool(entry.get("trust_pickle")), trust_key)
    recorded = loaded.classes if isinstance(loaded, Checkpoint) else None
    if isinstance(loaded, Checkpoint) and kind != "factory":
        width = checkpoint_width(spec, entry, loaded, str(weights))
        model = load_model(replace(spec, num_classes=width), loaded, device, weights)
    else:
        model = loaded if isinstance(loaded, nn.Module) else build_model(spec)
        if isinstance(loaded, Checkpoint):
            load_state(model, loaded, spec.arch, weights)
        model = model.to(device).eval()
        width = output_width(model, input_size(spec))
    classes = model_class_names(width, recorded, class_list, classes_hint, str(weights))
    return model, replace(spec, num_classes=width), classes
