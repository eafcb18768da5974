"""A region of a volume as a volume, and ``bbox:`` cases in a dataset.yaml (read in place)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meunet.data.check import check_dataset
from meunet.data.identity import dataset_identity, volume_identity
from meunet.data.io import open_volume, split_region, write_volume
from meunet.data.sampling import PatchSampler, SamplerConfig
from meunet.data.spec import load_spec
from meunet.data.volume import as_bbox, region
from meunet.errors import MeunetError, RegionError, SettingError, SpecError

SHAPE = (12, 40, 36)


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    path = tmp_path / "scan.nii.gz"
    # a rotated, anisotropic grid: the region's origin must follow the direction
    direction = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
    write_volume(path, data, spacing=(3.0, 0.5, 0.25), origin=(1.0, 2.0, 3.0), direction=direction)
    return path, data


def test_region_reads_only_its_box(volume: tuple[Path, np.ndarray]) -> None:
    path, data = volume
    vol = open_volume(path)
    box = ((2, 10), (5, 30), (4, 20))
    part = region(vol, box)
    assert part.shape == (8, 25, 16)
    np.testing.assert_array_equal(part[...], data[2:10, 5:30, 4:20])
    np.testing.assert_array_equal(part[1:3, ::2, -4:], data[3:5, 5:30:2, 16:20])
    # the region's first voxel is where voxel (2, 5, 4) of the volume lies
    world = np.asarray(vol.origin) + np.asarray(vol.direction) @ (
        np.array([2, 5, 4]) * np.asarray(vol.spacing)
    )
    assert part.origin == pytest.approx(tuple(world))
    assert (part.spacing, part.direction, part.space) == (vol.spacing, vol.direction, vol.space)
    assert part.path.endswith("scan.nii.gz[2:10,5:30,4:20]")


def test_region_out_of_range(volume: tuple[Path, np.ndarray]) -> None:
    path, _ = volume
    with pytest.raises(RegionError, match="ends at 41 along y, beyond the volume's 40 voxels"):
        region(open_volume(path), ((0, 12), (0, 41), (0, 36)))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([[0, 1], [0, 1]], "three \\[start, stop\\] pairs"),
        ([[0, 1], [0, 1], [0]], "three \\[start, stop\\] pairs"),
        ([[0, 1], [0, 1], [0.5, 2]], "whole numbers|pairs"),
        ([[0, 1], [0, 1], [True, 2]], "pairs"),
        ("0:1,0:1,0:1", "pairs"),
        ([[0, 1], [3, 3], [0, 2]], "along y is \\[3, 3\\]"),
        ([[-1, 1], [0, 1], [0, 2]], "along z"),
    ],
)
def test_bad_boxes_are_refused(value: object, match: str) -> None:
    with pytest.raises(SettingError, match=match):
        as_bbox(value, "bbox")


def test_a_path_names_a_region(volume: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = volume
    assert split_region(f"{path}[0:2, 3:4,5:6]") == (str(path), ((0, 2), (3, 4), (5, 6)))
    assert split_region("a.h5:/raw[0:2,3:4,5:6]") == ("a.h5:/raw", ((0, 2), (3, 4), (5, 6)))
    assert split_region(str(path)) == (str(path), None)
    odd = tmp_path / "slices[0:1,0:1,0:1]"  # a folder of TIFF slices that exists: not a region
    write_volume(odd, data[:2])
    assert split_region(odd) == (str(odd), None)
    assert open_volume(odd).shape == (2, 40, 36)
    with open_volume(f"{path}[1:3,0:40,0:36]") as v:
        np.testing.assert_array_equal(v[...], data[1:3])
    with pytest.raises(RegionError, match="along z"):
        open_volume(f"{path}[0:13,0:40,0:36]")


def test_an_output_is_never_the_file_of_an_input_region(volume: tuple[Path, np.ndarray]) -> None:
    path, _ = volume
    part = open_volume(f"{path}[0:2,0:40,0:36]")
    with pytest.raises(MeunetError, match="is the input"):
        write_volume(path, part, overwrite=True)


def _spec(tmp_path: Path, bbox: str) -> Path:
    data = np.zeros(SHAPE, np.uint8)
    data[:, 20:, :] = 1
    write_volume(tmp_path / "lab.zarr", data, spacing=(2.0, 1.0, 1.0))
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32) + data
    write_volume(tmp_path / "img.zarr", image, spacing=(2.0, 1.0, 1.0))
    f = tmp_path / "dataset.yaml"
    f.write_text(
        "classes: [background, fg]\n"
        "spacing: [4.0, 1.0, 1.0]\n"
        "cases:\n"
        "  whole: {image: img.zarr, label: lab.zarr}\n"
        f"  part: {{image: img.zarr, label: lab.zarr, bbox: {bbox}}}\n"
        "split: {train: [whole], val: [part]}\n"
    )
    return f


def test_spec_bbox_case_reads_its_region(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "[[0, 12], [16, 40], [0, 20]]"))
    case = spec.cases["part"]
    assert case.bbox == ((0, 12), (16, 40), (0, 20))
    assert case.images[0].name == "img.zarr[0:12,16:40,0:20]"
    assert spec.cases["whole"].bbox is None
    with open_volume(case.label, spacing=spec.spacing) as v:
        assert v.shape == (12, 24, 20)
        assert v.spacing == (4.0, 1.0, 1.0)  # the spec's spacing, kept by the region
        assert v.origin == (0.0, 16.0, 0.0)  # the region's first voxel
        assert v[...].sum() == 12 * 20 * 20
    report = check_dataset(spec, progress=False)
    assert report.ok, report.problems
    assert [s.shape for s in report.cases] == [SHAPE, (12, 24, 20)]
    assert report.cases[1].class_counts == [12 * 4 * 20, 12 * 20 * 20]


def test_check_names_an_out_of_range_bbox(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "[[0, 12], [16, 50], [0, 20]]"))  # y has 40 voxels
    report = check_dataset(spec, progress=False)
    assert not report.ok
    assert all(p.case == "part" for p in report.problems)
    assert "beyond the volume's 40 voxels" in str(report.problems[0])
    assert "correct the case's bbox" in str(report.problems[0])


@pytest.mark.parametrize("bbox", ["[[0, 12], [16, 40]]", "[[0, 12], [16, 40], [20, 10]]", "yes"])
def test_spec_refuses_a_bad_bbox(tmp_path: Path, bbox: str) -> None:
    with pytest.raises(SpecError, match="case part: bbox"):
        load_spec(_spec(tmp_path, bbox))


def test_training_sampler_sees_the_region(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "[[0, 12], [16, 40], [0, 20]]"))
    sampler = PatchSampler(spec, ["part"], SamplerConfig(patch=16, bg_keep=1.0))
    assert sampler.shapes == {"part": (12, 24, 20)}


def test_identity_tells_regions_apart(tmp_path: Path) -> None:
    first = dataset_identity(load_spec(_spec(tmp_path, "[[0, 12], [16, 40], [0, 20]]")))
    second = dataset_identity(load_spec(_spec(tmp_path, "[[0, 12], [0, 24], [0, 20]]")))
    assert first["cases_sha256"] != second["cases_sha256"]
    assert all(v is not None for v in first["files"].values())  # the region's file is found
    a = volume_identity(open_volume(f"{tmp_path / 'img.zarr'}[0:12,0:24,0:20]"))
    b = volume_identity(open_volume(f"{tmp_path / 'img.zarr'}[0:12,16:40,0:20]"))
    assert a["files"] == b["files"] and a != b
