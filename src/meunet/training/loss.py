"""The paper's loss: weighted cross-entropy plus soft Dice averaged over classes.

Class weights follow ``docs/method.md``, *Loss*: with f_i the frequency of
class i over the sampled training patches, w_i = 1 / f_i, w = w / sum(w),
weights = softmax(w).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def class_weights(counts: Sequence[int] | Tensor) -> Tensor:
    """Softmax of the normalised inverse class frequencies.

    A class never seen gets the largest weight of the seen ones rather than
    an infinite one.

    Example:
        >>> class_weights([900, 90, 10]).round(decimals=4).tolist()
        [0.2219, 0.2426, 0.5356]
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.ndim != 1 or len(c) < 2 or (c < 0).any() or c.sum() <= 0:
        raise ValueError(f"class counts must be >= 0 for at least 2 classes, got {counts!r}")
    f = c / c.sum()
    inv = torch.where(f > 0, 1.0 / f.clamp_min(1e-300), torch.nan)
    inv = torch.where(torch.isnan(inv), torch.nanquantile(inv, 1.0), inv)
    w = inv / inv.sum()
    return torch.softmax(w, dim=0).float()


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - soft Dice averaged over classes (batch pooled), from logits.

    Args:
        logits: (batch, classes, z, y, x).
        target: (batch, z, y, x) class indices.
        eps: Smoothing; a class absent from target and prediction scores 1.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


class SegLoss(nn.Module):
    """Weighted cross-entropy + soft Dice, the loss of the paper."""

    def __init__(self, weights: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "weights", None if weights is None else torch.as_tensor(weights).float()
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        ce = F.cross_entropy(logits.float(), target.long(), weight=self.weights)
        return ce + soft_dice_loss(logits, target)
