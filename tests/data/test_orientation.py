"""Orientation (origin, spacing, direction, space) survives reading, converting and writing.

Each format module converts its native form (NIfTI affine, NRRD space
directions) to the one representation of :mod:`meunet.data.volume`; a
volume written back in its own format keeps its geometry exactly, and Zarr
carries it between them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from meunet.data.convert import convert
from meunet.data.io import open_volume, write_volume

SHAPE = (6, 5, 4)  # (z, y, x): no two axes alike, so a transposition or a flip shows
#: BRATS's affine: LPS-stored data, diag(-1, -1, 1) with the y origin at the far edge
BRATS = np.array([[-1.0, 0, 0, -0.0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _oblique() -> np.ndarray:
    """A rotated, anisotropic affine (30 degrees about the second axis)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-12.5, 30.25, 4.0]
    return affine


def _data(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)


def _nifti(path: Path, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(_data().transpose(2, 1, 0), affine), path)
    return path


@pytest.mark.parametrize("affine", [BRATS, _oblique()], ids=["brats-lps", "oblique"])
@pytest.mark.parametrize("via", ["", "x.zarr", "x.ome.zarr", "x.nrrd"])
def test_nifti_affine_survives_convert_exactly(
    tmp_path: Path, affine: np.ndarray, via: str
) -> None:
    src = _nifti(tmp_path / "in.nii.gz", affine)
    mid = src
    if via:
        mid = tmp_path / via
        convert(src, mid, progress=False)
    out = tmp_path / "out.nii.gz"
    convert(mid, out, progress=False)
    img = nib.load(out)
    np.testing.assert_array_equal(img.header.get_best_affine(), nib.load(src).affine)
    np.testing.assert_array_equal(img.get_sform(), nib.load(src).affine)
    assert img.header.get_zooms() == nib.load(src).header.get_zooms()
    np.testing.assert_array_equal(np.asarray(img.dataobj), _data().transpose(2, 1, 0))


def test_nifti_geometry_reads_as_one_representation(tmp_path: Path) -> None:
    vol = open_volume(_nifti(tmp_path / "b.nii", BRATS))
    # file axis i (x) runs to world -x, j (y) to world -y: in (z, y, x) order both ways
    assert vol.direction == ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))
    assert vol.origin == (0.0, 239.0, -0.0) and vol.spacing == (1.0, 1.0, 1.0)
    assert vol.space == "RAS"
    world = np.asarray(vol.origin) + np.asarray(vol.direction) @ (
        np.asarray(vol.spacing) * (5, 4, 3)
    )
    np.testing.assert_allclose(world[::-1], (BRATS @ [3, 4, 5, 1])[:3])


def _nrrd(path: Path, space: str, directions: np.ndarray, origin: list[float]) -> Path:
    header = {
        "space": space,
        "space directions": directions,
        "space origin": np.asarray(origin, dtype=float),
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(path), np.ascontiguousarray(_data()), header, index_order="C")
    return path


#: rows: file axes x, y, z; x and y swapped and flipped, as a sagittal export has them
SWAPPED = np.array([[0.0, 0.9, 0.0], [-0.8, 0.0, 0.0], [0.0, 0.0, 2.0]])


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
@pytest.mark.parametrize("via", ["", "x.zarr"])
def test_nrrd_space_directions_survive_convert_exactly(
    tmp_path: Path, space: str, via: str
) -> None:
    src = _nrrd(tmp_path / "in.nrrd", space, SWAPPED, [5.5, -6.0, 7.25])
    mid = src
    if via:
        mid = tmp_path / via
        convert(src, mid, progress=False)
    out = tmp_path / "out.nrrd"
    convert(mid, out, progress=False)
    data, header = nrrd.read(str(out), index_order="C")
    assert header["space"] == space
    np.testing.assert_array_equal(header["space directions"], SWAPPED)
    np.testing.assert_array_equal(header["space origin"], [5.5, -6.0, 7.25])
    np.testing.assert_array_equal(data, _data())


def _world(affine: np.ndarray, ijk: tuple[int, int, int]) -> np.ndarray:
    return (affine @ [*ijk, 1])[:3]


def test_an_lps_nrrd_and_its_nifti_put_every_voxel_at_one_place(tmp_path: Path) -> None:
    src = _nrrd(tmp_path / "in.nrrd", "left-posterior-superior", SWAPPED, [5.5, -6.0, 7.25])
    convert(src, tmp_path / "out.nii.gz", progress=False)
    ras = nib.load(tmp_path / "out.nii.gz").affine
    header = nrrd.read_header(str(src))
    to_ras = np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        lps = header["space origin"] + np.asarray(ijk) @ header["space directions"]
        np.testing.assert_allclose(_world(ras, ijk), to_ras * lps, atol=1e-6)


def test_zarr_keeps_spacing_origin_and_direction(tmp_path: Path) -> None:
    direction = ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0))
    write_volume(tmp_path / "v.zarr", _data(), spacing=(2.0, 0.5, 0.25), origin=(1.0, 2.0, 3.0),
                 direction=direction, space="LPS")  # fmt: skip
    vol = open_volume(tmp_path / "v.zarr")
    assert (vol.spacing, vol.origin) == ((2.0, 0.5, 0.25), (1.0, 2.0, 3.0))
    assert (vol.direction, vol.space) == (direction, "LPS")
    write_volume(tmp_path / "w.zarr", vol)  # a volume brings its own geometry
    assert open_volume(tmp_path / "w.zarr").geometry() == vol.geometry()


@pytest.mark.parametrize(
    "direction",
    [((1.0, 0.0), (0.0, 1.0)), ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)), "up"],
)
def test_a_bad_direction_is_refused_with_the_path(tmp_path: Path, direction: object) -> None:
    with pytest.raises(ValueError, match=r"v\.nii\.gz: direction must be a 3x3 matrix"):
        write_volume(tmp_path / "v.nii.gz", _data(), direction=direction)  # type: ignore[arg-type]
