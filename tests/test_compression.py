"""Compressed activation stores (activations.compression) read back exactly what was computed."""

from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from snakemake.utils import validate
from torch.utils.data import DataLoader, TensorDataset

from unitablation.broden import read_broden
from unitablation.concepts import concept_iou, store_reader
from unitablation.extraction import COMPRESSION_FILTERS, extract_activations
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.store import ActivationStore
from unitablation.world import WorldSpec
from unitablation.world_export import write_concept_set

ROOT = Path(__file__).resolve().parents[1]
COMPRESSIONS = list(COMPRESSION_FILTERS)
LAYERS = ["features.relu3", "features.relu5", "classifier.fc6"]
DATASETS = ("maps", "mean", "max")


def tiny_model() -> torch.nn.Module:
    """A seeded random tinyalex on 32 x 32 inputs."""
    torch.manual_seed(0)
    spec = ModelSpec(TINY_ARCH, 4, widths=(4, 6, 8, 8, 6), hidden=8, image_size=32)
    return build_model(spec).eval()


def extract(model, layers, images, path: Path, compression: str, paths=None) -> None:
    """Extract `layers` of `images` into `path` with `compression`, 5 images per batch."""
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), 5)
    attrs = {"classes": ["a", "b", "c", "d"]}
    cpu = torch.device("cpu")
    extract_activations(
        model, layers, loader, path, cpu, attrs, paths=paths, compression=compression
    )


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_compressed_store_holds_the_uncompressed_bytes(tmp_path: Path, compression: str) -> None:
    """Every dataset of a compressed store equals the raw store's, byte for byte, and its maps
    do carry the filter (and take less space: these ReLU maps are half zeros)."""
    model, images = tiny_model(), torch.randn(13, 3, 32, 32)
    extract(model, LAYERS, images, tmp_path / "none.h5", "none")
    extract(model, LAYERS, images, tmp_path / "packed.h5", compression)
    with h5py.File(tmp_path / "none.h5") as raw, h5py.File(tmp_path / "packed.h5") as packed:
        for name in ("labels", "logits"):
            assert packed[name][:].tobytes() == raw[name][:].tobytes()
        for layer in LAYERS:
            for name in DATASETS:
                ours, theirs = packed["layers"][layer][name], raw["layers"][layer][name]
                assert ours[:].tobytes() == theirs[:].tobytes(), (layer, name)
                assert ours.dtype == theirs.dtype and ours.chunks == theirs.chunks
            maps = packed["layers"][layer]["maps"]
            assert maps.compression == compression
            assert raw["layers"][layer]["maps"].compression is None
        big = "features.relu3"
        sizes = [f["layers"][big]["maps"].id.get_storage_size() for f in (packed, raw)]
        assert sizes[0] < sizes[1]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_token_prefix_is_compressed_losslessly(tmp_path: Path, compression: str) -> None:
    """A ViT block's class token (the `prefix` dataset) and patch maps read back as computed."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=4).eval()
    block = "encoder.layers.encoder_layer_1"
    images = torch.randn(7, 3, 32, 32)
    captured: dict[str, torch.Tensor] = {}
    hook = model.get_submodule(block).register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("tokens", out.clone())
    )
    with torch.no_grad():
        model(images)
    hook.remove()
    extract(model, [block], images, tmp_path / "vit.h5", compression)
    with ActivationStore(tmp_path / "vit.h5") as store:
        group = store.layer(block)
        assert group["prefix"].compression == (None if compression == "none" else compression)
        outputs = np.concatenate([batch for _, batch in store.iter_outputs(block, 3)])
    assert np.array_equal(outputs, captured["tokens"].numpy())


def test_concept_iou_from_compressed_stores_equals_direct_forward(tmp_path: Path) -> None:
    """Concept IoU of a layer streamed from each store equals that of the maps of a direct
    forward held in memory (no store), field by field."""
    spec = WorldSpec(image_size=32, n_classes=4, concept_images=12)
    write_concept_set(tmp_path / "broden", spec)
    broden = read_broden(tmp_path / "broden")
    images = torch.stack(
        [
            torch.from_numpy(broden.load_image(k)).permute(2, 0, 1).float() / 255.0
            for k in range(len(broden.records))
        ]
    )
    model = tiny_model()
    names = list(model.features._modules)
    with torch.no_grad():
        direct = model.features[: names.index("relu3") + 1](images).numpy()
    expected = concept_iou(lambda units: direct[:, units], direct.shape[1], broden, unit_block=3)
    paths = [record.image for record in broden.records]
    for compression in COMPRESSIONS:
        path = tmp_path / f"{compression}.h5"
        extract(model, ["features.relu3"], images, path, compression, paths=paths)
        with ActivationStore(path) as store:
            reader = store_reader(store, "features.relu3", broden, rows_per_read=5)
            result = concept_iou(reader, direct.shape[1], broden, unit_block=3, image_batch=4)
        for name in ("iou", "thresholds", "intersection", "activation", "top_images"):
            assert np.array_equal(getattr(result, name), getattr(expected, name)), name


def test_unknown_compression_is_refused_naming_the_choices(tmp_path: Path) -> None:
    """The library refuses a name it has no filters for, and writes no store."""
    with pytest.raises(ValueError, match="compression must be one of none, lzf, gzip, got 'zip'"):
        extract(tiny_model(), LAYERS, torch.randn(3, 3, 32, 32), tmp_path / "s.h5", "zip")
    assert not list(tmp_path.iterdir())


def test_config_schema_rejects_a_bad_compression_naming_the_key() -> None:
    """The config schema (validated before any job runs) names the key and its choices; the
    default config validates and its value is one the library knows."""
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(copy.deepcopy(config), str(schema))
    assert config["activations"]["compression"] in COMPRESSION_FILTERS
    bad = copy.deepcopy(config)
    bad["activations"]["compression"] = "zip"
    with pytest.raises(Exception, match="compression") as error:
        validate(bad, str(schema))
    assert "'zip' is not one of ['none', 'lzf', 'gzip']" in str(error.value)
