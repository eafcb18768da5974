"""Per-volume statistics: slabs reduced in several threads give the serial result exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meunet.data import normalise
from meunet.data.io import open_volume, write_volume
from meunet.errors import VolumeError


@pytest.mark.parametrize("suffix", [".zarr", ".npy", ".nii.gz"])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint8", "float32"])
def test_threaded_statistics_equal_the_serial_ones_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, dtype: str
) -> None:
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 300.0, (37, 20, 24)) + 50 * np.arange(37)[:, None, None]
    if dtype == "int16":
        data -= 1500  # negative values too
    data = (data / 20 if dtype == "uint8" else data).astype(dtype)
    chunks = {"chunks": (2, 20, 24)} if suffix == ".zarr" else {}
    write_volume(tmp_path / f"v{suffix}", data, **chunks)
    vol = open_volume(tmp_path / f"v{suffix}")
    # slabs of 3 slices (2 in the Zarr store: whole z-chunks), float pieces of 1
    monkeypatch.setattr(normalise, "READ_BYTES", 3 * 20 * 24 * data.itemsize)
    monkeypatch.setattr(normalise, "STREAM_BYTES", 20 * 24 * 8)
    seen: list[int] = []
    monkeypatch.setattr(normalise, "STATS_THREADS", 1)
    serial = normalise.channel_stats(vol)
    monkeypatch.setattr(normalise, "STATS_THREADS", 4)
    threaded = normalise.channel_stats(vol, advance=seen.append)
    assert threaded == serial  # merged in z order: not a bit apart
    assert sum(seen) == 37 and set(seen[:-1]) == ({2} if suffix == ".zarr" else {3})
    x = data.astype(np.float64)
    assert threaded == pytest.approx((x.mean(), x.std()), rel=1e-12)


def test_a_nan_in_a_slab_read_by_a_thread_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.ones((12, 8, 8), np.float32)
    data[9, 3, 3] = np.nan
    write_volume(tmp_path / "v.zarr", data)
    monkeypatch.setattr(normalise, "READ_BYTES", 2 * 8 * 8 * 4)
    with pytest.raises(VolumeError, match=r"v\.zarr: image holds NaN"):
        normalise.channel_stats(open_volume(tmp_path / "v.zarr"))
