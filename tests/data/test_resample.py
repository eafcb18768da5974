"""Resampling: the cascade's downsampled copies, and ``meunet resample`` streamed slab by slab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume
from meunet.data.resample import (
    HALO,
    _block_shape,
    downsample_image,
    downsample_labels,
    resample_array,
    resample_volume,
    upsample_labels,
)


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


# --- meunet resample: any volume, by factor or to a spacing, streamed ---


def _smooth(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.5)
    return (100 * field).astype(np.float32)


@pytest.mark.parametrize(
    "factor", [(2.0, 2.0, 2.0), (0.5, 1.0, 1.0), (3.0, 1.5, 0.7), (1.3, 1.0, 1.0)]
)
def test_streamed_spline_equals_the_whole_volume_result(
    tmp_path: Path, factor: tuple[float, float, float]
) -> None:
    image = _smooth((37, 12, 10))
    write_volume(tmp_path / "in.zarr", image)
    # blocks of 3 x 4 x 5 output voxels: seams on every axis, each block prefiltered on its halo
    shape = resample_volume(
        tmp_path / "in.zarr", tmp_path / "out.zarr", factor=factor, block=(3, 4, 5), progress=False
    )
    out = open_volume(tmp_path / "out.zarr")[...]
    whole = resample_array(image, factor)
    assert out.shape == whole.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_whole_volume_spline_is_scipy_zoom_on_divisible_sizes() -> None:
    image = _smooth((16, 12, 10)).astype(np.float64)
    zoomed = ndimage.zoom(image, 0.5, order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(resample_array(image, (2, 2, 2)), zoomed, atol=1e-12)


def test_labels_take_the_voxel_under_each_centre(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(0, 5, (20, 8, 12)).astype(np.uint8)
    write_volume(tmp_path / "lab.tif", labels)
    resample_volume(
        tmp_path / "lab.tif",
        tmp_path / "x2.zarr",
        factor=2,
        labels=True,
        block=(3, 3, 5),
        progress=False,
    )
    np.testing.assert_array_equal(open_volume(tmp_path / "x2.zarr")[...], labels[1::2, 1::2, 1::2])
    factor = (1.5, 2.0, 0.5)
    resample_volume(
        tmp_path / "lab.tif",
        tmp_path / "odd.nii.gz",
        factor,
        labels=True,
        block=(2, 3, 7),
        progress=False,
    )
    out = open_volume(tmp_path / "odd.nii.gz")
    assert out.shape == (13, 4, 24) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[...], resample_array(labels, factor, labels=True))


def test_integer_images_are_rounded_and_clipped() -> None:
    image = np.zeros((8, 8, 8), np.uint8)
    image[:, :, 4:] = 255  # a step: the cubic spline overshoots on both sides
    out = resample_array(image, (1.0, 1.0, 0.5))
    spline = resample_array(image.astype(np.float64), (1.0, 1.0, 0.5))
    assert out.dtype == np.uint8 and spline.min() < 0 and spline.max() > 255
    np.testing.assert_array_equal(out, np.clip(np.rint(spline), 0, 255))


def test_output_spacing_is_the_new_one_and_the_volume_keeps_its_place(tmp_path: Path) -> None:
    direction = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
    image = _smooth((12, 10, 8))
    write_volume(
        tmp_path / "in.zarr", image, spacing=(2.0, 1.0, 0.5), origin=(5.0, 6.0, 7.0),
        direction=direction, space="LPS",
    )  # fmt: skip
    resample_volume(tmp_path / "in.zarr", tmp_path / "out.zarr", spacing=(1, 2, 2), progress=False)
    out = open_volume(tmp_path / "out.zarr")
    assert out.shape == (24, 5, 2)
    assert out.spacing == (1.0, 2.0, 2.0)
    assert out.direction == direction and out.space == "LPS"
    # the first voxel centre moves by half the change of voxel size along each axis'
    # direction: z by (1 - 2) / 2 = -0.5 (world row 1), y by +0.5 (row 0), x by +0.75 (row 2, -1)
    assert out.origin == pytest.approx((5.0 + 0.5, 6.0 - 0.5, 7.0 - 0.75))
    resample_volume(
        tmp_path / "out.zarr", tmp_path / "back.zarr", spacing=(2, 1, 0.5), progress=False
    )
    back = open_volume(tmp_path / "back.zarr")
    assert back.shape == (12, 10, 8) and back.origin == pytest.approx((5.0, 6.0, 7.0))


def test_resample_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_volume(tmp_path / "in.zarr", _smooth((12, 10, 8)), spacing=(2.0, 1.0, 1.0))
    out = tmp_path / "out.nii.gz"
    assert (
        main(
            ["resample", str(tmp_path / "in.zarr"), str(out), "--spacing", "1", "1", "2", "--quiet"]
        )
        == 0
    )
    assert "shape (24, 10, 4)" in capsys.readouterr().out
    assert open_volume(out).spacing == pytest.approx((1.0, 1.0, 2.0))
    assert not (tmp_path / "out.nii.gz.partial.zarr").exists()  # the work store is gone
    write_volume(tmp_path / "lab.zarr", np.zeros((4, 4, 4), np.uint8))
    lab = ["resample", str(tmp_path / "lab.zarr"), str(tmp_path / "lab2.zarr"), "--factor", "2"]
    assert main([*lab, "--quiet"]) == 0
    assert "pass --labels if it is a label volume" in capsys.readouterr().err
    assert main([*lab, "--quiet", "--labels"]) == 0
    assert "--labels" not in capsys.readouterr().err
    assert (
        main(["resample", str(out), str(tmp_path / "f.zarr"), "--factor", "1", "2", "--quiet"]) == 2
    )
    assert "factor must be one positive number or three" in capsys.readouterr().err


def test_resample_claims_its_output_as_convert_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_volume(tmp_path / "in.zarr", _smooth((8, 8, 8)))
    theirs = tmp_path / "theirs.npy"
    theirs.write_bytes(b"not meunet's")
    args = ["resample", str(tmp_path / "in.zarr"), str(theirs), "--factor", "2", "--quiet"]
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err and theirs.read_bytes() == b"not meunet's"
    assert main([*args, "--overwrite"]) == 0 and open_volume(theirs).shape == (4, 4, 4)
    same = ["resample", str(tmp_path / "in.zarr"), str(tmp_path / "in.zarr"), "--factor", "2"]
    assert main(same) == 2
    assert "would destroy the input" in capsys.readouterr().err
    assert open_volume(tmp_path / "in.zarr").shape == (8, 8, 8)


def test_blocks_stay_bounded_on_huge_planes() -> None:
    pad = 2 * HALO + 6
    for shape, ratio in [((10, 8192, 8192), (1.0, 1.0, 1.0)), ((500, 4096, 4096), (4.0, 0.5, 0.5))]:
        dz, dy, dx = _block_shape(shape, ratio, 64)
        crop = (dz * ratio[0] + pad) * (dy * ratio[1] + pad) * (dx * ratio[2] + pad)
        assert dy < shape[1] and crop * 8 < 150 << 20
    assert _block_shape((300, 100, 100), (1.0, 1.0, 1.0), 64) == (256, 100, 100)


@pytest.mark.parametrize("suffix", [".zarr", ".nii.gz"])
def test_resample_keeps_an_unknown_spacing_unknown(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "stack.npy"
    np.save(src, _smooth((8, 8, 8)))  # no sidecar: the spacing is unknown (1 assumed)
    by_factor, to_spacing = tmp_path / f"f{suffix}", tmp_path / f"s{suffix}"
    assert main(["resample", str(src), str(by_factor), "--factor", "2", "--quiet"]) == 0
    assert main(["resample", str(src), str(to_spacing), "--spacing", "2", "2", "2", "--quiet"]) == 0
    assert not open_volume(by_factor).spacing_known  # 2 x an assumed 1 is still assumed
    assert open_volume(to_spacing).spacing_known  # a target spacing states the voxel size
    known = tmp_path / "known.zarr"
    write_volume(known, _smooth((8, 8, 8)), spacing=(3.0, 1.0, 1.0))
    resample_volume(known, tmp_path / "k.zarr", factor=2, progress=False)
    assert open_volume(tmp_path / "k.zarr").spacing_known


def test_resample_labels_keeps_segment_names(tmp_path: Path) -> None:
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 4
    write_volume(tmp_path / "l.zarr", labels, segments={4: "nucleus"})
    resample_volume(
        tmp_path / "l.zarr", tmp_path / "l2.nii.gz", factor=2, labels=True, progress=False
    )
    assert open_volume(tmp_path / "l2.nii.gz").meta["segments"][0]["name"] == "nucleus"
