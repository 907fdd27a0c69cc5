"""Activation extraction equals a direct forward pass; the store reads back what was written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from unitablation.extraction import extract_activations
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
        batches = list(store.iter_maps("features.relu5", 4))
        assert [offset for offset, _ in batches] == [0, 4, 8]
        np.testing.assert_array_equal(
            np.concatenate([b for _, b in batches]), store.layer("features.relu5")["maps"][:]
        )
        assert store.file["paths"][3].decode() == "img3.png"
        assert store.file.attrs["format"] == 1 and "torch" in store.file.attrs["versions"]


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
