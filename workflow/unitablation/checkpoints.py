"""Published checkpoints whose layout differs from torchvision's, turned into plain state dicts.

The CSAIL Places365 checkpoints (`<arch>_places365.pth.tar`) were saved by a training script
derived from PyTorch's ImageNet example, in Python 2.7 with PyTorch 0.2: a dict
{'epoch', 'arch', 'state_dict', 'best_prec1'} whose state dict carries DataParallel's `module.`
(for AlexNet and VGG only the features are wrapped: `features.module.0.weight`), and, for
DenseNet, the pre-0.3 parameter names `norm.1`, `conv.2`. Their loader
(CSAILVision/places365, run_placesCNN_basic.py) removes every `module.`. Key maps are data
(resources/checkpoint_keymaps.yaml): an ordered list of regular-expression substitutions.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .store import atomic_path


def remap_keys(state: Mapping[str, Any], rules: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Apply each rule ({pattern, replace}, `re.sub` syntax) in order to every key.

    Raises ValueError when two keys map to the same name.
    """
    compiled = [(re.compile(rule["pattern"]), rule["replace"]) for rule in rules]
    result: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in compiled:
            new = pattern.sub(replacement, new)
        if new in result:
            raise ValueError(f"key map sends two checkpoint keys to {new!r} (one is {key!r})")
        result[new] = value
    return result


def read_state_dict(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """The state dict inside a checkpoint file (bare, or under 'state_dict'), on the CPU.

    Python 2 pickles (the CSAIL files) need latin-1 for their byte strings; that encoding
    changes nothing for Python 3 pickles. `weights_only=False` runs arbitrary pickle code: only
    for files whose checksum is pinned and trusted.
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch warns, wrongly, that weights_only drops encoding
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            payload = torch.load(
                path, map_location="cpu", weights_only=weights_only, encoding="latin1"
            )
    except Exception as error:  # torch raises many types for unreadable files
        hint = (
            " (it may hold Python objects that weights_only loading refuses; if the file's "
            "checksum is pinned and you trust it, set convert.weights_only: false for its item)"
            if weights_only
            else ""
        )
        raise ValueError(f"cannot read checkpoint {path}: {error}{hint}") from error
    if isinstance(payload, Mapping) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in payload.values()
    ):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    return dict(payload)


def convert_checkpoint(
    source: str | Path,
    output: str | Path,
    arch: str,
    num_classes: int,
    rules: Sequence[Mapping[str, str]],
    weights_only: bool = True,
) -> list[str]:
    """Remap a checkpoint's keys, check it loads strictly into torchvision `arch`, save it.

    Batch-norm `num_batches_tracked` counters missing from old checkpoints are set to 0 (they
    do not affect eval-mode outputs). The output holds {'state_dict': ...} with contiguous CPU
    tensors, in the architecture's key order, written under a temporary name and renamed.
    Returns the converted keys. ValueError lists missing and unexpected keys.
    """
    import torch

    from unitablation.models import ModelSpec, build_model

    state = remap_keys(read_state_dict(source, weights_only), rules)
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    model = build_model(ModelSpec(arch=arch, num_classes=int(num_classes)))
    reference = model.state_dict()
    for key in reference:  # PyTorch < 0.4.1 kept no batch-norm step counter: start it at 0
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(reference[key])
    state = {key: state[key] for key in reference if key in state} | {
        key: value for key, value in state.items() if key not in reference
    }
    expected = set(reference)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not fit torchvision {arch} ({num_classes} classes) after "
            f"the key map: missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {source} does not fit torchvision {arch}: {error}") from error
    with atomic_path(output) as temporary:
        torch.save({"state_dict": state}, temporary)
    return list(state)


def load_keymaps(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Read the key-map table: name -> ordered [{pattern, replace}], each pattern compiled once."""
    import yaml  # only the Snakefile side reads YAML

    with open(path) as handle:
        table = yaml.safe_load(handle) or {}
    maps = {}
    for name, rules in table.items():
        if not isinstance(rules, list) or not all(
            isinstance(rule, dict) and set(rule) == {"pattern", "replace"} for rule in rules
        ):
            raise ValueError(f"{path}: key map {name!r} must be a list of {{pattern, replace}}")
        for rule in rules:
            try:
                re.compile(rule["pattern"])
            except re.error as error:
                raise ValueError(f"{path}: key map {name!r}: bad pattern: {error}") from None
        maps[name] = [{"pattern": str(r["pattern"]), "replace": str(r["replace"])} for r in rules]
    return maps


def conversion_settings(
    item: Any, keymaps: Mapping[str, Sequence[Mapping[str, str]]]
) -> dict[str, Any]:
    """What converting a download item's checkpoint reads: arch, classes, key-map rules.

    `item` is a DownloadItem with a `convert` entry {arch, num_classes, keymap[, weights_only]}.
    """
    convert = item.convert
    if not convert or not {"arch", "num_classes", "keymap"} <= set(convert):
        raise ValueError(f"download item {item.name!r}: convert needs arch, num_classes, keymap")
    if convert["keymap"] not in keymaps:
        raise ValueError(
            f"download item {item.name!r}: no key map {convert['keymap']!r} in "
            f"resources/checkpoint_keymaps.yaml (known: {', '.join(keymaps)})"
        )
    return {
        "arch": str(convert["arch"]),
        "num_classes": int(convert["num_classes"]),
        "keymap": str(convert["keymap"]),
        "rules": [dict(rule) for rule in keymaps[convert["keymap"]]],
        "weights_only": bool(convert.get("weights_only", True)),
    }
