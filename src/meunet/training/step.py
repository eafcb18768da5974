"""One optimisation step of a U-net or a meU-net, the unit that training and memory planning share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from meunet.models import UNet3D

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Batch:
    """Tensors of one training step.

    Attributes:
        image: Standard patches (batch, channels, P, P, P).
        label: Their labels (batch, P, P, P), class indices.
        expanded_image: meU-net's expanded patches (batch, channels, kP, kP, kP), same centres.
        expanded_label: Their labels nearest-downsampled by 2 (batch, kP/2, kP/2, kP/2).
        extra: Stage-1 one-hot maps for a stage-2 network (batch, n, P, P, P).
        expanded_extra: The same for the expanded patches.
    """

    image: Tensor
    label: Tensor
    expanded_image: Tensor | None = None
    expanded_label: Tensor | None = None
    extra: Tensor | None = None
    expanded_extra: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                None if t is None else t.to(device, non_blocking=True)
                for t in self.__dict__.values()
            )
        )


def train_step(
    model: UNet3D,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    loss_fn: LossFn,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """Forward, backward and optimizer step; returns the losses.

    A meU-net batch (with ``expanded_image``) adds the expanded patch's
    level-2 loss to the standard patch's loss, as in the paper. The expanded
    pass runs first and its graph is freed by its backward before the standard
    pass builds its own, so the two never hold activations at once. Autocast
    (float16) is on when ``scaler`` is given (CUDA).
    """
    device_type = batch.image.device.type
    amp = scaler is not None
    optimizer.zero_grad(set_to_none=True)
    losses: dict[str, float] = {}
    if batch.expanded_image is not None:
        if batch.expanded_label is None:
            raise ValueError("a meU-net batch needs expanded_label with expanded_image")
        with torch.autocast(device_type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(
                model.forward_expanded(batch.expanded_image, batch.expanded_extra),
                batch.expanded_label,
            )
        _backward(loss, scaler)
        losses["expanded"] = float(loss.detach())
    with torch.autocast(device_type, dtype=torch.float16, enabled=amp):
        loss = loss_fn(model(batch.image, batch.extra), batch.label)
    _backward(loss, scaler)
    losses["standard"] = float(loss.detach())
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    losses["total"] = sum(losses.values())
    return losses


def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()
