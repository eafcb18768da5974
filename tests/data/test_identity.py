"""Content identity of files, volumes and datasets: what decides whether a run may resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from meunet.data.identity import (
    dataset_changes,
    dataset_identity,
    file_identity,
    volume_identity,
)
from meunet.data.io import open_volume, write_volume
from meunet.data.spec import load_spec


def test_file_identity_follows_size_and_mtime_of_every_file(tmp_path: Path) -> None:
    f = tmp_path / "a.npy"
    np.save(f, np.zeros((4, 4, 4), np.float32))
    first = file_identity(f)
    assert first == file_identity(f)
    h5 = tmp_path / "x.h5"
    h5.write_bytes(b"not read")
    assert file_identity(f"{h5}:/group/data") == file_identity(h5) is not None
    os.utime(f, ns=(1, 1))
    assert file_identity(f) != first
    assert file_identity(tmp_path / "missing.npy") is None
    store = tmp_path / "v.zarr"
    write_volume(store, np.zeros((8, 8, 8), np.uint8), chunks=(4, 8, 8))
    listing = file_identity(store)
    chunk = next(p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json")
    t = chunk.stat().st_mtime_ns
    os.utime(chunk, ns=(t + 1, t + 1))  # one chunk touched
    assert file_identity(store) != listing
    assert file_identity(f"{store}/") == file_identity(store)


def test_volume_identity_sees_new_content_behind_old_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "scan.zarr"
    data = np.arange(16 * 20 * 20, dtype=np.float32).reshape(16, 20, 20)
    write_volume(path, data, chunks=(4, 20, 20), compressors=None)
    before = volume_identity(open_volume(path))
    assert before == volume_identity(open_volume(path))
    times = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    shutil.rmtree(path)
    write_volume(path, data + 1, chunks=(4, 20, 20), compressors=None)
    for p, t in times.items():
        os.utime(p, ns=(t, t))
    after = volume_identity(open_volume(path))
    assert after["files"] == before["files"] and after["sample"] != before["sample"]


def _dataset(root: Path) -> Path:
    for cid in ("c0", "c1"):
        write_volume(root / f"{cid}.npy", np.zeros((8, 8, 8), np.float32))
        write_volume(root / f"{cid}_lab.npy", np.zeros((8, 8, 8), np.uint8))
    spec = {
        "name": "t",
        "classes": ["background", "fg"],
        "channels": ["ct"],
        "cases": {c: {"image": f"{c}.npy", "label": f"{c}_lab.npy"} for c in ("c0", "c1")},
        "split": {"train": ["c0"], "val": ["c1"]},
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root / "dataset.yaml"


def test_dataset_identity_names_what_changed(tmp_path: Path) -> None:
    yml = _dataset(tmp_path)
    first = dataset_identity(load_spec(yml))
    assert first["spec"] == str(yml.resolve()) and dataset_changes(first, first) == []
    # a re-commented copy of the same spec beside it lists the same files: the same dataset
    copy = tmp_path / "copy.yaml"
    copy.write_text("# a comment\n" + yml.read_text())
    same = dataset_identity(load_spec(copy))
    assert same["spec_sha256"] != first["spec_sha256"] and dataset_changes(first, same) == []
    # another split
    raw = yaml.safe_load(yml.read_text())
    raw["split"] = {"train": ["c1"], "val": ["c0"]}
    copy.write_text(yaml.safe_dump(raw))
    assert dataset_changes(first, dataset_identity(load_spec(copy))) == [
        "its cases, split, classes, channels or label map differ"
    ]
    # a case file rewritten
    write_volume(tmp_path / "c1_lab.npy", np.ones((8, 8, 8), np.uint8))
    (change,) = dataset_changes(first, dataset_identity(load_spec(yml)))
    assert change == "files were added, removed or modified since: c1_lab.npy"
