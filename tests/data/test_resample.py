"""Downsampled copies for the low-resolution cascade: images and labels land on one grid."""

from __future__ import annotations

import numpy as np
import pytest

from meunet.data.resample import downsample_image, downsample_labels, upsample_labels


@pytest.mark.parametrize("shape", [(8, 8, 8), (155, 24, 23), (9, 10, 11)])
@pytest.mark.parametrize("factor", [2, 3])
def test_labels_and_images_share_the_downsampled_grid(
    shape: tuple[int, int, int], factor: int
) -> None:
    labels = np.random.default_rng(0).integers(0, 3, shape).astype(np.uint8)
    small = downsample_labels(labels, factor)
    assert small.shape == downsample_image(labels.astype(np.float32), factor).shape
    assert small.shape == tuple(-(-n // factor) for n in shape)
    assert set(np.unique(small)) <= set(np.unique(labels))  # nearest neighbour: no new values
    assert upsample_labels(small, factor, shape).shape == shape


def test_divisible_sizes_take_the_centre_of_each_block() -> None:
    labels = np.arange(6 * 4 * 8, dtype=np.int32).reshape(6, 4, 8)
    np.testing.assert_array_equal(downsample_labels(labels, 2), labels[1::2, 1::2, 1::2])
    up = upsample_labels(downsample_labels(labels, 2), 2, labels.shape)
    np.testing.assert_array_equal(up[1::2, 1::2, 1::2], labels[1::2, 1::2, 1::2])


def test_a_piecewise_constant_volume_survives_the_round_trip() -> None:
    labels = np.zeros((31, 20, 20), np.uint8)
    labels[4:20, 6:16, 2:12] = 2
    up = upsample_labels(downsample_labels(labels, 2), 2, labels.shape)
    assert (up != labels).mean() < 0.05
