"""Segment names and an unknown spacing travel from a volume read to a volume written."""

from __future__ import annotations

import json
from pathlib import Path

import nrrd
import numpy as np
import pytest
import zarr

from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume
from meunet.data.io.sidecar import as_segments, segment_table, sidecar_path
from meunet.errors import MeunetError, VolumeError

SEGMENTS = [
    {"name": "liver", "label": 1, "layer": 0},
    {"name": "tumour", "label": 3, "layer": 0},
]


def _slicer_seg(path: Path, layers: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A small Slicer-style ``.seg.nrrd`` written by pynrrd (x fastest, as Slicer writes it)."""
    data = np.zeros((6, 8, 10), np.uint8)  # (z, y, x)
    data[1:3, 2:5, 3:7] = 1
    data[4, 5:7, 1:4] = 3
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.5]),
        "space origin": np.array([-10.0, 5.0, 30.0]),
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
        "Segment0_ID": "Segment_1",
        "Segment0_Name": "liver",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": str(layers[0]),
        "Segment1_ID": "Segment_2",
        "Segment1_Name": "tumour",
        "Segment1_LabelValue": "3",
        "Segment1_Layer": str(layers[1]),
    }
    nrrd.write(str(path), data, header, index_order="C")
    return data


def test_info_shows_segment_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chest.seg.nrrd"
    _slicer_seg(path)
    assert open_volume(path).meta["segments"] == SEGMENTS
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "segments (2, label value: name):\n  1: liver\n  3: tumour\n" in out


def test_info_names_layers_when_there_are_several(tmp_path: Path) -> None:
    path = tmp_path / "chest.seg.nrrd"
    _slicer_seg(path, layers=(0, 1))
    assert segment_table(open_volume(path).meta["segments"]) == [
        "1: liver (layer 0)",
        "3: tumour (layer 1)",
    ]


@pytest.mark.parametrize(
    "suffix", [".zarr", ".ome.zarr", ".nii.gz", ".h5", ".tif", ".npy", ".seg.nrrd", ".nrrd"]
)
def test_convert_carries_segment_names(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "chest.seg.nrrd"
    data = _slicer_seg(src)
    dst = tmp_path / f"labels{suffix}"
    assert main(["convert", str(src), str(dst), "--quiet"]) == 0
    with open_volume(dst) as v:
        assert v.meta["segments"] == SEGMENTS
        np.testing.assert_array_equal(v[...], data)
    if suffix == ".zarr":  # attributes, readable by any Zarr tool
        assert zarr.open_array(str(dst), mode="r").attrs["segments"] == SEGMENTS
    if suffix in (".nii.gz", ".tif", ".npy"):  # no attributes: a JSON sidecar
        assert json.loads(Path(sidecar_path(str(dst))).read_text())["segments"] == SEGMENTS


def test_a_rewritten_volume_drops_a_stale_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "labels.nii.gz"
    write_volume(path, np.zeros((2, 3, 4), np.uint8), segments={1: "a"}, spacing_known=False)
    assert Path(sidecar_path(str(path))).is_file()
    write_volume(path, np.zeros((2, 3, 4), np.uint8))
    assert not Path(sidecar_path(str(path))).exists()
    v = open_volume(path)
    assert v.spacing_known and not v.meta.get("segments")


@pytest.mark.parametrize(
    "suffix", [".zarr", ".ome.zarr", ".nii.gz", ".h5", ".tif", ".npy", ".nrrd"]
)
def test_unknown_spacing_survives_a_write(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "raw.npy"
    np.save(src, np.ones((3, 4, 5), np.float32))  # no sidecar: spacing unknown
    assert not open_volume(src).spacing_known
    dst = tmp_path / f"out{suffix}"
    assert main(["convert", str(src), str(dst), "--quiet"]) == 0
    assert not open_volume(dst).spacing_known
    # a spacing given (convert --spacing, or a spec's spacing:) makes it known
    known = tmp_path / f"known{suffix}"
    assert main(["convert", str(src), str(known), "--spacing", "2", "1", "1", "--quiet"]) == 0
    assert open_volume(known).spacing_known
    assert open_volume(dst, spacing=(2.0, 1.0, 1.0)).spacing_known


def test_segments_forms() -> None:
    assert as_segments({3: "b", 1: "a"}) == [
        {"name": "a", "label": 1, "layer": 0},
        {"name": "b", "label": 3, "layer": 0},
    ]
    assert as_segments(None) == []
    with pytest.raises(VolumeError, match="list of \\{name, label\\}"):
        as_segments([{"name": "a"}])


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif", ".nrrd"])
def test_a_sidecar_meunet_did_not_write_stays_byte_identical(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"labels{suffix}"
    side = Path(sidecar_path(str(path)))
    side.write_text('{"segments": [{"name": "mine", "label": 1}]}')  # the user's own file
    before = side.read_bytes()
    for segments in ({1: "a"}, None):  # rewriting and removing are both refused
        with pytest.raises(MeunetError, match="did not write it"):
            write_volume(path, np.zeros((2, 3, 4), np.uint8), segments=segments)
        assert side.read_bytes() == before and not path.exists()
    write_volume(path, np.zeros((2, 3, 4), np.uint8), segments={1: "a"}, overwrite=True)
    assert open_volume(path).meta["segments"][0]["name"] == "a"
