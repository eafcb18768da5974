"""Per-class Dice from true-positive, false-positive and false-negative counts.

Counts are accumulated per block (a slab, a case) and reduced at the end, so
a metric over a volume larger than RAM never needs the whole volume.
"""

from __future__ import annotations

import numpy as np


class DiceCounter:
    """Accumulates per-class tp, fp, fn over blocks of (prediction, reference) labels.

    Example:
        >>> c = DiceCounter(3)
        >>> c.update(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
        >>> c.dice().round(3).tolist()
        [1.0, 0.667, 0.667]
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.tp = np.zeros(num_classes, np.int64)
        self.fp = np.zeros(num_classes, np.int64)
        self.fn = np.zeros(num_classes, np.int64)

    def update(self, pred: np.ndarray, ref: np.ndarray) -> None:
        """Add one block; ``pred`` and ``ref`` are class-index arrays of one shape."""
        if pred.shape != ref.shape:
            raise ValueError(
                f"prediction shape {pred.shape} differs from reference shape {ref.shape}"
            )
        n = self.num_classes
        joint = np.bincount(ref.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n)
        confusion = joint[: n * n].reshape(n, n)  # rows: reference, columns: prediction
        tp = np.diag(confusion)
        self.tp += tp
        self.fp += confusion.sum(0) - tp
        self.fn += confusion.sum(1) - tp

    def dice(self) -> np.ndarray:
        """Dice per class; NaN for a class absent from both prediction and reference."""
        denom = 2 * self.tp + self.fp + self.fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), np.nan)


def dice_scores(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice per class of one prediction against its reference."""
    c = DiceCounter(num_classes)
    c.update(pred, ref)
    return c.dice()
