"""OME-Zarr output: NGFF multiscales with units, scale = spacing and translation = origin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from meunet.data.io import open_volume, write_volume


@pytest.mark.parametrize(
    "zarr_format, space, unit",
    [(3, "", "micrometer"), (2, "", "micrometer"), (3, "RAS", "millimeter")],
)
def test_ome_zarr_metadata_reads_back(
    tmp_path: Path, zarr_format: int, space: str, unit: str
) -> None:
    path = tmp_path / "v.ome.zarr"
    data = np.arange(8 * 6 * 4, dtype=np.uint8).reshape(8, 6, 4)
    write_volume(path, data, spacing=(3.0, 1.5, 0.5), origin=(0.0, 0.0, 0.0), space=space,
                 zarr_format=zarr_format)  # fmt: skip
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    if zarr_format == 3:
        assert attrs["ome"]["version"] == "0.5"
        ms = attrs["ome"]["multiscales"][0]
    else:
        ms = attrs["multiscales"][0]
        assert ms["version"] == "0.4"
    assert ms["axes"] == [{"name": n, "type": "space", "unit": unit} for n in "zyx"]
    level = ms["datasets"][0]
    assert level["path"] == "0"
    assert level["coordinateTransformations"] == [
        {"type": "scale", "scale": [3.0, 1.5, 0.5]},
        {"type": "translation", "translation": [0.0, 0.0, 0.0]},  # written even at the origin
    ]
    vol = open_volume(path)
    assert tuple(vol.spacing) == (3.0, 1.5, 0.5)
    np.testing.assert_array_equal(vol[...], data)
