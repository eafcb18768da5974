"""One optimisation step of a U-net or a meU-net, the unit that training and memory planning share."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

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

    def split(self, parts: int) -> list[Batch]:
        """``parts`` equal micro-batches along the batch axis."""
        n = self.image.shape[0]
        if parts < 1 or n % parts:
            raise ValueError(
                f"a batch of {n} patches cannot be split into {parts} equal micro-batches"
            )
        size = n // parts
        return [
            Batch(*(None if t is None else t[i : i + size] for t in self.__dict__.values()))
            for i in range(0, n, size)
        ]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                None if t is None else t.to(device, non_blocking=True)
                for t in self.__dict__.values()
            )
        )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    loss_fn: LossFn,
    scaler: torch.amp.GradScaler | None = None,
    micro_batches: int = 1,
) -> dict[str, float]:
    """Forward, backward and optimizer step; returns the losses.

    A meU-net batch (with ``expanded_image``) adds the expanded patch's
    level-2 loss to the standard patch's loss, as in the paper. The expanded
    pass runs first and its graph is freed by its backward before the standard
    pass builds its own, so the two never hold activations at once. Autocast
    (float16) is on when ``scaler`` is given (CUDA).

    ``micro_batches`` > 1 splits the batch and averages the parts' gradients
    before the one optimizer step (what that many DDP processes compute).
    ``model`` may be DDP-wrapped: gradients are then all-reduced once, in the
    step's last backward.
    """
    from meunet.training.distributed import no_sync

    device_type = batch.image.device.type
    amp = scaler is not None
    optimizer.zero_grad(set_to_none=True)
    parts = batch.split(micro_batches) if micro_batches > 1 else [batch]
    losses: dict[str, float] = {}
    running = _RunningStats(model) if len(parts) > 1 else None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if running is not None:
            running.restart()
        if part.expanded_image is not None:
            if part.expanded_label is None:
                raise ValueError("a meU-net batch needs expanded_label with expanded_image")
            with no_sync(model), torch.autocast(device_type, dtype=torch.float16, enabled=amp):
                loss = loss_fn(
                    model(part.expanded_image, part.expanded_extra, expanded=True),
                    part.expanded_label,
                )
            with no_sync(model):
                _backward(loss / len(parts), scaler)
            losses["expanded"] = losses.get("expanded", 0.0) + float(loss.detach()) / len(parts)
        with torch.autocast(device_type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(part.image, part.extra), part.label)
        with nullcontext() if last else no_sync(model):
            _backward(loss / len(parts), scaler)
        losses["standard"] = losses.get("standard", 0.0) + float(loss.detach()) / len(parts)
        if running is not None:
            running.collect()
    if running is not None:
        running.average()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    losses["total"] = sum(losses.values())
    return losses


def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


class _RunningStats:
    """BatchNorm running statistics over micro-batches: each part updates them from
    the same start and the results are averaged (what DDP ranks' averaged
    statistics give), instead of the parts updating them one after another."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.bns = [
            m
            for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.start = [(m.running_mean.clone(), m.running_var.clone()) for m in self.bns]
        self.counts = [m.num_batches_tracked.clone() for m in self.bns]
        self.sums = [(torch.zeros_like(a), torch.zeros_like(b)) for a, b in self.start]
        self.parts = 0

    def restart(self) -> None:
        for m, (mean, var), n in zip(self.bns, self.start, self.counts, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)  # as if each part were the step's only one

    def collect(self) -> None:
        for m, (mean, var) in zip(self.bns, self.sums, strict=True):
            mean += m.running_mean
            var += m.running_var
        self.parts += 1

    def average(self) -> None:
        for m, (mean, var) in zip(self.bns, self.sums, strict=True):
            m.running_mean.copy_(mean / self.parts)
            m.running_var.copy_(var / self.parts)
