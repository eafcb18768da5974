"""A prediction keeps its input's orientation: it overlays the scan in any viewer.

A label map written as NIfTI has the input's affine, as NRRD its space
directions, as Zarr its spacing, origin and direction; the voxels are the
ones predicted from the raw array (no flip, no transposition). This holds
for one network, a cascade (``cascade.json``) and the conversion of a Zarr
prediction to NIfTI afterwards; ``test_blocks.py`` checks the Dask path.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch

from meunet.cli.main import main
from meunet.data.convert import convert
from meunet.data.io import open_volume, write_volume
from meunet.inference.stream import predict_volume
from meunet.models import create_model, load_model, save_model

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
SHAPE = (20, 18, 17)  # (z, y, x): a flip or a transposition would show
#: BRATS's affine (examples/brats4.yaml): LPS-stored data, diag(-1, -1, 1)
BRATS = np.array([[-1.0, 0, 0, -0.0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, SHAPE).astype(np.float32)
    image[3:12, 2:9, 9:16] += 3  # a bright block off every axis's centre
    return image


def _save(path: Path, extra_channels: int = 0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    name = "cascade-post" if extra_channels else "unet"
    model = create_model(name, in_channels=1, num_classes=3, extra_channels=extra_channels, **TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()(torch.randn(2, 1, 16, 16, 16) * 2 + 1,
                      *([torch.rand(2, extra_channels, 16, 16, 16)] if extra_channels else []))  # fmt: skip
    save_model(path, model.eval(), train_config={"patch": 16})
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("orientation")
    nib.save(nib.Nifti1Image(_image().transpose(2, 1, 0), BRATS), tmp / "scan.nii.gz")
    write_volume(tmp / "raw.zarr", _image())  # the same voxels, no geometry
    model = _save(tmp / "model.pt")
    predict_volume(load_model(model), [open_volume(tmp / "raw.zarr")], tmp / "ref.zarr", 16,
                   progress=False)  # fmt: skip
    return {"dir": tmp, "scan": tmp / "scan.nii.gz", "model": model, "ref": tmp / "ref.zarr"}


def _predict(model: Path, scan: Path, out: Path, *more: str) -> Path:
    argv = ["predict", "--model", str(model), "--input", str(scan), "--output", str(out), "--quiet"]
    assert main([*argv, *more]) == 0
    return out


def _labels_zyx(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)


def test_a_brats_like_prediction_has_its_scans_affine(case: dict, tmp_path: Path) -> None:
    out = _predict(case["model"], case["scan"], tmp_path / "labels.nii.gz", "--patch", "16")
    img, scan = nib.load(out), nib.load(case["scan"])
    np.testing.assert_array_equal(img.header.get_best_affine(), scan.affine)
    np.testing.assert_array_equal(img.get_sform(), scan.affine)
    assert img.header.get_zooms() == scan.header.get_zooms()
    reference = np.asarray(open_volume(case["ref"])[...])
    assert len(np.unique(reference)) > 1  # a test that can see a flip
    np.testing.assert_array_equal(_labels_zyx(out), reference)


def test_a_zarr_prediction_keeps_the_geometry_and_converts_back(case: dict, tmp_path: Path) -> None:
    out = _predict(case["model"], case["scan"], tmp_path / "labels.zarr", "--patch", "16")
    scan, labels = open_volume(case["scan"]), open_volume(out)
    assert labels.geometry() == scan.geometry()
    assert labels.origin == (0.0, 239.0, -0.0)  # not the (0, 0, 0) written before
    convert(out, tmp_path / "labels.nii.gz", progress=False)
    np.testing.assert_array_equal(nib.load(tmp_path / "labels.nii.gz").affine, BRATS)
    np.testing.assert_array_equal(_labels_zyx(tmp_path / "labels.nii.gz"), labels[...])


def test_a_zarr_input_keeps_spacing_and_origin(case: dict, tmp_path: Path) -> None:
    write_volume(tmp_path / "in.zarr", _image(), spacing=(2.0, 0.5, 0.75), origin=(-4.0, 10.5, 3.0))
    out = tmp_path / "labels.zarr"
    predict_volume(load_model(case["model"]), [open_volume(tmp_path / "in.zarr")], out, 16,
                   progress=False)  # fmt: skip
    labels = open_volume(out)
    assert (labels.spacing, labels.origin) == ((2.0, 0.5, 0.75), (-4.0, 10.5, 3.0))


def test_an_nrrd_prediction_keeps_its_space_directions(case: dict, tmp_path: Path) -> None:
    directions = np.array([[0.0, 0.9, 0.0], [-0.8, 0.0, 0.0], [0.0, 0.0, 2.0]])  # x, y swapped
    header = {"space": "left-posterior-superior", "space directions": directions,
              "space origin": np.array([5.5, -6.0, 7.25]), "kinds": ["domain"] * 3}  # fmt: skip
    nrrd.write(str(tmp_path / "scan.nrrd"), _image(), header, index_order="C")
    out = _predict(
        case["model"], tmp_path / "scan.nrrd", tmp_path / "labels.seg.nrrd", "--patch", "16"
    )
    data, written = nrrd.read(str(out), index_order="C")
    assert written["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(written["space directions"], directions)
    np.testing.assert_array_equal(written["space origin"], [5.5, -6.0, 7.25])
    np.testing.assert_array_equal(data, open_volume(case["ref"])[...])


def test_a_cascade_prediction_has_its_scans_affine(case: dict, tmp_path: Path) -> None:
    _save(tmp_path / "stage1.pt", seed=1)
    _save(tmp_path / "stage2.pt", extra_channels=3, seed=2)
    manifest = tmp_path / "cascade.json"
    manifest.write_text(json.dumps({"stage1": [{"checkpoint": "stage1.pt", "patch": 16}],
                                    "stage2": {"checkpoint": "stage2.pt", "patch": 16}}))  # fmt: skip
    out = _predict(manifest, case["scan"], tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(nib.load(out).header.get_best_affine(), BRATS)
    # the voxels are the cascade's on the raw array
    raw = [open_volume(case["dir"] / "raw.zarr")]
    predict_volume(
        load_model(tmp_path / "stage1.pt"), raw, tmp_path / "s1.zarr", 16, progress=False
    )
    predict_volume(load_model(tmp_path / "stage2.pt"), raw, tmp_path / "s2.zarr", 16,
                   [open_volume(tmp_path / "s1.zarr")], progress=False)  # fmt: skip
    np.testing.assert_array_equal(_labels_zyx(out), open_volume(tmp_path / "s2.zarr")[...])
