from __future__ import annotations

import numpy as np
import pytest

from meunet.metrics import DiceCounter, dice_scores


def test_dice_hand_computed_and_blockwise_equals_whole() -> None:
    ref = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 1, 1, 0, 2, 0, 0])
    # class 1: tp 2, fp 1, fn 1 -> 4/6; class 2: tp 1, fn 1 -> 2/3; class 0: tp 2, fp 2, fn 1 -> 4/7
    assert dice_scores(pred, ref, 3).tolist() == pytest.approx([4 / 7, 4 / 6, 2 / 3])
    c = DiceCounter(3)
    c.update(pred[:3], ref[:3])
    c.update(pred[3:], ref[3:])
    assert c.dice().tolist() == pytest.approx([4 / 7, 4 / 6, 2 / 3])


def test_absent_class_is_nan_and_shapes_must_match() -> None:
    assert np.isnan(dice_scores(np.zeros(4, int), np.zeros(4, int), 2)[1])
    with pytest.raises(ValueError, match="differs from reference shape"):
        dice_scores(np.zeros(3, int), np.zeros(4, int), 2)
