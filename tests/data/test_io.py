"""Round trips of every format, reading files made by other tools, and bad input."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr

from meunet.data.io import ZarrSlabWriter, detect_format, open_volume, write_volume
from meunet.data.volume import normalize_key
from meunet.errors import VolumeError

SPACING = (2.5, 0.75, 0.5)
ORIGIN = (10.0, -4.0, 3.25)

# (file name, write options): every writer, and the variants readers meet
TARGETS = [
    ("v.zarr", {}),
    ("v2.zarr", {"zarr_format": 2}),
    ("v.ome.zarr", {}),
    ("v2.ome.zarr", {"zarr_format": 2}),
    ("v.h5", {}),
    ("v.h5:/group/scan", {}),
    ("v.npy", {}),
    ("v.tif", {}),
    ("vz.tif", {"compression": "zlib"}),
    ("slices", {}),
    ("v.nii", {}),
    ("v.nii.gz", {}),
    ("v.nrrd", {}),
    ("vgz.nrrd", {"encoding": "gzip"}),
    ("v.seg.nrrd", {}),
]
DTYPES = ["uint8", "int16", "uint16", "float32", "float64"]


def _data(dtype: str, shape: tuple[int, int, int] = (9, 13, 17)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, 200, size=shape).astype(dtype)


ROUND_TRIPS = [
    (name, options, dtype)
    for name, options in TARGETS
    for dtype in DTYPES
    if not (name.endswith(".seg.nrrd") and dtype.startswith("float"))  # segmentations hold integers
]


@pytest.mark.parametrize(
    ("name", "options", "dtype"), ROUND_TRIPS, ids=[f"{n}-{d}" for n, _, d in ROUND_TRIPS]
)
def test_round_trip(tmp_path: Path, name: str, options: dict, dtype: str) -> None:
    data = _data(dtype)
    path = str(tmp_path / name)
    write_volume(path, data, spacing=SPACING, origin=ORIGIN, **options)
    with open_volume(path) as vol:
        assert vol.shape == data.shape
        assert vol.dtype == data.dtype
        assert vol.spacing == pytest.approx(SPACING)
        assert vol.origin == pytest.approx(ORIGIN)
        np.testing.assert_array_equal(vol[...], data)
        np.testing.assert_array_equal(vol[2:7, 1:12:3, 5:], data[2:7, 1:12:3, 5:])
        np.testing.assert_array_equal(vol[4, :, -1], data[4, :, -1])
        np.testing.assert_array_equal(np.asarray(vol), data)


def test_round_trip_of_a_lazy_volume_streams_between_formats(tmp_path: Path) -> None:
    data = _data("int16", (70, 20, 30))
    write_volume(tmp_path / "a.nii.gz", data, spacing=SPACING)
    src = open_volume(tmp_path / "a.nii.gz")
    for name in ("b.zarr", "b.h5", "b.npy", "b.tif"):
        write_volume(tmp_path / name, src)  # spacing and origin come from the source volume
        out = open_volume(tmp_path / name)
        assert out.spacing == pytest.approx(SPACING)
        np.testing.assert_array_equal(out[...], data)


@pytest.mark.parametrize(
    ("key", "slices", "dropped"),
    [
        (np.s_[...], (slice(0, 10, 1), slice(0, 20, 1), slice(0, 30, 1)), ()),
        (np.s_[5], (slice(5, 6, 1), slice(0, 20, 1), slice(0, 30, 1)), (0,)),
        (np.s_[-1, ..., 2:4], (slice(9, 10, 1), slice(0, 20, 1), slice(2, 4, 1)), (0,)),
        (np.s_[3:100, -5:, ::7], (slice(3, 10, 1), slice(15, 20, 1), slice(0, 30, 7)), ()),
        (np.s_[8:3], (slice(8, 8, 1), slice(0, 20, 1), slice(0, 30, 1)), ()),
    ],
)
def test_normalize_key(key: object, slices: tuple, dropped: tuple) -> None:
    assert normalize_key(key, (10, 20, 30)) == (slices, dropped)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (np.s_[::-1], "positive slice steps"),
        (np.s_[10], "out of bounds"),
        (np.s_[0, 0, 0, 0], "too many indices"),
        (np.s_[[1, 2]], "unsupported index"),
        (np.s_[..., 0, ...], "single ellipsis"),
    ],
)
def test_normalize_key_rejects(key: object, match: str) -> None:
    with pytest.raises(IndexError, match=match):
        normalize_key(key, (10, 20, 30))


def test_empty_crop(tmp_path: Path) -> None:
    write_volume(tmp_path / "v.zarr", _data("uint8"))
    assert open_volume(tmp_path / "v.zarr")[5:5].shape == (0, 13, 17)


# ---- files written by other tools -------------------------------------------------


def test_ome_zarr_v04_with_channel_and_time_axes(tmp_path: Path) -> None:
    data = _data("uint16", (6, 8, 10))
    group = zarr.open_group(tmp_path / "img.ome.zarr", mode="w", zarr_format=2)
    group.create_array("s0", data=data[None, None])
    group.create_array("s1", data=data[None, None, ::2, ::2, ::2])
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
                 {"name": "z", "type": "space", "unit": "micrometer"},
                 {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [
            {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2.95, 1.5, 1.5]}]},
            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 5.9, 3, 3]}]},
        ],
    }]  # fmt: skip
    vol = open_volume(tmp_path / "img.ome.zarr")
    assert vol.shape == data.shape
    assert vol.spacing == pytest.approx((2.95, 1.5, 1.5))
    np.testing.assert_array_equal(vol[1:3, 2:, :5], data[1:3, 2:, :5])


def test_ome_zarr_with_several_channels_is_refused(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "rgb.ome.zarr", mode="w")
    group.create_array("0", shape=(3, 4, 5, 6), dtype="uint8")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1]}]}],
    }]}  # fmt: skip
    with pytest.raises(VolumeError, match="one channel per volume"):
        open_volume(tmp_path / "rgb.ome.zarr")


def test_imagej_tiff_spacing(tmp_path: Path) -> None:
    data = _data("uint16", (5, 6, 7))
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"spacing": 1.2, "unit": "um", "axes": "ZYX"},
    )
    vol = open_volume(tmp_path / "ij.tif")
    assert vol.spacing == pytest.approx((1.2, 0.4, 0.4)) and vol.spacing_known
    np.testing.assert_array_equal(vol[...], data)


def test_tiff_folder_natural_sort_order(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    folder.mkdir()
    for z in range(12):  # slice_2 must come before slice_10
        tifffile.imwrite(folder / f"slice_{z}.tif", np.full((4, 5), z, dtype=np.uint8))
    (folder / "notes.txt").write_text("not a slice")
    vol = open_volume(folder)
    assert vol.shape == (12, 4, 5)
    assert vol[:, 0, 0].tolist() == list(range(12))


def test_tiff_folder_with_a_stray_slice(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"s{z}.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(folder / "s3.tif", np.zeros((4, 6), np.uint8))
    with pytest.raises(VolumeError, match=r"s3.tif: slice has shape \(4, 6\)"):
        open_volume(folder)


def test_hdf5_element_size_um_and_dataset_choice(tmp_path: Path) -> None:
    data = _data("float32", (4, 5, 6))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("exported_data", data=data)
        ds.attrs["element_size_um"] = [3.0, 2.0, 1.0]
    vol = open_volume(tmp_path / "f.h5")
    assert vol.spacing == (3.0, 2.0, 1.0)
    assert vol.path.endswith(":/exported_data")
    vol.close()
    with h5py.File(tmp_path / "f.h5", "a") as f:
        f.create_dataset("other", data=data)
    with pytest.raises(VolumeError, match=r"name one as .*f.h5:/DATASET"):
        open_volume(tmp_path / "f.h5")
    with pytest.raises(VolumeError, match="no dataset 'missing'"):
        open_volume(f"{tmp_path / 'f.h5'}:/missing")


def test_nrrd_detached_header(tmp_path: Path) -> None:
    data = _data("int16", (3, 4, 5))
    data.tofile(tmp_path / "v.raw")
    (tmp_path / "v.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nspacings: 0.5 0.6 2\n"
        "endian: little\nencoding: raw\ndata file: v.raw\n\n"
    )
    vol = open_volume(tmp_path / "v.nhdr")
    assert vol.lazy and vol.spacing == pytest.approx((2.0, 0.6, 0.5))
    np.testing.assert_array_equal(vol[...], data)


def test_nifti_keeps_affine_and_scaling(tmp_path: Path) -> None:
    data = _data("int16", (4, 5, 6))
    affine = np.array([[-0.5, 0, 0, 10], [0, 0.5, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1.0]])
    img = nib.Nifti1Image(data.transpose(2, 1, 0), affine)
    img.header.set_slope_inter(0.5, 1.0)
    nib.save(img, tmp_path / "s.nii")
    vol = open_volume(tmp_path / "s.nii")
    assert vol.dtype.kind == "f"  # scl_slope applied
    np.testing.assert_allclose(vol[...], data * 0.5 + 1.0)
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.5))
    write_volume(tmp_path / "out.nii.gz", data, **vol.geometry())
    np.testing.assert_array_equal(nib.load(tmp_path / "out.nii.gz").affine, affine)


def test_slicer_ct_and_segmentation_from_slicerio() -> None:
    slicerio = pytest.importorskip(
        "slicerio", reason="slicerio (dev extra) ships a real CT and .seg.nrrd"
    )
    data_dir = Path(slicerio.__file__).parent / "data"
    ct = open_volume(data_dir / "CTChest4.nrrd")
    seg = open_volume(data_dir / "Segmentation.seg.nrrd")
    assert ct.shape == seg.shape == (34, 128, 128)
    assert ct.spacing == pytest.approx((10.0, 3.046875952, 3.046875952))
    assert ct.dtype == np.int32 and seg.dtype == np.uint8
    assert (
        -3100 < ct[...].min() < -1000 < 1000 < ct[...].max() < 4000
    )  # HU, outside-FOV padding -3024
    names = {s["name"]: s["label"] for s in seg.meta["segments"]}
    assert len(names) >= 2
    present = set(np.unique(seg[...]).tolist()) - {0}
    assert present <= set(names.values())


# ---- bad input -----------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    path.write_bytes(b"this is not an image" * 10)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.tif", "v.h5", "v.npy"])
def test_corrupt_file_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    _corrupt(path)
    with pytest.raises(VolumeError, match=rf"{name}: cannot read this .* file .*corrupt"):
        vol = open_volume(path)
        vol[...]  # some formats only fail on reading


def test_truncated_nifti_gz(tmp_path: Path) -> None:
    write_volume(tmp_path / "v.nii.gz", _data("float32", (20, 30, 40)))
    raw = gzip.decompress((tmp_path / "v.nii.gz").read_bytes())
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(VolumeError, match=r"t.nii.gz: cannot read"):
        open_volume(tmp_path / "t.nii.gz")[...]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"nope.nii.gz: file not found"):
        open_volume(tmp_path / "nope.nii.gz")


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "v.mha").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"v.mha: unknown volume format; meunet reads .*\.zarr"):
        open_volume(tmp_path / "v.mha")


@pytest.mark.parametrize(
    ("name", "shape"), [("4d.nii", (3, 4, 5, 2)), ("2d.npy", (4, 5)), ("4d.h5", (2, 3, 4, 5))]
)
def test_not_3d(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    data = np.zeros(shape, np.float32)
    if name.endswith(".nii"):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / name)
    elif name.endswith(".npy"):
        np.save(tmp_path / name, data)
    else:
        with h5py.File(tmp_path / name, "w") as f:
            f["v"] = data
    with pytest.raises(VolumeError, match="meunet reads 3D volumes"):
        open_volume(f"{tmp_path / name}" + (":/v" if name.endswith(".h5") else ""))


def test_interrupted_zarr_writer_leaves_a_volume_that_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pred.zarr"
    with (
        pytest.raises(RuntimeError),
        ZarrSlabWriter(path, (64, 8, 8), "uint8", chunks=(8, 8, 8)) as w,
    ):
        w.write(0, np.ones((8, 8, 8), np.uint8))
        raise RuntimeError("killed mid-write")
    with pytest.raises(VolumeError, match="never finished"):
        open_volume(path)


ZARR_LAYOUTS = {  # file name, write options, the stored key of chunk (0, 1, 2)
    "v3": ("v.zarr", {}, "c/0/1/2"),
    "v2": ("v2.zarr", {"zarr_format": 2}, "0.1.2"),
    "ome v3": ("v.ome.zarr", {}, "0/c/0/1/2"),
    "ome v2": ("v2.ome.zarr", {"zarr_format": 2}, "0/0.1.2"),
}


@pytest.mark.parametrize("layout", ZARR_LAYOUTS, ids=list(ZARR_LAYOUTS))
def test_a_missing_zarr_chunk_is_an_error_not_zeros(tmp_path: Path, layout: str) -> None:
    name, options, key = ZARR_LAYOUTS[layout]
    path = tmp_path / name
    write_volume(path, _data("uint8", (20, 20, 20)) + 1, chunks=(8, 8, 8), **options)
    (path / key).unlink()  # a copy or download that stopped early
    vol = open_volume(path)
    np.testing.assert_array_equal(vol[:8, :8, :8], _data("uint8", (20, 20, 20))[:8, :8, :8] + 1)
    array = str(path / "0") if "ome" in layout else str(path)
    with pytest.raises(VolumeError) as info:
        vol[...]
    assert str(info.value) == (
        f"{path}: chunk {array}/{key.removeprefix('0/')} (voxels [0:8, 8:16, 16:20]) is missing; "
        "Zarr would read it as the fill value 0. Re-copy or re-export the store (an interrupted "
        "copy leaves chunks out); if its writer skipped chunks equal to the fill value on purpose, "
        f"declare that with zarr.open_array({array!r}, mode='r+').attrs['missing_chunks'] = 'fill_value'"
    )
    with pytest.raises(VolumeError, match="is missing"):
        vol[5:9, 8:9, 19]  # any read touching the chunk


def test_missing_zarr_chunks_read_as_fill_value_when_declared(tmp_path: Path) -> None:
    data = np.zeros((16, 8, 8), np.uint8)
    data[:8] = 3
    zarr.create_array(tmp_path / "sparse.zarr", data=data, chunks=(8, 8, 8))  # skips zero chunks
    assert sorted(p.name for p in (tmp_path / "sparse.zarr" / "c").iterdir()) == ["0"]
    with pytest.raises(
        VolumeError, match=r"chunk .*sparse.zarr/c/1/0/0 \(voxels \[8:16, 0:8, 0:8\]\)"
    ):
        open_volume(tmp_path / "sparse.zarr")[...]
    zarr.open_array(tmp_path / "sparse.zarr", mode="r+").attrs["missing_chunks"] = "fill_value"
    np.testing.assert_array_equal(open_volume(tmp_path / "sparse.zarr")[...], data)


def test_arrays_finished_by_an_older_meunet_read_missing_chunks_as_fill(tmp_path: Path) -> None:
    # meunet before `every_chunk` finished its outputs without storing all-zero chunks
    data = np.zeros((16, 8, 8), np.uint8)
    data[8:] = 1
    arr = zarr.create_array(tmp_path / "old.zarr", data=data, chunks=(8, 8, 8))
    assert arr.nchunks_initialized == 1
    arr.attrs["meunet"] = {"complete": True}
    np.testing.assert_array_equal(open_volume(tmp_path / "old.zarr")[...], data)
    arr.attrs["meunet"] = {"complete": True, "every_chunk": True}  # today's writers
    with pytest.raises(VolumeError, match="is missing"):
        open_volume(tmp_path / "old.zarr")[...]


@pytest.mark.parametrize("name", ["v.zarr", "v.ome.zarr"])
def test_zarr_writer_stores_every_chunk_even_empty_ones(tmp_path: Path, name: str) -> None:
    # a missing chunk in meunet's own output then always means damage
    write_volume(tmp_path / name, np.zeros((20, 16, 8), np.uint8), chunks=(8, 8, 8))
    assert (
        zarr.open_array(tmp_path / name / ("0" if "ome" in name else "")).nchunks_initialized == 6
    )
    np.testing.assert_array_equal(open_volume(tmp_path / name)[...], 0)


def test_zarr_writer_rejects_a_slab_that_does_not_fit(tmp_path: Path) -> None:
    with (
        ZarrSlabWriter(tmp_path / "a.zarr", (10, 8, 8), "uint8") as w,
        pytest.raises(ValueError, match="does not fit"),
    ):
        w.write(8, np.zeros((4, 8, 8), np.uint8))


@pytest.mark.parametrize("name", ["v.nii.gz", "v.npy", "v.tif", "v.h5", "v.nrrd"])
def test_failed_file_write_leaves_nothing_under_the_final_name(tmp_path: Path, name: str) -> None:
    class Exploding:
        shape, dtype, ndim, nbytes = (200, 64, 64), np.dtype("float32"), 3, 200 * 64 * 64 * 4

        def __getitem__(self, key: object) -> np.ndarray:
            raise OSError("disk full")

        def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_volume(tmp_path / name, Exploding())  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_unknown_writer_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="chunks"):
        write_volume(tmp_path / "v.npy", _data("uint8"), chunks=(4, 4, 4))


def test_detect_format() -> None:
    assert detect_format("a/b.OME.ZARR", must_exist=False) == "zarr"
    assert detect_format("x.seg.nrrd", must_exist=False) == "nrrd"
    assert detect_format("x.h5:/a/b", must_exist=False) == "hdf5"
    assert detect_format("out_slices", must_exist=False) == "tiff"


def test_npy_sidecar_is_optional(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", _data("uint8"))
    assert open_volume(tmp_path / "plain.npy").spacing == (1.0, 1.0, 1.0)
    assert open_volume(tmp_path / "plain.npy", spacing=(2, 2, 2)).spacing == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(("name", "options"), TARGETS, ids=[n for n, _ in TARGETS])
def test_spacing_written_by_meunet_is_known(tmp_path: Path, name: str, options: dict) -> None:
    write_volume(tmp_path / name, _data("uint8", (3, 4, 5)), spacing=SPACING, **options)
    vol = open_volume(tmp_path / name)
    assert vol.spacing_known and vol.spacing == pytest.approx(SPACING)


def _bare_writers() -> dict[str, Callable[[Path, np.ndarray], None]]:
    """Files as other tools write them, without a voxel size (or without the z one)."""
    import nrrd

    def h5(p: Path, a: np.ndarray) -> None:
        with h5py.File(p, "w") as f:
            f.create_dataset("volume", data=a)

    return {
        "plain.npy": lambda p, a: np.save(p, a),
        "plain.tif": lambda p, a: tifffile.imwrite(p, a, photometric="minisblack"),
        "yx_only.tif": lambda p, a: tifffile.imwrite(
            p, a, photometric="minisblack", resolution=(2.0, 2.0)
        ),
        "plain.h5": h5,
        "plain.zarr": lambda p, a: zarr.create_array(p, data=a),
        "plain.nrrd": lambda p, a: nrrd.write(str(p), a),
    }


@pytest.mark.parametrize("name", list(_bare_writers()))
def test_spacing_a_file_does_not_store_is_unknown(tmp_path: Path, name: str) -> None:
    _bare_writers()[name](tmp_path / name, _data("uint8", (3, 4, 5)))
    vol = open_volume(tmp_path / name)
    assert not vol.spacing_known
    assert vol.spacing[0] == 1.0
    assert open_volume(tmp_path / name, spacing=(2, 1, 1)).spacing_known  # dataset.yaml's
