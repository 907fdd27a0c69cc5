"""Attributes and concept IoU in a rotated basis, against direct loops over the rotated units."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision

from unitablation.attributes import (
    find_producer,
    incoming_l1,
    outgoing_class,
    outgoing_l1,
    rotated_summaries,
)
from unitablation.broden import BrodenWriter, LabelDef, read_broden
from unitablation.concepts import concept_classes, concept_iou, concept_labels, store_reader
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.rotation import haar_rotation
from unitablation.store import ActivationStore


def tiny_model(batchnorm: bool) -> torch.nn.Module:
    """A small tinyalex with random weights (and non-trivial batch-norm statistics)."""
    torch.manual_seed(4)
    model = build_model(
        ModelSpec(
            TINY_ARCH, 4, batchnorm=batchnorm, widths=(4, 4, 6, 6, 5), hidden=8, image_size=32
        )
    )
    if batchnorm:
        model.features.bn5.running_var.uniform_(0.5, 3.0)
        model.features.bn5.weight.data.uniform_(-2.0, 2.0)
    return model.eval()


@pytest.mark.parametrize("batchnorm", [False, True])
def test_rotated_incoming_l1_sums_the_combined_filter(batchnorm: bool) -> None:
    model = tiny_model(batchnorm)
    rotation = haar_rotation(5, seed=2)
    l1, folded = incoming_l1(find_producer(model, "features.relu5"), 5, rotation)
    weight = model.features.conv5.weight.detach().double()
    scale = torch.ones(5, dtype=torch.float64)
    if batchnorm:
        norm = model.features.bn5
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    for j in range(5):
        combined = sum(float(rotation[j, k]) * weight[k] for k in range(5))
        combined_bn = sum(float(rotation[j, k] * scale[k]) * weight[k] for k in range(5))
        assert l1[j] == pytest.approx(float(combined.abs().sum()), rel=1e-9)
        assert folded[j] == pytest.approx(float(combined_bn.abs().sum()), rel=1e-9)


def test_rotated_outgoing_l1_and_identity_rotation() -> None:
    model = tiny_model(False)
    rotation = haar_rotation(5, seed=3)
    # relu5 -> pool5 -> flatten -> fc6: unit k owns columns 4k .. 4k+3; direction j reads them
    # with weight sum_k W[:, 4k + s] r_jk.
    fc6 = model.classifier.fc6.weight.detach().double()
    expected = []
    for j in range(5):
        block = sum(float(rotation[j, k]) * fc6[:, 4 * k : 4 * k + 4] for k in range(5))
        expected.append(float(block.abs().sum()))
    np.testing.assert_allclose(outgoing_l1(model, "features.relu5", 5, rotation), expected, 1e-9)
    np.testing.assert_allclose(
        outgoing_l1(model, "features.relu5", 5, np.eye(5)), outgoing_l1(model, "features.relu5", 5)
    )
    assert (outgoing_class(model, "features.relu5", 5) == -1).all()  # fc6 is not the last op


def test_outgoing_class_of_a_linear_head_in_both_bases() -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=7).eval()
    weight = resnet.fc.weight.detach().double()  # (7, 512): layer4 -> avgpool -> fc
    np.testing.assert_array_equal(outgoing_class(resnet, "layer4", 512), weight.argmax(0).numpy())
    rotation = haar_rotation(512, seed=1)
    rotated = weight.numpy() @ rotation.T  # column j = sum_k W[:, k] r_jk
    np.testing.assert_array_equal(
        outgoing_class(resnet, "layer4", 512, rotation), rotated.argmax(0)
    )


def test_rotated_summaries_rectify_the_rotated_maps() -> None:
    rng = np.random.default_rng(0)
    maps = np.maximum(rng.standard_normal((3, 4, 2, 3)), 0).astype(np.float32)
    means, maxima = rotated_summaries(maps, np.eye(4))
    np.testing.assert_allclose(means, maps.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(maxima, maps.max(axis=(2, 3)), rtol=1e-6)
    rotation = haar_rotation(4, seed=5)
    means, maxima = rotated_summaries(maps, rotation)
    for image in range(3):
        for j in range(4):
            z = sum(rotation[j, k] * maps[image, k].astype(np.float64) for k in range(4))
            assert means[image, j] == pytest.approx(np.maximum(z, 0).mean())
            assert maxima[image, j] == pytest.approx(z.max())


LABELS = [
    LabelDef(1, "red", "color"),
    LabelDef(2, "box", "object"),
    LabelDef(3, "kitchen", "scene"),
    LabelDef(4, "street", "scene"),
]


def write_world(root: Path, n_images: int = 8) -> None:
    """Kitchens with a red box in the top-left quarter; streets with a box and no red."""
    writer = BrodenWriter(root, LABELS)
    for k in range(n_images):
        kitchen = k % 2 == 0
        color = np.zeros((4, 4), np.int32)
        obj = np.zeros((4, 4), np.int32)
        obj[:2, :2] = 2
        if kitchen:
            color[:2, :2] = 1
        writer.add(
            f"{k:03d}",
            np.zeros((8, 8, 3), np.uint8),
            {"color": [color], "object": [obj]},
            {"scene": [3 if kitchen else 4]},
        )
    writer.close()


def write_store(path: Path, broden_root: Path, maps: np.ndarray) -> None:
    """A concept store in the documented layout holding `maps` for layer 'conv'."""
    broden = read_broden(broden_root)
    with h5py.File(path, "w") as handle:
        handle.attrs["classes"] = '["kitchen", "street", "alley"]'
        handle.create_dataset("labels", data=np.full(len(maps), -1))
        handle.create_dataset("logits", data=np.zeros((len(maps), 3), np.float32))
        handle.create_dataset("paths", data=[r.image for r in broden.records])
        group = handle.create_group("layers/conv")
        group.create_dataset("maps", data=maps)
        group.create_dataset("mean", data=maps.mean(axis=(2, 3)))
        group.create_dataset("max", data=maps.max(axis=(2, 3)))


def test_rotated_concept_iou_equals_iou_of_rotated_maps(tmp_path: Path) -> None:
    write_world(tmp_path / "broden")
    broden = read_broden(tmp_path / "broden")
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((8, 3, 2, 2)).astype(np.float32)
    write_store(tmp_path / "concept.h5", tmp_path / "broden", maps)
    rotation = haar_rotation(3, seed=9)
    z = np.einsum("jc,nchw->njhw", rotation, maps.astype(np.float64)).astype(np.float32)
    with ActivationStore(tmp_path / "concept.h5") as store:
        read = store_reader(store, "conv", broden, rotation, rows_per_read=3)
        np.testing.assert_allclose(read(slice(1, 3)), z[:, 1:3], rtol=1e-5, atol=1e-6)
        rotated = concept_iou(read, 3, broden, quantile=0.1)
        identity = concept_iou(store_reader(store, "conv", broden, np.eye(3)), 3, broden, 0.1)
        plain = concept_iou(store_reader(store, "conv", broden), 3, broden, quantile=0.1)
    direct = concept_iou(lambda units: z[:, units], 3, broden, quantile=0.1)
    np.testing.assert_allclose(rotated.thresholds, direct.thresholds, rtol=1e-5)
    np.testing.assert_array_equal(rotated.iou, direct.iou)
    assert not np.array_equal(rotated.iou, plain.iou)
    np.testing.assert_array_equal(identity.iou, plain.iou)
    with (
        pytest.raises(ValueError, match="does not fit 3 channels"),
        ActivationStore(tmp_path / "concept.h5") as store,
    ):
        store_reader(store, "conv", broden, np.eye(4))


def test_concept_class_is_the_class_whose_images_carry_the_concept(tmp_path: Path) -> None:
    write_world(tmp_path / "broden")
    labels = concept_labels(read_broden(tmp_path / "broden"))
    column = {name: k for k, name in enumerate(labels.index.names)}
    classes = ["kitchen", "street", "alley"]  # alley has no label of its name: never implied
    chosen = concept_classes(
        labels,
        np.array([column["red"], column["box"], column["street"], column["kitchen"]]),
        classes,
    )
    # red: only in kitchens; box: in all images of both (tie -> lower index); scenes: themselves
    assert chosen == ["kitchen", "kitchen", "street", "kitchen"]
    assert concept_classes(labels, np.array([column["red"]]), ["alley"]) == [""]
