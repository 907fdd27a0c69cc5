"""One forward pass per (model, image set): layer outputs recorded by hooks, streamed to HDF5."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .layer_probe import model_prefix_tokens
from .layouts import Layout, infer_layout
from .store import STORE_FORMAT, atomic_path

#: Target bytes per HDF5 chunk of a maps dataset (chunks hold whole images).
CHUNK_BYTES = 1 << 20

#: HDF5 filters of the stored maps by `activations.compression` (h5py decompresses on read).
#: gzip runs at level 1 and neither behind the byte shuffle: on ReLU maps a higher level saves a
#: few percent for more write time, the shuffle makes stores larger (benchmarks/compression.py).
COMPRESSION_FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "lzf": {"compression": "lzf"},
    "gzip": {"compression": "gzip", "compression_opts": 1},
}


def compression_filters(compression: str) -> dict[str, Any]:
    """h5py create_dataset keywords of one compression name; a ValueError naming the choices."""
    if compression not in COMPRESSION_FILTERS:
        raise ValueError(
            f"compression must be one of {', '.join(COMPRESSION_FILTERS)}, got {compression!r}"
        )
    return COMPRESSION_FILTERS[compression]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, stored as provenance.

    torchvision's comes from its installed metadata: importing it (which imports torch._dynamo)
    costs each extraction job about 2 s.
    """
    from importlib.metadata import version

    return {
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
    }


class LayerRecorder:
    """Forward hooks that copy the outputs of named modules during one forward pass.

    A module that runs more than once in a forward (torchvision ResNet's `layer4.1.relu`) has
    no single output: the recorder refuses it rather than keep only its last call.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [layer for layer in layers if layer not in modules or not layer]
        if missing:
            valid = ", ".join(name for name in modules if name)
            raise ValueError(f"no layer(s) {missing} in model; valid module paths are: {valid}")
        self.outputs: dict[str, torch.Tensor] = {}
        self._calls: set[str] = set()  # layers already recorded in the current forward
        self._handles = [
            modules[layer].register_forward_hook(self._make_hook(layer)) for layer in layers
        ]
        self._handles.append(model.register_forward_pre_hook(lambda *_: self._calls.clear()))

    def _make_hook(self, layer: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {layer} returns {type(output).__name__}, not a tensor")
            if layer in self._calls:
                raise ValueError(
                    f"layer {layer} is called more than once in one forward pass, so it has "
                    "no single output to record; study the block that encloses it instead"
                )
            self._calls.add(layer)
            # Clone: a later in-place op (e.g. ReLU(inplace=True)) must not alter the copy.
            self.outputs[layer] = output.detach().float().clone()

        return hook

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> LayerRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk_rows(per_image_bytes: int, total: int) -> int:
    return int(max(1, min(total, CHUNK_BYTES // max(1, per_image_bytes))))


@torch.no_grad()
def extract_activations(
    model: nn.Module,
    layers: Sequence[str],
    loader: DataLoader,
    out_path: str | Path,
    device: torch.device,
    attrs: Mapping[str, Any],
    paths: Sequence[str] | None = None,
    store_maps: bool = True,
    maps_dtype: str = "float32",
    progress: Callable[[Any], Any] | None = None,
    prefix_tokens: int | None = None,
    compression: str = "none",
) -> dict[str, Layout]:
    """Run `model` once over `loader` and write labels, logits and per-layer maps/mean/max.

    Each layer's layout comes from its first output (prefix tokens: `prefix_tokens`, else what
    the model states, else inferred from the token count); mean and max run over the map's
    positions (a token layer's patch tokens). Maps and prefix tokens are stored with the HDF5
    filters of `compression` (COMPRESSION_FILTERS; lossless: the values read back are the same).
    The file appears at `out_path` only when complete (written under a temporary name). Returns
    the layouts.
    """
    filters = compression_filters(compression)
    if not isinstance(device, torch.device):  # model.to(2.5) would silently make it float64
        raise TypeError(f"device must be a torch.device, got {device!r}")
    total = len(loader.dataset)
    if total == 0:
        raise ValueError("image set is empty")
    model = model.to(device).eval()
    if prefix_tokens is None:
        prefix_tokens = model_prefix_tokens(model)
    batches = progress(loader) if progress else loader
    with atomic_path(out_path) as temporary, h5py.File(temporary, "w") as store:
        store.attrs.update({key: _attr_value(value) for key, value in attrs.items()})
        store.attrs["format"] = STORE_FORMAT
        store.attrs["layers"] = json.dumps(list(layers))
        store.attrs["versions"] = json.dumps(library_versions(), sort_keys=True)
        store.attrs["n_images"] = total
        if paths is not None:
            store.create_dataset("paths", data=np.array(list(paths), dtype=h5py.string_dtype()))
        offset = 0
        with LayerRecorder(model, layers) as recorder:
            for images, labels in batches:
                logits = model(images.to(device)).float().cpu()
                count = len(images)
                if offset == 0:
                    layouts = {
                        layer: infer_layout(recorder.outputs[layer], layer, prefix_tokens)
                        for layer in layers
                    }
                    _create_datasets(store, layouts, logits, total, store_maps, maps_dtype, filters)
                store["labels"][offset : offset + count] = labels.numpy()
                store["logits"][offset : offset + count] = logits.numpy()
                rows = slice(offset, offset + count)
                for layer, layout in layouts.items():
                    output = recorder.outputs[layer].cpu()
                    _write_layer(store["layers"][layer], layout, output, rows, store_maps)
                offset += count
        if offset != total:
            raise RuntimeError(f"loader yielded {offset} images, dataset has {total}")
    return layouts


def _write_layer(
    group: h5py.Group, layout: Layout, output: torch.Tensor, rows: slice, store_maps: bool
) -> None:
    """Write one batch of a layer: mean and max over its map positions, maps and prefix."""
    maps = layout.to_maps(output)
    group["mean"][rows] = maps.mean(dim=(2, 3)).numpy()
    group["max"][rows] = maps.amax(dim=(2, 3)).numpy()
    if store_maps:
        group["maps"][rows] = maps.numpy().astype(group["maps"].dtype)
        if layout.prefix:
            prefix = layout.prefix_tokens(output)
            group["prefix"][rows] = prefix.numpy().astype(group["prefix"].dtype)


def _attr_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, np.generic)) else json.dumps(value)


def _create_datasets(
    store: h5py.File,
    layouts: Mapping[str, Layout],
    logits: torch.Tensor,
    total: int,
    store_maps: bool,
    maps_dtype: str,
    filters: Mapping[str, Any],
) -> None:
    store.create_dataset("labels", shape=(total,), dtype="int64")
    store.create_dataset(
        "logits",
        shape=(total, logits.shape[1]),
        dtype="float32",
        chunks=(_chunk_rows(4 * logits.shape[1], total), logits.shape[1]),
    )
    root = store.create_group("layers")
    for layer, layout in layouts.items():
        channels = layout.units
        group = root.create_group(layer)
        group.attrs["shape"] = layout.map_shape()
        group.attrs["layout"] = layout.to_json()
        for name in ("mean", "max"):
            group.create_dataset(
                name,
                shape=(total, channels),
                dtype="float32",
                chunks=(_chunk_rows(4 * channels, total), channels),
            )
        if store_maps:
            _create_rows(group, "maps", layout.map_shape(), total, maps_dtype, filters)
            if layout.prefix:
                shape = (layout.prefix, channels)
                _create_rows(group, "prefix", shape, total, maps_dtype, filters)


def _create_rows(
    group: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    total: int,
    dtype: str,
    filters: Mapping[str, Any],
) -> None:
    """A (total, *shape) dataset chunked by whole images, with the HDF5 `filters`."""
    per_image = np.dtype(dtype).itemsize * int(np.prod(shape))
    group.create_dataset(
        name,
        shape=(total, *shape),
        dtype=dtype,
        chunks=(_chunk_rows(per_image, total), *shape),
        **filters,
    )
