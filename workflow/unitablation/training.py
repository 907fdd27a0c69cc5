"""Training the miniature models: one seeded schedule shared by every variant."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """The schedule: SGD with momentum, linear warm-up then cosine decay, optional flips."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    hflip: bool = True
    seed: int = 0

    @classmethod
    def from_config(cls, entry: Mapping[str, Any], seed: int) -> TrainConfig:
        """Build from the `training` config block plus the global seed."""
        fields = {key: entry[key] for key in cls.__dataclass_fields__ if key in entry}
        return cls(**{**fields, "seed": seed})


def learning_rate(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at `step`: linear warm-up, then cosine decay to zero."""
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train in place on in-memory tensors; returns one record (loss, accuracy, lr) per epoch."""
    if len(images) != len(labels):
        raise ValueError("images and labels differ in length")
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    loss_function = nn.CrossEntropyLoss()
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        flips = torch.rand(len(images), generator=generator) < 0.5
        loss_sum, correct = 0.0, 0
        for start in range(0, len(images), config.batch_size):
            batch_index = order[start : start + config.batch_size]
            batch = images[batch_index]
            if config.hflip:
                flip = flips[batch_index]
                batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
            batch, target = batch.to(device), labels[batch_index].to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step, total_steps, steps_per_epoch)
            logits = model(batch)
            loss = loss_function(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch_index)
            correct += int((logits.detach().argmax(1) == target).sum())
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / len(images),
            "train_accuracy": correct / len(images),
            "lr": learning_rate(config, step - 1, total_steps, steps_per_epoch),
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if max_steps is not None and step >= max_steps:
            break
    return history


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Logits of `model` (in eval mode) for in-memory images, on the CPU."""
    model.to(device).eval()
    outputs = [
        model(images[start : start + batch_size].to(device)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)
