"""Streaming evaluation against an in-memory reference, and absent classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from meunet.data.io import open_volume, write_volume
from meunet.errors import MeunetError
from meunet.metrics.evaluate import evaluate_case, summary_table

SPACING = (2.0, 0.5, 0.75)


def _blobs(seed: int, shape: tuple[int, int, int] = (40, 24, 28)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    lab = np.zeros(shape, np.uint8)
    lab[field > 0.02] = 1
    lab[field > 0.06] = 2
    return lab


def _reference_hd95(p: np.ndarray, t: np.ndarray) -> float:
    """Classic in-memory HD95 with Euclidean distance transforms."""
    sp = np.logical_xor(p, ndimage.binary_erosion(p, border_value=0))
    st = np.logical_xor(t, ndimage.binary_erosion(t, border_value=0))
    dt_t = ndimage.distance_transform_edt(~st, sampling=SPACING)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=SPACING)
    return float(max(np.percentile(dt_t[sp], 95), np.percentile(dt_p[st], 95)))


def test_streamed_metrics_equal_the_in_memory_reference(tmp_path: Path) -> None:
    pred, truth = _blobs(0), _blobs(1)
    write_volume(tmp_path / "p.zarr", pred, spacing=SPACING)
    write_volume(tmp_path / "t.nii.gz", truth, spacing=SPACING)
    scores = evaluate_case(open_volume(tmp_path / "p.zarr"), open_volume(tmp_path / "t.nii.gz"), 3)
    for c in (1, 2):
        p, t = pred == c, truth == c
        assert scores[c].dice == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
        assert scores[c].hd95 == pytest.approx(_reference_hd95(p, t), rel=1e-9)
        assert scores[c].rvd == pytest.approx((p.sum() - t.sum()) / t.sum())


def test_absent_and_one_sided_classes(tmp_path: Path) -> None:
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:5, 2:5, 2:5] = 1
    write_volume(tmp_path / "t.zarr", truth)
    write_volume(tmp_path / "p.zarr", np.zeros_like(truth))
    scores = evaluate_case(open_volume(tmp_path / "p.zarr"), open_volume(tmp_path / "t.zarr"), 3)
    assert scores[1].dice == 0.0 and scores[1].hd95 == float("inf")
    assert scores[2].absent and np.isnan(scores[2].dice) and np.isnan(scores[2].hd95)
    rows, table = summary_table({"a": scores}, ["background", "one", "two"])
    assert [r["class"] for r in rows] == ["one", "two"]
    assert "two (absent from both) | absent" in table and "| a | one | 0.000 | inf |" in table


def test_shape_and_label_errors(tmp_path: Path) -> None:
    write_volume(tmp_path / "t.zarr", np.zeros((10, 10, 10), np.uint8))
    write_volume(tmp_path / "p.zarr", np.zeros((10, 10, 9), np.uint8))
    write_volume(tmp_path / "q.zarr", np.full((10, 10, 10), 4, np.uint8))
    with pytest.raises(MeunetError, match="differs from truth"):
        evaluate_case(open_volume(tmp_path / "p.zarr"), open_volume(tmp_path / "t.zarr"), 3)
    with pytest.raises(MeunetError, match=r"label values outside 0..2; pass --data"):
        evaluate_case(open_volume(tmp_path / "t.zarr"), open_volume(tmp_path / "q.zarr"), 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, r"label values \{nan\} are not whole class indices; fix the label file \(NaN"),
        (1.5, r"label values \{1.5\} are not whole class indices"),  # would count as class 1
        (np.inf, r"label values \{inf\} are not whole class indices"),
        (3.0, r"label values outside 0..2; pass --data DATASET.yaml .* \(found \{3\}\)"),
    ],
)
def test_truth_values_that_are_not_class_indices(
    tmp_path: Path, value: float, message: str
) -> None:
    truth = np.zeros((10, 10, 10), np.float32)
    truth[2:5, 2:5, 2:5] = 1
    truth[7, 7, 7] = value
    write_volume(tmp_path / "t.nii.gz", truth)
    write_volume(tmp_path / "p.zarr", np.zeros((10, 10, 10), np.uint8))
    with pytest.raises(MeunetError, match=rf"t\.nii\.gz: {message}"):
        evaluate_case(open_volume(tmp_path / "p.zarr"), open_volume(tmp_path / "t.nii.gz"), 3)
