"""Weights files: state dicts (.pt, .pth, .pth.tar, .safetensors), common wrappers, and
pickled whole models (only when the user trusts the file: unpickling runs its code)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Keys under which training scripts commonly nest the state dict.
WRAPPER_KEYS = ("state_dict", "model")
#: Key prefixes that wrappers add (DataParallel / DistributedDataParallel, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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


def strip_prefixes(key: str) -> str:
    """A state-dict key without the prefixes that training wrappers add, however nested."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key.removeprefix(prefix), True
    return key


def unwrap(payload: Any) -> tuple[Any, list[str] | None]:
    """The state dict (or module) inside a {'state_dict'|'model': ..., 'classes': ...} wrapper."""
    classes = None
    if isinstance(payload, Mapping):
        for key in WRAPPER_KEYS:
            if key in payload and isinstance(payload[key], Mapping | nn.Module):
                classes = payload.get("classes")
                payload = payload[key]
                break
    return payload, list(classes) if classes is not None else None


def as_checkpoint(payload: Any, classes: list[str] | None, path: str | Path) -> Checkpoint:
    """A Checkpoint from a mapping of tensors, prefixes stripped; ValueError for anything else."""
    if not isinstance(payload, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in payload.values()
    ):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    state = {strip_prefixes(str(key)): value for key, value in payload.items()}
    return Checkpoint(state, classes)


def read_safetensors(path: str | Path) -> Checkpoint:
    """A .safetensors file: tensors only, no code, so always safe to read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return as_checkpoint(load_file(str(path), device="cpu"), None, path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error


def pickled_globals(path: str | Path) -> list[str]:
    """Python classes and functions a torch.save file would import when unpickled (no code
    runs to find them); empty for a plain state dict or a file torch cannot parse."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint (legacy or corrupt): weights_only load decides
        return []


def refuse_pickle(path: str | Path, trust_key: str, names: list[str]) -> ValueError:
    """The error for a pickled object loaded without trust: what it is, why, which key allows."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return ValueError(
        f"checkpoint {path} holds pickled Python objects ({shown}), e.g. a whole model, not a "
        "plain state dict; loading it runs code stored in the file, so it is refused. If you "
        f"trust the file, set {trust_key}: true (or save model.state_dict() instead)"
    )


def read_torch_file(path: str | Path, trust_pickle: bool, trust_key: str) -> Checkpoint | nn.Module:
    """A torch.save file: tensors only unless `trust_pickle` (then a whole module is allowed)."""
    names = pickled_globals(path)
    if names and not trust_pickle:
        raise refuse_pickle(path, trust_key, names)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # torch raises many types for a corrupt file
        hint = (
            f" (if it holds pickled objects, e.g. a whole model, from a source you trust, set "
            f"{trust_key}: true)"
            if not trust_pickle and "Unsupported global" in str(error)
            else ""
        )
        raise ValueError(f"cannot read checkpoint {path}: {error}{hint}") from error
    payload, classes = unwrap(payload)
    if isinstance(payload, nn.Module):
        return payload
    return as_checkpoint(payload, classes, path)


def read_weights(
    path: str | Path, trust_pickle: bool = False, trust_key: str = "trust_pickle"
) -> Checkpoint | nn.Module:
    """Weights of a model, on the CPU: a Checkpoint, or a whole nn.Module when trusted.

    `.safetensors` files are read with safetensors; anything else with torch.load, refusing
    pickled objects unless `trust_pickle` (the message names `trust_key`, the config key).
    """
    if str(path).endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_file(path, trust_pickle, trust_key)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A state dict (bare or wrapped, `module.` prefixes removed) or ValueError; never unpickles
    code."""
    weights = read_weights(path)
    if isinstance(weights, nn.Module):  # unreachable without trust; kept for the type checker
        raise ValueError(f"checkpoint {path} holds a whole model, not a state dict")
    return weights
