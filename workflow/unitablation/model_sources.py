"""Where a network comes from: torchvision's registry, timm, or the user's own factory function.

A `models.<name>` entry names its source with `arch` (`tinyalex`, `<name>` or
`torchvision:<name>`, `timm:<name>`) or with `factory` (`path/to/file.py:function` or
`package.module:function`, called with `kwargs`). Names are checked against what is installed,
with the closest valid names in the error; nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

TINY_ARCH = "tinyalex"
KINDS = ("tinyalex", "torchvision", "timm", "factory")
#: torchvision builders whose auxiliary heads and scipy-based init are off by default here.
TORCHVISION_EXTRA = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


class EntryError(ValueError):
    """A model entry's problem, with the entry key it concerns (arch, factory, kwargs, ...)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Source:
    """A model's origin: kind (tinyalex, torchvision, timm, factory), name, builder kwargs."""

    kind: str
    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs, e.g. `timm:vit_tiny_patch16_224 {img_size: 32}`."""
        if self.kind == "factory":
            text = f"factory {self.name}"
        elif self.kind == "torchvision":
            text = f"torchvision:{self.name}"
        else:
            text = self.arch()
        return f"{text} {flow_mapping(self.kwargs)}" if self.kwargs else text

    def arch(self) -> str:
        """The source as one string: `tinyalex`, `resnet18`, `timm:resnet18`, `factory:f.py:g`."""
        return self.name if self.kind in ("tinyalex", "torchvision") else f"{self.kind}:{self.name}"


def flow_mapping(values: Mapping[str, Any]) -> str:
    """`{a: 1, b: x}`: keyword arguments as YAML flow style, keys in config order."""
    return "{" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}"


def parse_arch(arch: str) -> tuple[str, str]:
    """(kind, name) of an arch string: `tinyalex`, `[torchvision:]name`, `timm:name`,
    `factory:target:function` (the form ModelSpec.arch uses for factories)."""
    if arch == TINY_ARCH:
        return "tinyalex", arch
    kind, sep, name = arch.partition(":")
    if sep and kind in KINDS[1:]:
        return kind, name
    return "torchvision", arch


def entry_source(entry: Mapping[str, Any]) -> Source:
    """The Source of one `models.<name>` config entry."""
    if entry.get("factory"):
        return Source("factory", str(entry["factory"]), dict(entry.get("kwargs") or {}))
    kind, name = parse_arch(str(entry["arch"]))
    return Source(kind, name, dict(entry.get("model_kwargs") or {}))


def describe_source(entry: Mapping[str, Any]) -> str:
    """One-line description of an entry's source for logs."""
    return entry_source(entry).describe()


def closest(name: str, candidates: list[str]) -> str:
    """The few valid names closest to a mistyped one, for error messages."""
    matches = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return ", ".join(matches) if matches else "none close"


def torchvision_names() -> list[str]:
    """Every classification builder the installed torchvision registers."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    """Every architecture the installed timm can create."""
    import timm

    return list(timm.list_models())


def check_name(source: Source) -> None:
    """ValueError naming the closest valid names when a torchvision or timm name is unknown."""
    if source.kind == "torchvision":
        names = torchvision_names()
        if source.name not in names:
            raise ValueError(
                f"unknown torchvision architecture {source.name!r}; closest: "
                f"{closest(source.name, names)} ({len(names)} classification builders in "
                f"torchvision; timm models take `timm:<name>`, your own `factory`)"
            )
    elif source.kind == "timm":
        import timm

        if not timm.is_model(source.name):
            raise ValueError(
                f"unknown timm architecture {source.name!r}; closest: "
                f"{closest(source.name, timm_names())}"
            )


def build_torchvision(name: str, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """A torchvision classifier with fresh weights (never a download)."""
    import torchvision

    options = {**TORCHVISION_EXTRA.get(name, {}), "num_classes": num_classes, **kwargs}
    return torchvision.models.get_model(name, weights=None, **options)


def build_timm(name: str, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """A timm model with fresh weights (pretrained=False: never a download)."""
    import timm

    options = {"num_classes": num_classes, **kwargs}
    return timm.create_model(name, pretrained=False, **options)


def split_factory(target: str) -> tuple[str, str]:
    """(`file.py` or `package.module`, function) of a factory string; ValueError if malformed."""
    module, sep, function = target.rpartition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(
            f"factory {target!r} must be `path/to/file.py:function` or `package.module:function`"
        )
    return module, function


def is_file_target(module: str) -> bool:
    """Whether a factory's module part is a file path (ends in .py or holds a slash)."""
    return module.endswith(".py") or "/" in module or "\\" in module


def factory_file(target: str) -> str | None:
    """The Python file a factory lives in: the path as configured, or the module's source file
    (None for a module that cannot be found or has no file)."""
    module, _ = split_factory(target)
    if is_file_target(module):
        return module
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def import_file(path: Path) -> ModuleType:
    """Execute a Python file as a module (its folder importable while it runs)."""
    if not path.is_file():
        raise ValueError(f"factory file {path} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"unitablation_factory_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"factory file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so that the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise ValueError(f"factory file {path} fails on import: {error!r}") from error
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def load_factory(target: str) -> Callable[..., Any]:
    """The factory function a `file.py:function` or `package.module:function` string names."""
    module_name, function = split_factory(target)
    if is_file_target(module_name):
        module = import_file(Path(module_name))
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(
                f"factory module {module_name!r} cannot be imported ({error}); install it or "
                "put its folder on PYTHONPATH, or give the file: path/to/file.py:function"
            ) from error
    built = getattr(module, function, None)
    if not callable(built):
        raise ValueError(f"factory {target!r}: {module_name} defines no function {function!r}")
    return built


def bind_kwargs(function: Callable[..., Any], kwargs: Mapping[str, Any], target: str) -> None:
    """ValueError when `kwargs` do not fit the factory's signature (unknown or missing)."""
    signature = inspect.signature(function)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        names = [
            name
            for name, parameter in signature.parameters.items()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]
        open_ended = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
        unknown = [] if open_ended else [key for key in kwargs if key not in names]
        hints = "".join(
            f"; {key!r} is no argument (closest: {closest(key, names)})" for key in unknown
        )
        raise ValueError(
            f"kwargs {dict(kwargs)} do not fit factory {target}{signature}: {error}{hints}"
        ) from None


def build_factory(target: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Call the user's factory with its kwargs; ValueError unless it returns an nn.Module."""
    function = load_factory(target)
    bind_kwargs(function, kwargs, target)
    model = function(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_source(source: Source, num_classes: int) -> nn.Module:
    """A freshly built network of a torchvision, timm or factory source."""
    kwargs = dict(source.kwargs)
    if source.kind == "torchvision":
        check_name(source)
        return build_torchvision(source.name, int(kwargs.pop("num_classes", num_classes)), kwargs)
    if source.kind == "timm":
        check_name(source)
        return build_timm(source.name, int(kwargs.pop("num_classes", num_classes)), kwargs)
    if source.kind == "factory":
        return build_factory(source.name, kwargs)
    raise ValueError(f"source {source.kind!r} is built by models.build_model")


def check_entry(entry: Mapping[str, Any]) -> None:
    """Config-time checks of a model entry's source; EntryError naming the key at fault.

    torchvision and timm names must be installed builders and need local `weights` (nothing is
    downloaded); a factory must import, its `kwargs` must bind to its signature, and without
    `weights` it must live in a file (that file is then the jobs' weights input).
    """
    source = entry_source(entry)
    if source.kind in ("torchvision", "timm"):
        try:
            check_name(source)
        except ValueError as error:
            raise EntryError("arch", str(error)) from None
        if not entry.get("weights"):
            raise EntryError(
                "weights",
                f"a local weights file is required for {source.describe()} (nothing is "
                "downloaded): a state dict (.pt, .pth, .pth.tar) or .safetensors",
            )
    if source.kind != "factory":
        return
    try:
        function = load_factory(source.name)
    except ValueError as error:
        raise EntryError("factory", str(error)) from None
    try:
        bind_kwargs(function, source.kwargs, source.name)
    except ValueError as error:
        raise EntryError("kwargs", str(error)) from None
    if not entry.get("weights") and factory_file(source.name) is None:
        raise EntryError(
            "weights",
            f"factory {source.name} has no source file to stand in as the jobs' weights input; "
            "give weights or a file factory (path/to/file.py:function)",
        )
