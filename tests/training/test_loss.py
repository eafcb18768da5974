"""The paper's loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from meunet.training.loss import SegLoss, class_weights, soft_dice_loss


def test_class_weights_hand_computed() -> None:
    # f = (0.9, 0.09, 0.01); 1/f = (1.111, 11.11, 100); normalised (0.00991, 0.0991, 0.8910)
    inv = [1 / 0.9, 1 / 0.09, 1 / 0.01]
    w = [v / sum(inv) for v in inv]
    expected = [math.exp(v) / sum(math.exp(u) for u in w) for v in w]
    assert class_weights([900, 90, 10]).tolist() == pytest.approx(expected, abs=1e-6)
    assert class_weights([5, 5]).tolist() == pytest.approx([0.5, 0.5])


def test_class_weights_absent_class_gets_the_rarest_weight() -> None:
    w = class_weights([900, 0, 10])
    assert torch.isfinite(w).all() and w[1] == w[2] > w[0]


@pytest.mark.parametrize("counts", [[], [3], [1, -1], [0, 0]])
def test_class_weights_bad_counts(counts: list[int]) -> None:
    with pytest.raises(ValueError, match="class counts"):
        class_weights(counts)


def _logits_for(probs: torch.Tensor) -> torch.Tensor:
    return probs.log()  # softmax(log p) = p when p sums to 1


def test_soft_dice_hand_computed_with_an_absent_class() -> None:
    # 2 voxels, 3 classes; class 2 absent from the target
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1]]).T.reshape(1, 3, 1, 1, 2)
    target = torch.tensor([0, 1]).reshape(1, 1, 1, 2)
    eps = 1e-5
    d0 = (2 * 0.7 + eps) / (0.7 + 0.4 + 1 + eps)
    d1 = (2 * 0.5 + eps) / (0.2 + 0.5 + 1 + eps)
    d2 = (0 + eps) / (0.1 + 0.1 + 0 + eps)  # absent class: its predicted mass is pure loss
    expected = 1 - (d0 + d1 + d2) / 3
    assert float(soft_dice_loss(_logits_for(probs), target, eps)) == pytest.approx(
        expected, rel=1e-5
    )


def test_soft_dice_perfect_prediction_is_zero() -> None:
    target = torch.tensor([0, 1, 2, 1]).reshape(1, 1, 2, 2)
    logits = F.one_hot(target, 3).movedim(-1, 1).float() * 50
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-4)


def test_seg_loss_is_weighted_ce_plus_dice() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    w = class_weights([100, 10, 1])
    expected = F.cross_entropy(logits, target, weight=w) + soft_dice_loss(logits, target)
    assert float(SegLoss(w)(logits, target)) == pytest.approx(float(expected), rel=1e-6)
