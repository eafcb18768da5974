"""Cutting one labelled volume into cases: ``meunet split-volume`` and ``meunet crop``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from meunet.cli.main import main
from meunet.data.check import check_dataset
from meunet.data.io import open_volume, write_volume
from meunet.data.spec import load_spec
from meunet.data.split import (
    Region,
    assign_splits,
    check_regions,
    cut_volume,
    grid_regions,
    label_classes,
    parse_box,
    parse_region,
    read_regions,
)
from meunet.errors import MeunetError, RegionError, SettingError, SpecError, VolumeError

SHAPE = (20, 64, 48)  # a thin stack: 20 slices, anisotropic
SPACING = (50.0, 4.6, 4.6)


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    for y0 in (0, 32):
        for x0 in (0, 24):
            lab[:, y0 + 4 : y0 + 12, x0 + 4 : x0 + 10] = 2  # every block has both classes
            lab[2:18, y0 + 16 : y0 + 28, x0 + 12 : x0 + 22] = 5
    return lab


@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lab = _labels()
    img = (rng.normal(size=SHAPE) + 3 * (lab > 0)).astype(np.float32)
    write_volume(tmp_path / "img.zarr", img, spacing=SPACING, origin=(10.0, 20.0, 30.0))
    write_volume(
        tmp_path / "lab.zarr",
        lab,
        spacing=SPACING,
        origin=(10.0, 20.0, 30.0),
        segments={2: "mito", 5: "membrane"},
    )
    return tmp_path / "img.zarr", tmp_path / "lab.zarr", img, lab


# ---------------------------------------------------------------------------
# regions


def test_grid_regions_by_hand() -> None:
    regions = grid_regions((20, 10, 7), (1, 2, 2), min_size=3)
    assert [r.name for r in regions] == ["z0_y0_x0", "z0_y0_x1", "z0_y1_x0", "z0_y1_x1"]
    assert [r.box for r in regions] == [
        ((0, 20), (0, 5), (0, 4)),  # 7 / 2: 3.5 rounds to 4 (to even), sizes differ by one
        ((0, 20), (0, 5), (4, 7)),
        ((0, 20), (5, 10), (0, 4)),
        ((0, 20), (5, 10), (4, 7)),
    ]


def test_grid_regions_tile_the_volume() -> None:
    seen = np.zeros((20, 61, 47), int)
    for r in grid_regions(seen.shape, (1, 3, 2)):
        seen[tuple(slice(a, b) for a, b in r.box)] += 1
    assert (seen == 1).all()


@pytest.mark.parametrize(
    ("blocks", "match"),
    [((2, 1, 1), "along z would be 10 voxels thick.*at most 1 block"), ((1, 1, 0), ">= 1")],
)
def test_grid_regions_refuse_thin_blocks(blocks: tuple[int, int, int], match: str) -> None:
    with pytest.raises(SettingError, match=match):
        grid_regions(SHAPE, blocks, min_size=16)


def test_parse_box_and_region() -> None:
    assert parse_box(" 0:20, 0:32 ,24:48") == ((0, 20), (0, 32), (24, 48))
    assert parse_region("left=0:20,0:64,0:24") == Region("left", ((0, 20), (0, 64), (0, 24)))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("left", "NAME=Z0:Z1"),
        ("left=0:20,0:64", "Z0:Z1,Y0:Y1,X0:X1"),
        ("left=0:20,10:5,0:4", "along y is \\[10, 5\\]"),
        ("a/b=0:20,0:64,0:24", "region name"),
    ],
)
def test_bad_regions_are_refused(text: str, match: str) -> None:
    with pytest.raises(SettingError, match=match):
        parse_region(text)


def test_read_regions(tmp_path: Path) -> None:
    f = tmp_path / "regions.yaml"
    f.write_text(
        "regions:\n  left: [[0, 20], [0, 64], [0, 24]]\n"
        "  right: {bbox: [[0, 20], [0, 64], [24, 48]], split: val}\n"
    )
    assert read_regions(f) == [
        Region("left", ((0, 20), (0, 64), (0, 24))),
        Region("right", ((0, 20), (0, 64), (24, 48)), "val"),
    ]
    f.write_text("regions: {left: [[0, 20], [0, 64]]}\n")
    with pytest.raises(SpecError, match="three \\[start, stop\\] pairs"):
        read_regions(f)
    f.write_text("left: [[0, 20], [0, 64], [0, 24]]\n")
    with pytest.raises(SpecError, match="'regions:'"):
        read_regions(f)


def test_check_regions() -> None:
    whole_z = Region("a", ((0, 20), (0, 32), (0, 24)))  # z is thin, but spanned whole
    assert check_regions([whole_z], SHAPE, min_size=16) == []
    with pytest.raises(RegionError, match="ends at 70 along y, beyond the volume's 64"):
        check_regions([Region("a", ((0, 20), (0, 70), (0, 24)))], SHAPE)
    with pytest.raises(SettingError, match="8 voxels along z \\(0:8\\), below the minimum 16"):
        check_regions([Region("a", ((0, 8), (0, 32), (0, 24)))], SHAPE)
    with pytest.raises(SettingError, match="named twice"):
        check_regions([whole_z, whole_z], SHAPE)
    other = Region("b", ((0, 20), (16, 48), (0, 24)))
    assert check_regions([whole_z, other], SHAPE) == ["regions a and b overlap"]


def test_assign_splits() -> None:
    regions = [Region(n, ((0, 1),) * 3) for n in "abcd"]
    assert assign_splits(regions) == {"train": ["a", "b", "c"], "val": ["d"], "test": []}
    assert assign_splits(regions, val=["a"], test=["b"]) == {
        "train": ["c", "d"],
        "val": ["a"],
        "test": ["b"],
    }
    assert assign_splits(regions[:1]) == {"train": ["a"], "val": [], "test": []}
    with pytest.raises(SettingError, match="not regions"):
        assign_splits(regions, val=["e"])
    with pytest.raises(SettingError, match="both to --val and to --test"):
        assign_splits(regions, val=["a"], test=["a"])


def test_label_classes(tmp_path: Path) -> None:
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[0, 0, :3] = [1, 2, 7]
    write_volume(tmp_path / "a.zarr", lab, segments={7: "nucleus"})
    vol = open_volume(tmp_path / "a.zarr")
    assert label_classes(vol, progress=False) == (
        ["background", "class1", "class2", "nucleus"],
        {0: "background", 1: "class1", 2: "class2", 7: "nucleus"},
    )
    lab[0, 0, 2] = 3
    write_volume(tmp_path / "b.zarr", lab)
    vol = open_volume(tmp_path / "b.zarr")
    assert label_classes(vol, progress=False) == (
        ["background", "class1", "class2", "class3"],
        None,
    )
    assert label_classes(vol, ["bg", "a", "b", "c"], progress=False) == (
        ["bg", "a", "b", "c"],
        None,
    )
    with pytest.raises(SettingError, match="names only 3 classes"):
        label_classes(vol, ["bg", "a", "b"], progress=False)
    write_volume(tmp_path / "f.zarr", lab.astype(np.float32) + 0.5)
    with pytest.raises(VolumeError, match="not whole numbers"):
        label_classes(open_volume(tmp_path / "f.zarr"), progress=False)


# ---------------------------------------------------------------------------
# cutting


def test_split_volume_writes_cases_that_check_accepts(stack: tuple) -> None:
    img_path, lab_path, img, lab = stack
    out = img_path.parent / "cases"
    regions = grid_regions(SHAPE, (1, 2, 2))
    path, warnings = cut_volume([img_path], lab_path, out, regions, progress=False)
    assert warnings == []
    spec = load_spec(path)
    assert spec.classes == ("background", "mito", "membrane")
    assert spec.split == {
        "train": ("z0_y0_x0", "z0_y0_x1", "z0_y1_x0"),
        "val": ("z0_y1_x1",),
        "test": (),
    }
    report = check_dataset(spec, progress=False)
    assert report.ok, report.problems
    case = spec.cases["z0_y1_x1"]
    (image,), label = case.images, case.label
    assert image == out / "z0_y1_x1" / "image.zarr"
    with open_volume(image) as a, open_volume(label) as b:
        np.testing.assert_array_equal(a[...], img[:, 32:, 24:])
        np.testing.assert_array_equal(b[...], lab[:, 32:, 24:])
        assert a.spacing == SPACING
        # the first voxel of the block keeps its place in the world
        assert a.origin == pytest.approx((10.0, 20.0 + 32 * 4.6, 30.0 + 24 * 4.6))
        assert b.meta["segments"][0]["name"] == "mito"


def test_no_copy_writes_bbox_cases(stack: tuple) -> None:
    img_path, lab_path, img, _ = stack
    out = img_path.parent / "spec-only"
    regions = [parse_region("left=0:20,0:64,0:24"), parse_region("right=0:20,0:64,24:48")]
    path, _ = cut_volume([img_path], lab_path, out, regions, copy=False, progress=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["dataset.yaml"]
    raw = yaml.safe_load(path.read_text())
    assert raw["cases"]["right"] == {
        "image": ["../img.zarr"],
        "label": "../lab.zarr",
        "bbox": [[0, 20], [0, 64], [24, 48]],
    }
    spec = load_spec(path)
    assert check_dataset(spec, progress=False).ok
    with open_volume(spec.cases["right"].images[0]) as v:
        np.testing.assert_array_equal(v[...], img[:, :, 24:])


def test_cut_refuses_mismatched_shapes(stack: tuple) -> None:
    img_path, _, _, lab = stack
    small = img_path.parent / "small.zarr"
    write_volume(small, lab[:, :, :40])
    with pytest.raises(VolumeError, match=r"label shape \(20, 64, 40\) differs from image shape"):
        cut_volume([img_path], small, img_path.parent / "out", grid_regions(SHAPE, (1, 1, 2)))
    assert not (img_path.parent / "out").exists()


def test_cut_refuses_a_foreign_folder_and_replaces_its_own(stack: tuple) -> None:
    img_path, lab_path, _, _ = stack
    out = img_path.parent / "cases"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    regions = grid_regions(SHAPE, (1, 2, 1))
    with pytest.raises(MeunetError, match="meunet did not write"):
        cut_volume([img_path], lab_path, out, regions, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    cut_volume([img_path], lab_path, out, regions, progress=False, overwrite=True)
    cut_volume([img_path], lab_path, out, grid_regions(SHAPE, (1, 1, 2)), progress=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "dataset.yaml",
        "z0_y0_x0",
        "z0_y0_x1",  # the first cut's z0_y1_x0 is gone: a rerun replaces the folder whole
    ]
    with pytest.raises(MeunetError, match="input"):  # never into an input
        cut_volume([img_path], lab_path, img_path.parent, regions, progress=False)


def test_two_channels_to_nifti(stack: tuple) -> None:
    img_path, lab_path, img, _ = stack
    out = img_path.parent / "nifti"
    path, _ = cut_volume(
        [img_path, img_path],
        lab_path,
        out,
        grid_regions(SHAPE, (1, 1, 2)),
        fmt="nii.gz",
        channels=["em", "em2"],
        progress=False,
    )
    spec = load_spec(path)
    assert spec.channels == ("em", "em2")
    assert [p.name for p in spec.cases["z0_y0_x1"].images] == ["image_0.nii.gz", "image_1.nii.gz"]
    with open_volume(spec.cases["z0_y0_x1"].images[1]) as v:
        np.testing.assert_allclose(v[...], img[:, :, 24:])
    assert check_dataset(spec, progress=False).ok


def test_cli_split_volume_and_crop(stack: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    img_path, lab_path, _, _ = stack
    out = img_path.parent / "cli"
    argv = ["--image", str(img_path), "--label", str(lab_path), "--quiet"]
    assert main(["split-volume", *argv, "--out", str(out), "--blocks", "1", "2", "2"]) == 0
    assert "wrote 4 case(s)" in capsys.readouterr().out
    assert main(["check", str(out / "dataset.yaml"), "--quiet"]) == 0
    regions = img_path.parent / "regions.yaml"
    regions.write_text("regions:\n  top: [[0, 20], [0, 32], [0, 48]]\n")
    crop = ["crop", *argv, "--out", str(img_path.parent / "crop")]
    assert main([*crop, "--regions", str(regions), "--region", "bottom=0:20,32:64,0:48"]) == 0
    spec = load_spec(img_path.parent / "crop" / "dataset.yaml")
    assert spec.split["val"] == ("bottom",)
    capsys.readouterr()
    assert main([*crop, "--region", "far=0:20,0:64,0:99"]) == 2
    assert "beyond the volume's 48 voxels" in capsys.readouterr().err
    assert main([*crop]) == 2
    assert "give the regions to cut" in capsys.readouterr().err
    assert main(["split-volume", *argv, "--out", str(out), "--blocks", "4", "1", "1"]) == 2
    assert "below the minimum 16" in capsys.readouterr().err
