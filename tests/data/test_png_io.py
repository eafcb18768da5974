"""PNG volumes: folders of slices and single 2D images (``meunet.data.io.png_io``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meunet.data.io import detect_format, open_volume, write_volume
from meunet.errors import FormatError, VolumeError


def _stack(
    folder: Path, n: int = 12, shape: tuple[int, int] = (4, 5), dtype: str = "uint8"
) -> None:
    folder.mkdir()
    for z in range(n):  # slice_2 must come before slice_10
        Image.fromarray(np.full(shape, z * 1000 if dtype == "uint16" else z, dtype=dtype)).save(
            folder / f"slice_{z}.png"
        )


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_folder_in_natural_sort_order(tmp_path: Path, dtype: str) -> None:
    _stack(tmp_path / "stack", dtype=dtype)
    (tmp_path / "stack" / "notes.txt").write_text("not a slice")
    vol = open_volume(tmp_path / "stack")
    assert (vol.format, vol.shape, vol.dtype) == ("png", (12, 4, 5), np.dtype(dtype))
    step = 1000 if dtype == "uint16" else 1
    assert vol[:, 0, 0].tolist() == [z * step for z in range(12)]
    assert vol[3:5, 1:3, 2:4].shape == (2, 2, 2)


def test_png_crop_reads_only_the_slices_of_its_z_range(tmp_path: Path) -> None:
    _stack(tmp_path / "stack", n=6)
    vol = open_volume(tmp_path / "stack")
    (tmp_path / "stack" / "slice_5.png").write_bytes(b"not a png any more")
    assert vol[0:5].shape == (5, 4, 5)  # never touches slice_5
    with pytest.raises(VolumeError, match=r"slice_5\.png"):
        vol[4:6]


def test_single_png_is_a_one_slice_volume(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(data).save(tmp_path / "label.png")
    vol = open_volume(tmp_path / "label.png")
    assert vol.shape == (1, 4, 5)
    np.testing.assert_array_equal(vol[0], data)


def test_palette_and_one_bit_pngs_read_their_values(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(labels, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    img.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(open_volume(tmp_path / "palette.png")[0], labels)
    Image.fromarray(labels > 0).save(tmp_path / "mask.png")
    mask = open_volume(tmp_path / "mask.png")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[0], (labels > 0).astype(np.uint8))


def test_grey_saved_as_rgb_reads_as_grey_and_colour_is_refused(tmp_path: Path) -> None:
    grey = np.array([[0, 3, 7], [7, 3, 0]], np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(open_volume(tmp_path / "grey_rgb.png")[0], grey)
    colour = np.stack([grey, grey, grey + 1], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(
        VolumeError, match=r"colour.png: colour PNG .*save the slices as 8- or 16-bit grey"
    ):
        open_volume(tmp_path / "colour.png")[...]


@pytest.mark.parametrize(
    ("stray", "match"),
    [
        (
            np.zeros((4, 6), np.uint8),
            r"s3.png: slice has shape \(4, 6\) and dtype uint8, but s0.png",
        ),
        (np.zeros((4, 5), np.uint16), r"s3.png: slice has shape \(4, 5\) and dtype uint16"),
    ],
    ids=["shape", "dtype"],
)
def test_png_folder_with_a_stray_slice_names_it(
    tmp_path: Path, stray: np.ndarray, match: str
) -> None:
    folder = tmp_path / "stack"
    folder.mkdir()
    for z in range(3):
        Image.fromarray(np.zeros((4, 5), np.uint8)).save(folder / f"s{z}.png")
    Image.fromarray(stray).save(folder / "s3.png")
    with pytest.raises(VolumeError, match=match):
        open_volume(folder)


def test_folder_format_is_told_by_its_slices(tmp_path: Path) -> None:
    _stack(tmp_path / "png", n=2)
    assert detect_format(tmp_path / "png") == "png"
    assert detect_format(tmp_path / "one.PNG") == "png"
    (tmp_path / "png" / "stray.tif").write_bytes(b"")
    with pytest.raises(FormatError, match="both TIFF and PNG slices"):
        open_volume(tmp_path / "png")
    (tmp_path / "jpg").mkdir()
    (tmp_path / "jpg" / "a.jpg").write_bytes(b"")
    with pytest.raises(FormatError, match=r"holds no .tif/.tiff or .png slices .*\(found: .jpg\)"):
        open_volume(tmp_path / "jpg")


def test_png_is_read_only(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="reads PNG but does not write it"):
        write_volume(tmp_path / "out.png", np.zeros((1, 2, 2), np.uint8))
    assert not (tmp_path / "out.png").exists()


def test_png_spacing_is_unknown_unless_given(tmp_path: Path) -> None:
    _stack(tmp_path / "stack", n=2)
    vol = open_volume(tmp_path / "stack")
    assert vol.spacing == (1.0, 1.0, 1.0) and not vol.spacing_known
    given = open_volume(tmp_path / "stack", spacing=(50, 4.6, 4.6))
    assert given.spacing == (50.0, 4.6, 4.6) and given.spacing_known
