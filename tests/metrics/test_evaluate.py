"""Streaming evaluation against an in-memory reference, and absent classes."""

from __future__ import annotations

import csv
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


def _lines(tmp_path: Path, spacing: tuple[float, float, float]) -> tuple[Path, Path]:
    """Thin lines whose every voxel is surface, so both directed distance sets are known.

    Truth: 40 voxels at y = 1. Prediction: 40 voxels at y = 2 and 3 more at y = 6.
    With spacing (1, 2, 1): prediction -> truth is 40 x 2.0 and 3 x 10.0 (43 values),
    truth -> prediction is 40 x 2.0.
    """
    truth = np.zeros((3, 8, 40), np.uint8)
    truth[1, 1, :] = 1
    pred = np.zeros_like(truth)
    pred[1, 2, :] = 1
    pred[1, 6, :3] = 1
    write_volume(tmp_path / "t.zarr", truth, spacing=spacing)
    write_volume(tmp_path / "p.zarr", pred, spacing=spacing)
    return tmp_path / "p.zarr", tmp_path / "t.zarr"


def test_hd95_max_and_pooled_on_a_hand_computed_case(tmp_path: Path) -> None:
    pred, truth = _lines(tmp_path, (1.0, 2.0, 1.0))

    def hd95(mode: str) -> float:
        return evaluate_case(open_volume(pred), open_volume(truth), 2, hd95=mode)[1].hd95

    # numpy's 95th percentile of n sorted values sits at index 0.95 (n - 1), linearly interpolated.
    # max: prediction -> truth, 43 values, index 39.9: 2 + 0.9 * (10 - 2) = 9.2 (truth -> pred: 2)
    assert hd95("max") == pytest.approx(9.2)
    # pooled: 83 values (80 x 2.0, 3 x 10.0), index 77.9 lies among the 2.0s
    assert hd95("pooled") == pytest.approx(2.0)
    with pytest.raises(MeunetError, match=r"hd95 must be one of \['max', 'pooled'\]"):
        hd95("mean")


def test_the_table_states_the_hd95_definition(tmp_path: Path) -> None:
    pred, truth = _lines(tmp_path, (1.0, 1.0, 1.0))
    for mode, words in (("max", "larger of the two directed"), ("pooled", "pooled")):
        scores = evaluate_case(open_volume(pred), open_volume(truth), 2, hd95=mode)
        table = summary_table({"c": scores}, ["background", "line"], hd95=mode)[1]
        assert table.splitlines()[-1].startswith(f"HD95 ({mode}): ") and words in table


def test_evaluate_uses_the_spec_spacing_and_the_hd95_option(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from meunet.cli.main import main

    # the files say (1, 1, 1); the dataset spec says (1, 2, 1), which HD95 must use
    pred, truth = _lines(tmp_path, (1.0, 1.0, 1.0))
    (tmp_path / "preds").mkdir()
    pred.rename(tmp_path / "preds" / "c0.zarr")
    spec = tmp_path / "dataset.yaml"
    spec.write_text(
        "name: lines\nclasses: [background, line]\nspacing: [1.0, 2.0, 1.0]\n"
        f"cases:\n  c0:\n    image: {truth}\n    label: {truth}\n"
        "split:\n  train: []\n  val: []\n  test: [c0]\n"
    )
    folder = ["evaluate", "--pred", str(tmp_path / "preds"), "--data", str(spec)]
    assert main([*folder, "--out", str(tmp_path / "scores")]) == 0
    out = capsys.readouterr().out
    assert "| c0 | line | " in out and "| 9.200 |" in out  # 4.600 with the files' spacing
    assert "Spacing (z, y, x) [1.0, 2.0, 1.0] from" in out and "HD95 (max): the larger" in out
    (row,) = csv.DictReader((tmp_path / "scores.csv").read_text().splitlines())
    assert float(row["hd95"]) == pytest.approx(9.2)
    assert "HD95 (max): " in (tmp_path / "scores.md").read_text()
    assert main([*folder, "--hd95", "pooled"]) == 0
    out = capsys.readouterr().out
    assert "| 2.000 |" in out and "HD95 (pooled): " in out
    # a single prediction with --truth takes the spec's spacing too
    single = ["evaluate", "--pred", str(tmp_path / "preds" / "c0.zarr"), "--truth", str(truth)]
    assert main([*single, "--data", str(spec)]) == 0
    assert "| 9.200 |" in capsys.readouterr().out
    assert main([*single, "--classes", "2"]) == 0
    assert "| 4.600 |" in capsys.readouterr().out
