"""On the generated world a trained plain model has concept detectors in its last conv layer."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from unitablation.broden import read_broden
from unitablation.concepts import concept_iou, store_reader
from unitablation.extraction import extract_activations
from unitablation.images import FileListSet, ImageFolderSet, default_preprocess, stack_dataset
from unitablation.models import TINY_ARCH, ModelSpec, build_model
from unitablation.store import ActivationStore
from unitablation.training import TrainConfig, train_model
from unitablation.world import WorldSpec
from unitablation.world_export import write_concept_set, write_image_folder


def test_plain_variant_has_colour_or_shape_detectors(tmp_path) -> None:
    spec = WorldSpec(n_classes=12, train_per_class=60, val_per_class=5, concept_images=120, seed=3)
    write_image_folder(tmp_path / "images", spec)
    write_concept_set(tmp_path / "broden", spec)
    preprocess = default_preprocess(TINY_ARCH)
    images, labels = stack_dataset(ImageFolderSet(tmp_path / "images" / "train", preprocess))
    torch.manual_seed(0)
    model = build_model(ModelSpec(TINY_ARCH, 12))
    train_model(model, images, labels, TrainConfig(epochs=8, seed=0), torch.device("cpu"))
    broden = read_broden(tmp_path / "broden")
    files = [tmp_path / "broden" / "images" / record.image for record in broden.records]
    loader = DataLoader(FileListSet(files, [-1] * len(files), preprocess), batch_size=60)
    store_path = tmp_path / "concept.h5"
    extract_activations(model, ["features.relu5"], loader, store_path, torch.device("cpu"), {})
    with ActivationStore(store_path) as store:
        result = concept_iou(store_reader(store, "features.relu5"), 64, broden)
    table = result.table(0.04)
    detectors = table[table["is_detector"]]
    aligned = detectors[detectors["concept_category"].isin(["color", "object"])]
    assert len(aligned) > 0, table[["unit", "iou", "concept", "concept_category"]].head(10)
