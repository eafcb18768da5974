"""Window positions, centre weights and vote fusion against hand-computed fixtures."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from meunet.inference import centre_weights, predict_array


def test_centre_weights() -> None:
    w = centre_weights(8)
    assert w.shape == (8, 8, 8) and w.sum() == 8**3 + 4**3
    assert w[2:6, 2:6, 2:6].min() == 2 and w[1, 2:6, 2:6].max() == 1 and w[6, 3, 3] == 1


class _WindowMean(nn.Module):
    """Predicts class 1 for a whole window whose mean input is below 5, else class 2."""

    cfg = SimpleNamespace(num_classes=3)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        cls = torch.where(x.mean(dim=(1, 2, 3, 4)) < 5, 1, 2)
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        for i, c in enumerate(cls.tolist()):
            out[i, c] = 1.0
        return out


def test_vote_fusion_hand_computed() -> None:
    # z-coordinate image, (12, 8, 8), P = 8: windows start at z 0 and 4 (means 3.5 and 7.5)
    image = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None], (12, 8, 8))[None]
    pred = predict_array(_WindowMean(), np.ascontiguousarray(image), patch=8)
    centre = pred[:, 2:6, 2:6]  # central in y, x: window 0 weighs 2 on z 2..5, window 1 on z 6..9
    assert (centre[:6] == 1).all() and (centre[6:] == 2).all()
    edge = pred[:, 0, :]  # weight 1 from both windows on z 4..7: the tie goes to the lower class
    assert (edge[:8] == 1).all() and (edge[8:] == 2).all()


def test_prob_fusion_and_padding_keep_the_shape() -> None:
    image = np.random.default_rng(0).normal(size=(1, 13, 9, 21)).astype(np.float32)
    for fusion in ("vote", "prob"):
        pred = predict_array(_WindowMean(), image, patch=8, fusion=fusion)
        assert pred.shape == (13, 9, 21) and pred.dtype == np.uint8
    with pytest.raises(ValueError, match="fusion must be one of"):
        predict_array(_WindowMean(), image, patch=8, fusion="max")


def _most_votes(patch: int, step: int) -> int:
    """The largest weighted vote count any voxel collects, counted window by window (1D per axis).

    Along one axis, ``n`` windows cover a voxel and ``m`` of them have it in their
    central half; the voxel's count is n^3 (weight 1 each) + m^3 (the extra 1 of weight 2).
    """
    length = 3 * patch  # long enough for a voxel to be covered by every window that can reach it
    n, m = np.zeros(length, int), np.zeros(length, int)
    lo, hi = patch // 4, patch // 4 + patch // 2
    for s in range(0, length - patch + 1, step):
        n[s : s + patch] += 1
        m[s + lo : s + hi] += 1
    return int((n**3 + m**3).max())


@pytest.mark.parametrize(
    ("patch", "step", "dtype"),
    [(64, 32, np.uint8), (16, 8, np.uint8), (32, 4, np.uint16), (40, 1, np.uint32)],
)
def test_the_vote_counter_holds_the_largest_count(patch: int, step: int, dtype: type) -> None:
    from meunet.inference.sliding import vote_dtype, window_step

    most = _most_votes(patch, step)
    assert vote_dtype(patch, step) == dtype  # the paper's overlap keeps the small counter
    assert most <= np.iinfo(vote_dtype(patch, step)).max
    if (patch, step) == (40, 1):  # P = 40 at --overlap 0.99: a uint16 counter would wrap
        assert window_step(40, 0.99) == 1 and most == 40**3 + 20**3 > np.iinfo(np.uint16).max
