"""Unit attributes against hand values, numpy.corrcoef and direct sums over the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from unitablation.attributes import (
    accumulate,
    attribute_table,
    class_correlation,
    class_means,
    find_producer,
    incoming_l1,
    outgoing_attributes,
    outgoing_l1,
    selectivity,
    softmax,
)
from unitablation.models import TINY_ARCH, ModelSpec, build_model


def test_selectivity_on_hand_values() -> None:
    # unit 0: class means 4, 1, 1 -> mu_max 4, mu_rest 1 -> SI 3/5; unit 1 prefers class 2
    mu = np.array([[4.0, 1.0, 1.0], [0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    si, best = selectivity(mu)
    np.testing.assert_allclose(si[:2], [3 / (5 + 1e-7), 2.5 / (3.5 + 1e-7)])
    assert best[:2].tolist() == [0, 2] and si[2] == 0.0
    # a class without images (NaN) is left out of max and rest
    si, best = selectivity(np.array([[2.0, np.nan, 0.0]]))
    assert si[0] == pytest.approx(2 / (2 + 1e-7)) and best[0] == 0


def batches_of(means, maxima, labels, logits, size):
    for start in range(0, len(labels), size):
        rows = slice(start, start + size)
        yield means[rows], maxima[rows], labels[rows], logits[rows]


def test_streamed_statistics_match_direct_numpy() -> None:
    rng = np.random.default_rng(0)
    n, c, k = 50, 4, 3
    means = rng.normal(size=(n, c)).astype(np.float32)
    means[:, 3] = 0.25  # a constant unit: correlation undefined
    maxima = means + rng.uniform(-1, 1, size=(n, c)).astype(np.float32)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    stats = accumulate(batches_of(means, maxima, labels, logits, 7), k)
    probabilities = softmax(logits)
    rho = class_correlation(stats)
    for unit in range(3):
        for cls in range(k):
            expected = np.corrcoef(means[:, unit].astype(np.float64), probabilities[:, cls])[0, 1]
            assert rho[unit, cls] == pytest.approx(expected, abs=1e-9)
    assert np.isnan(rho[3]).all()
    mu = class_means(stats)
    for cls in range(k):
        np.testing.assert_allclose(mu[:, cls], means[labels == cls].astype(np.float64).mean(0))
    table, _, _ = attribute_table(stats, ["a", "b", "c"], *(np.zeros(c),) * 3, rectified=True)
    assert np.isnan(table.loc[3, "class_correlation"]) and table.loc[3, "correlated_class"] == ""
    best = np.argmax(rho[0])
    assert table.loc[0, "correlated_class"] == "abc"[best]
    np.testing.assert_allclose(table["active_fraction"], (maxima > 0).mean(0))
    np.testing.assert_allclose(
        table["activation_variance"], means.astype(np.float64).var(0), atol=1e-9
    )
    np.testing.assert_allclose(
        table["mean_activation"], means.astype(np.float64).mean(0), rtol=1e-9
    )


def test_incoming_l1_with_and_without_batchnorm() -> None:
    torch.manual_seed(0)
    for batchnorm in (False, True):
        model = build_model(
            ModelSpec(
                TINY_ARCH, 4, batchnorm=batchnorm, widths=(4, 4, 6, 6, 5), hidden=8, image_size=32
            )
        )
        producer = find_producer(model, "features.relu5")
        assert producer.op is model.features.conv5
        l1, folded = incoming_l1(producer, 5)
        weight = model.features.conv5.weight.detach()
        for unit in range(5):
            direct = sum(abs(float(w)) for w in weight[unit].flatten())
            assert l1[unit] == pytest.approx(direct, rel=1e-9)
            if batchnorm:
                norm = model.features.bn5
                norm.running_var.fill_(4.0)
                scale = abs(float(norm.weight[unit].detach())) / np.sqrt(4.0 + norm.eps)
                assert incoming_l1(producer, 5)[1][unit] == pytest.approx(direct * scale)
            else:
                assert folded[unit] == pytest.approx(direct)


def test_outgoing_l1_reads_the_next_parametrised_op() -> None:
    torch.manual_seed(1)
    model = build_model(ModelSpec(TINY_ARCH, 4, widths=(4, 4, 6, 6, 5), hidden=8, image_size=32))
    # relu5 -> pool5 -> flatten -> fc6: unit u owns columns u*4 .. u*4+3 (2 x 2 pooled map)
    fc6 = model.classifier.fc6.weight.detach().double()
    expected = [float(fc6[:, u * 4 : (u + 1) * 4].abs().sum()) for u in range(5)]
    np.testing.assert_allclose(outgoing_l1(model, "features.relu5", 5), expected, rtol=1e-9)
    conv4 = model.features.conv4.weight.detach().double()
    expected = [float(conv4[:, u].abs().sum()) for u in range(6)]
    np.testing.assert_allclose(outgoing_l1(model, "features.relu3", 6), expected, rtol=1e-9)


def test_outgoing_attributes_trace_the_suffix_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both outgoing attributes from one split of the model (the unit_attributes job's costly
    step), equal to the direct sums over fc7 and their argmax."""
    import unitablation.attributes as attributes

    torch.manual_seed(2)
    model = build_model(ModelSpec(TINY_ARCH, 3, widths=(4, 4, 6, 6, 5), hidden=8, image_size=32))
    splits: list[str] = []
    split = attributes.split_suffix

    def counted(module: torch.nn.Module, layer: str) -> object:
        splits.append(layer)
        return split(module, layer)

    monkeypatch.setattr(attributes, "split_suffix", counted)
    l1, best = outgoing_attributes(model, "classifier.relu6", 8)
    assert splits == ["classifier.relu6"]
    fc7 = model.classifier.fc7.weight.detach().double()  # relu6 -> fc7 -> logits
    np.testing.assert_allclose(l1, fc7.abs().sum(0).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(best, fc7.argmax(0).numpy())


def test_torchvision_producers_and_undefined_cases() -> None:
    alexnet = torchvision.models.alexnet(num_classes=10)
    assert find_producer(alexnet, "features.11").op is alexnet.features[10]
    out = outgoing_l1(alexnet, "features.11", 256)
    weight = alexnet.classifier[1].weight.detach().double().view(4096, 256, 36)
    assert out[7] == pytest.approx(float(weight[:, 7].abs().sum()), rel=1e-9)
    resnet = torchvision.models.resnet18(num_classes=10)
    producer = find_producer(resnet, "layer4")
    assert producer.op is None and producer.reason
    assert np.isnan(incoming_l1(producer, 512)[0]).all()
    assert np.isnan(outgoing_l1(resnet, "layer3", 256)).all()  # read by two ops (residual)


def test_vit_mlp_units_have_their_linear_producer() -> None:
    """A token layer after a ViT MLP's activation: unit u is output feature u of the Linear
    before it, found in a Sequential (torchvision) and through the fx graph (timm's Mlp)."""
    import timm
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=4)
    mlp = vit.encoder.layers.encoder_layer_1.mlp
    assert find_producer(vit, "encoder.layers.encoder_layer_1.mlp.1").op is mlp[0]
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    producer = find_producer(tiny, "blocks.1.mlp.act")
    assert producer.op is tiny.blocks[1].mlp.fc1 and producer.batchnorm is None
    l1, folded = incoming_l1(producer, 768)
    weight = tiny.blocks[1].mlp.fc1.weight.detach()
    for unit in (0, 5, 767):
        direct = sum(abs(float(w)) for w in weight[unit])
        assert l1[unit] == pytest.approx(direct, rel=1e-9) and folded[unit] == l1[unit]
    # A block output mixes channels (attention, residual): no producer, NaN norms.
    block = find_producer(tiny, "blocks.1")
    assert block.op is None and "mixes channels" in block.reason
    assert np.isnan(incoming_l1(block, 192)[0]).all()
    norm = find_producer(tiny, "blocks.1.norm2")  # LayerNorm after a residual sum: no producer
    assert norm.op is None and norm.reason
