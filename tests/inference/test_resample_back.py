"""``predict --resample-back``: predicted at the training voxel size, written on the input's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import meunet
from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume
from meunet.data.resample import resample_volume
from meunet.errors import MeunetError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A U-net of a few short epochs on a small phantom, and the phantom's test image."""
    root = tmp_path_factory.mktemp("resample-back")
    data = meunet.make_phantom_dataset(root / "data", cases=3, shape=(48, 48, 48), progress=False)
    best = meunet.train(
        ROOT / "configs/cpu/unet.yaml", data, root / "run",
        overrides=["optimisation.epochs=6", "sampler.patches_per_epoch=16", "sampler.patch=16"],
        progress=False,
    )  # fmt: skip
    return root, best, meunet.load_spec(data).cases["case_002"].images[0]


def _unknown_spacing(image: Path, folder: Path) -> Path:
    """The test image as a TIFF that stores no voxel size."""
    path = folder / "unknown.tif"
    write_volume(path, np.asarray(open_volume(image)[...]), spacing_known=False)
    return path


def test_the_checkpoint_records_its_training_voxel_size(trained: tuple[Path, Path, Path]) -> None:
    _, best, image = trained
    with open_volume(image) as vol:
        expected = list(vol.spacing)
    assert torch.load(best, weights_only=True)["spacing"] == pytest.approx(expected)


def test_a_finer_scan_is_predicted_at_the_training_voxel_size_and_written_on_its_own_grid(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    fine = tmp_path / "fine.zarr"  # the test image at half the voxel size: 96^3
    resample_volume(image, fine, factor=0.5, progress=False)
    out = meunet.predict(best, fine, tmp_path / "labels.nii.gz", resample_back=True, progress=False)
    with open_volume(fine) as scan, open_volume(out) as labels:
        assert labels.shape == scan.shape == (96, 96, 96)
        assert labels.spacing == pytest.approx(scan.spacing)
        assert labels.origin == pytest.approx(scan.origin)
        got = np.asarray(labels[...])
    # the same network on the original scan, its labels doubled: the round trip of the
    # image through B-splines changes few voxels' labels
    direct = meunet.predict(best, image, tmp_path / "direct.zarr", progress=False)
    doubled = np.asarray(open_volume(direct)[...]).repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert (got == doubled).mean() > 0.95
    assert len(np.unique(got)) > 1  # not a constant map that would agree trivially
    assert not list(tmp_path.glob("*.partial.zarr"))  # the work stores are gone


def test_a_scan_at_the_training_voxel_size_is_predicted_as_without_the_option(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    plain = meunet.predict(best, image, tmp_path / "plain.zarr", progress=False)
    back = meunet.predict(best, image, tmp_path / "back.zarr", resample_back=True, progress=False)
    np.testing.assert_array_equal(open_volume(plain)[...], open_volume(back)[...])


def test_the_command_line_option(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, best, image = trained
    coarse = tmp_path / "coarse.zarr"  # twice the voxel size along z only: 24 x 48 x 48
    resample_volume(image, coarse, factor=(2, 1, 1), progress=False)
    out = tmp_path / "labels.zarr"
    argv = ["predict", "--model", str(best), "--input", str(coarse), "--output", str(out)]
    assert main([*argv, "--resample-back", "--quiet"]) == 0
    assert open_volume(out).shape == (24, 48, 48)
    assert not list(tmp_path.glob("*.partial.zarr"))


def test_an_input_of_unknown_voxel_size_is_refused(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    unknown = _unknown_spacing(image, tmp_path)
    out = tmp_path / "labels.zarr"
    with pytest.raises(MeunetError, match=r"unknown\.tif: its voxel size is unknown"):
        meunet.predict(best, unknown, out, resample_back=True, progress=False)
    assert not out.exists()


def test_a_checkpoint_without_a_training_voxel_size_is_refused(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    old = torch.load(best, weights_only=True)
    del old["spacing"]  # as written by an older meunet
    torch.save(old, tmp_path / "old.pt")
    out = tmp_path / "labels.zarr"
    with pytest.raises(MeunetError, match="records no training voxel size"):
        meunet.predict(tmp_path / "old.pt", image, out, resample_back=True, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".zarr", ".nii.gz"])
def test_labels_of_a_scan_of_unknown_voxel_size_are_marked_unknown_too(
    trained: tuple[Path, Path, Path], tmp_path: Path, suffix: str
) -> None:
    _, best, image = trained
    unknown = _unknown_spacing(image, tmp_path)
    out = meunet.predict(best, unknown, tmp_path / f"labels{suffix}", progress=False)
    assert open_volume(out).spacing_known is False
    known = meunet.predict(best, image, tmp_path / f"known{suffix}", progress=False)
    assert open_volume(known).spacing_known is True


def test_a_given_voxel_size_overrides_the_files_and_reaches_the_labels(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    unknown = _unknown_spacing(image, tmp_path)
    out = meunet.predict(best, unknown, tmp_path / "a.nii.gz", spacing=(2, 1, 1), progress=False)
    labels = open_volume(out)
    assert labels.spacing == pytest.approx((2, 1, 1)) and labels.spacing_known
    spec = tmp_path / "dataset.yaml"  # the command line takes it from a spec's `spacing:` too
    spec.write_text(
        "classes: [background, a, b]\nchannels: [ct]\nspacing: [3, 1, 1]\n"
        f"cases: {{x: {{image: {unknown.name}}}}}\n"
    )
    argv = ["predict", "--model", str(best), "--input", str(unknown), "--quiet"]
    assert main([*argv, "--output", str(tmp_path / "b.zarr"), "--data", str(spec)]) == 0
    assert open_volume(tmp_path / "b.zarr").spacing == pytest.approx((3, 1, 1))
    assert main([*argv, "--output", str(tmp_path / "c.zarr"), "--spacing", "4", "1", "1"]) == 0
    assert open_volume(tmp_path / "c.zarr").spacing == pytest.approx((4, 1, 1))
    with pytest.raises(MeunetError, match="spacing with a Dask executor"):
        meunet.predict(best, unknown, tmp_path / "d.zarr", spacing=(2, 1, 1), executor="dask")


def test_resample_back_uses_a_given_voxel_size(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    trained_at = torch.load(best, weights_only=True)["spacing"]
    unknown = _unknown_spacing(image, tmp_path)
    half = tuple(s / 2 for s in trained_at)  # said to be twice as fine: predicted at 24^3
    out = meunet.predict(
        best, unknown, tmp_path / "l.zarr", spacing=half, resample_back=True, progress=False
    )
    labels = open_volume(out)
    assert labels.shape == (48, 48, 48) and labels.spacing == pytest.approx(half)


def test_stage1_maps_are_refused_with_resample_back(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, best, image = trained
    out = tmp_path / "labels.zarr"
    with pytest.raises(MeunetError, match="--stage1 maps lie on the scan's grid"):
        meunet.predict(best, image, out, stage1=(image,), resample_back=True, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("name", ["labels.zarr", "labels.zarr.input0.partial.zarr"])
def test_a_path_meunet_did_not_write_stays_byte_identical(
    trained: tuple[Path, Path, Path], tmp_path: Path, name: str
) -> None:
    _, best, image = trained
    fine = tmp_path / "fine.zarr"
    resample_volume(image, fine, factor=0.5, progress=False)
    theirs = tmp_path / name  # the output, or a work store's name, is a user's folder
    theirs.mkdir()
    (theirs / "notes.txt").write_bytes(b"the user's\n")
    with pytest.raises(MeunetError, match="meunet did not write"):
        meunet.predict(best, fine, tmp_path / "labels.zarr", resample_back=True, progress=False)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    assert (theirs / "notes.txt").read_bytes() == b"the user's\n"
