"""Activation extraction equals a direct forward pass; the store reads back what was written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from unitablation.extraction import extract_activations
from unitablation.layouts import Layout
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.store import ActivationStore


def run_extraction(model, layers, images, labels, path, batch_size=3, **kwargs):
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    attrs = {"model": "m", "classes": [str(k) for k in range(int(labels.max()) + 1)]}
    extract_activations(model, layers, loader, path, torch.device("cpu"), attrs, **kwargs)


def test_tinyalex_extraction_equals_direct_forward(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(TINY_ARCH, 4, batchnorm=True, widths=(4, 6, 8, 8, 5), hidden=8, image_size=32)
    ).eval()
    # Give batch norm non-trivial running statistics so eval mode matters.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images, labels = torch.randn(10, 3, 32, 32), torch.arange(10) % 4
    path = tmp_path / "eval.h5"
    run_extraction(
        model,
        ["features.relu3", "features.relu5", "classifier.fc6"],
        images,
        labels,
        path,
        paths=[f"img{k}.png" for k in range(10)],
    )
    names = list(model.features._modules)
    with torch.no_grad():
        relu3 = model.features[: names.index("relu3") + 1](images)
        relu5 = model.features[: names.index("relu5") + 1](images)
        fc6 = model.classifier[:3](model.features(images))
        logits = model(images)
    with ActivationStore(path) as store:
        assert len(store) == 10 and store.layers == [
            "features.relu3",
            "features.relu5",
            "classifier.fc6",
        ]
        np.testing.assert_array_equal(store.labels(), labels.numpy())
        np.testing.assert_allclose(store.logits(), logits.numpy(), rtol=0, atol=1e-6)
        for layer, direct in (("features.relu3", relu3), ("features.relu5", relu5)):
            group = store.layer(layer)
            np.testing.assert_allclose(group["maps"][:], direct.numpy(), atol=1e-6)
            np.testing.assert_allclose(group["mean"][:], direct.mean((2, 3)).numpy(), atol=1e-6)
            np.testing.assert_allclose(group["max"][:], direct.amax((2, 3)).numpy(), atol=1e-6)
        fc = store.layer("classifier.fc6")
        assert fc["maps"].shape == (10, 8, 1, 1)
        np.testing.assert_allclose(fc["mean"][:], fc6.numpy(), atol=1e-6)
        # The raw outputs a replay needs: (N, C) for the linear layer, NCHW for the conv one.
        assert store.layout("classifier.fc6") == Layout("linear", 8, (1, 1))
        assert store.layout("features.relu5") == Layout("conv", 5, tuple(relu5.shape[2:]))
        outputs = list(store.iter_outputs("classifier.fc6", 4))
        assert [offset for offset, _ in outputs] == [0, 4, 8]
        np.testing.assert_allclose(np.concatenate([b for _, b in outputs]), fc6.numpy(), atol=1e-6)
        conv = np.concatenate([b for _, b in store.iter_outputs("features.relu5", 4)])
        np.testing.assert_array_equal(conv, store.layer("features.relu5")["maps"][:])
        batches = list(store.iter_maps("features.relu5", 4))
        assert [offset for offset, _ in batches] == [0, 4, 8]
        np.testing.assert_array_equal(
            np.concatenate([b for _, b in batches]), store.layer("features.relu5")["maps"][:]
        )
        assert store.file["paths"][3].decode() == "img3.png"
        assert store.file.attrs["format"] == 2 and "torch" in store.file.attrs["versions"]


def test_inplace_relu_does_not_corrupt_a_conv_output(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None, num_classes=6).eval()
    images, labels = torch.randn(2, 3, 100, 100), torch.tensor([0, 5])
    path = tmp_path / "alex.h5"
    run_extraction(model, ["features.0", "features.11"], images, labels, path)
    with torch.no_grad():
        conv1 = model.features[:1](images)
        conv5 = model.features[:12](images)
    with ActivationStore(path) as store:
        assert (store.layer("features.0")["maps"][:] < 0).any()  # pre-ReLU values survive
        np.testing.assert_allclose(store.layer("features.0")["maps"][:], conv1.numpy(), atol=1e-5)
        np.testing.assert_allclose(store.layer("features.11")["maps"][:], conv5.numpy(), atol=1e-5)


class FailingSet(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        if index == 4:
            raise ValueError("cannot read image broken.png")
        return torch.zeros(3, 32, 32), 0


def test_failure_leaves_no_store(tmp_path) -> None:
    model = build_model(ModelSpec(TINY_ARCH, 2, widths=(2, 2, 2, 2, 2), hidden=4, image_size=32))
    path = tmp_path / "eval.h5"
    with pytest.raises(ValueError, match="broken.png"):
        extract_activations(
            model,
            ["features.relu5"],
            DataLoader(FailingSet(), batch_size=2),
            path,
            torch.device("cpu"),
            {"classes": ["a", "b"]},
        )
    assert list(tmp_path.iterdir()) == []


def test_float16_maps_and_missing_layer(tmp_path) -> None:
    model = build_model(ModelSpec(TINY_ARCH, 3, widths=(2, 2, 2, 2, 3), hidden=4, image_size=32))
    images, labels = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])
    path = tmp_path / "concept.h5"
    run_extraction(model, ["features.relu5"], images, labels, path, maps_dtype="float16")
    with ActivationStore(path) as store:
        assert store.layer("features.relu5")["maps"].dtype == np.float16
        with pytest.raises(ValueError, match="has no layer 'features.relu4'"):
            store.layer("features.relu4")
    with pytest.raises(ValueError, match=r"no layer\(s\) \['features.nope'\]"):
        run_extraction(model, ["features.nope"], images, labels, tmp_path / "x.h5")


def test_store_rejects_truncated_and_incomplete_files(tmp_path) -> None:
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=f"cannot open activation store {truncated}"):
        ActivationStore(truncated)
    incomplete = tmp_path / "incomplete.h5"
    with h5py.File(incomplete, "w") as handle:
        handle.create_dataset("labels", data=np.zeros(3))
    with pytest.raises(ValueError, match="has no dataset 'logits'"):
        ActivationStore(incomplete)


def test_a_module_called_twice_per_forward_is_refused(tmp_path) -> None:
    """The recorder would keep only the last call of ResNet's `layer4.1.relu`: it refuses."""
    import torchvision

    from unitablation.extraction import LayerRecorder

    model = torchvision.models.resnet18(num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="layer layer4.1.relu is called more than once"):
        run_extraction(model, ["layer4.1.relu"], images, torch.tensor([0, 2]), tmp_path / "r.h5")
    assert not (tmp_path / "r.h5").exists()
    with LayerRecorder(model, ["layer4.1"]) as recorder, torch.no_grad():
        model(images)
        model(images)  # a second forward is a new pass, not a second call
    assert recorder.outputs["layer4.1"].shape == (2, 512, 2, 2)


def hooked_output(model: torch.nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """The layer's output in one full forward, captured by a hook written here."""
    captured = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured["x"].clone()


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_vit_token_layers_round_trip_through_the_store(tmp_path, source: str) -> None:
    """Token layers are stored as patch-grid maps plus prefix tokens; iter_outputs gives back
    exactly what the layer returned, and mean/max run over the patch tokens only."""
    torch.manual_seed(0)
    if source == "timm":
        import timm

        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4, depth=2
        )
        layers, prefix, grid = ["blocks.1", "blocks.0.mlp.act"], 1, (2, 2)
    else:
        from torchvision.models.vision_transformer import VisionTransformer

        model = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=4)
        block = "encoder.layers.encoder_layer_1"
        layers, prefix, grid = [block, f"{block}.mlp.1"], 1, (4, 4)
    model.eval()
    images, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0])
    path = tmp_path / "vit.h5"
    run_extraction(model, layers, images, labels, path, batch_size=2)
    with ActivationStore(path) as store:
        assert store.file.attrs["format"] == 2
        for layer in layers:
            # The same batches as the extraction: batched matmuls round by batch size.
            direct = torch.cat([hooked_output(model, layer, part) for part in images.split(2)])
            layout = store.layout(layer)
            assert (layout.kind, layout.prefix, layout.grid) == ("tokens", prefix, grid)
            assert layout.units == direct.shape[2]
            outputs = list(store.iter_outputs(layer, 2))
            assert [offset for offset, _ in outputs] == [0, 2, 4]
            rebuilt = np.concatenate([batch for _, batch in outputs])
            np.testing.assert_array_equal(rebuilt, direct.numpy())
            group = store.layer(layer)
            np.testing.assert_array_equal(group["prefix"][:], direct[:, :prefix].numpy())
            patches = direct[:, prefix:].numpy()  # (N, h*w, C): the class token left out
            np.testing.assert_allclose(group["mean"][:], patches.mean(1), rtol=0, atol=1e-6)
            np.testing.assert_array_equal(group["max"][:], patches.max(1))
            assert group["maps"].shape == (5, layout.units, *grid)


def test_format_1_store_reads_as_conv_and_explicit_prefix(tmp_path) -> None:
    """A store without the layout attribute reads as conv from `shape`; an explicit prefix
    count overrides inference, and a count that leaves no square grid names the layer."""
    model = build_model(ModelSpec(TINY_ARCH, 3, widths=(2, 2, 2, 2, 3), hidden=4, image_size=32))
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    path = tmp_path / "old.h5"
    run_extraction(model, ["features.relu5"], images, labels, path)
    with h5py.File(path, "r+") as handle:
        del handle["layers/features.relu5"].attrs["layout"]
        shape = tuple(handle["layers/features.relu5"].attrs["shape"])
    with ActivationStore(path) as store:
        assert store.layout("features.relu5") == Layout("conv", *shape[:1], shape[1:])
    tokens = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Linear(1024, 6))
    model = torch.nn.Sequential(tokens, torch.nn.Flatten(1), torch.nn.Linear(18, 3)).eval()
    # 3 "tokens" (the colour planes) of 6 features: 2 stated prefix tokens leave a 1 x 1 grid,
    # 3 leave no patch token at all.
    run_extraction(model, ["0"], images, labels, tmp_path / "t.h5", prefix_tokens=2)
    with ActivationStore(tmp_path / "t.h5") as store:
        assert store.layout("0") == Layout("tokens", 6, (1, 1), 2)
    with pytest.raises(ValueError, match=r"layer 0 .*\(3, 3, 6\).*prefix_tokens"):
        run_extraction(model, ["0"], images, labels, tmp_path / "u.h5", prefix_tokens=3)
    assert not (tmp_path / "u.h5").exists()


def test_a_device_that_is_not_a_torch_device_is_refused_before_the_model_moves(tmp_path) -> None:
    # model.to(2.5) would turn the weights float64 in place and every later forward with them.
    torch.manual_seed(0)
    model = build_model(ModelSpec(TINY_ARCH, 4, widths=(4, 6, 8, 8, 5), hidden=8, image_size=32))
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4).long()), 2)
    path = tmp_path / "eval.h5"
    with pytest.raises(TypeError, match="device must be a torch.device, got 2.5"):
        extract_activations(model, ["features.relu3"], loader, path, 2.5, {})  # type: ignore[arg-type]
    assert not path.exists()
    assert all(p.dtype == torch.float32 for p in model.parameters())
