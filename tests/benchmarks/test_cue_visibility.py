"""The cue-visibility benchmark's measures: checked against brute force and the label rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cv() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports the accuracy benchmark
    try:
        spec = importlib.util.spec_from_file_location(
            "cue_visibility", ROOT / "benchmarks/cue_visibility.py"
        )
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_placed_share_counts_every_window_that_holds_both(cv: Any) -> None:
    rng = np.random.default_rng(0)
    shape, window = (20, 13, 8), 8  # the last axis only as long as the window
    voxels = rng.integers(0, shape, size=(40, 3))
    markers = np.clip(voxels + rng.integers(-9, 10, size=(40, 3)), 0, np.array(shape) - 1)
    share = cv.placed_share(voxels, markers - voxels, window, shape)
    for v, m, got in zip(voxels, markers, share, strict=True):
        holds = both = 0
        for start in np.ndindex(*(n - window + 1 for n in shape)):
            s = np.array(start)
            if np.all((s <= v) & (v < s + window)):
                holds += 1
                both += bool(np.all((s <= m) & (m < s + window)))
        assert got == pytest.approx(both / holds)


def test_placed_share_of_simple_offsets(cv: Any) -> None:
    voxel, shape = np.array([[50, 50, 50]]), (100, 100, 100)
    for d, expected in ((0, 1.0), (8, 24 / 32), (31, 1 / 32), (32, 0.0)):
        assert cv.placed_share(voxel, np.array([[d, 0, 0]]), 32, shape)[0] == pytest.approx(
            expected
        )
    # an axis no longer than the window: every window holds the whole axis
    near_edge, far = np.array([[5, 50, 50]]), np.array([[30, 0, 0]])
    assert cv.placed_share(near_edge, far, 32, (32, 100, 100))[0] == 1.0
    assert cv.placed_share(near_edge, far, 32, (100, 100, 100))[0] == pytest.approx(
        2 / 6
    )  # starts 0-5


def test_centred_share_is_the_window_around_the_voxel(cv: Any) -> None:
    inside = np.array([[-16, 0, 0], [15, 15, -16]])  # a window of 32 spans -16 .. 15
    outside = np.array([[16, 0, 0], [0, -17, 0]])
    assert list(cv.centred_share(inside, 32)) == [1.0, 1.0]
    assert list(cv.centred_share(outside, 32)) == [0.0, 0.0]


def test_each_thin_voxel_is_decided_by_a_marker_of_its_own_kind_within_d(cv: Any) -> None:
    cfg = cv.PhantomConfig(shape=(128, 96, 96), context_distance=22.0)
    voxels, offsets, others = cv.deciding_offsets(cfg, 0, 14)
    thin, label = cv.thin_tubes(cfg, 0, 14)
    assert len(voxels) == thin.sum() > 1000
    g = cv.phantom_geometry(cfg, 0, 14)
    kind = {tuple(c): bool(q) for c, q in zip(g.markers, g.cues, strict=True)}
    hind = label[tuple(voxels.T)] == 2
    assert hind.any() and (~hind).any()
    said = np.array([kind[tuple(c)] for c in voxels + offsets])  # the marker is a real one
    assert np.array_equal(said, hind)  # bright for hind-gut, dark for the look-alikes
    assert np.all(np.linalg.norm(offsets, axis=1) <= 22.0)
    other = np.array([kind[tuple(c)] for c in voxels + others])
    assert np.array_equal(other, ~hind)  # the nearest of the other kind ...
    assert np.all(np.linalg.norm(others, axis=1) > 1.5 * 22.0)  # ... beyond the rule's margin
