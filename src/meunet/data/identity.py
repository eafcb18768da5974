"""What a file, a volume or a dataset is, so that a rerun knows whether it may resume.

A resumable prediction output and a training checkpoint record the identity
of what they were made from; a rerun computes it again and compares. It has
to be cheap on inputs of hundreds of gigabytes, so it reads no file whole:

- every file's size and modification time (every chunk of a Zarr store, every
  slice of a TIFF folder), hashed into one digest;
- a checksum of a few small crops of voxels, which catches a file replaced by
  a copy that kept its size and timestamps;
- for a volume meunet predicted itself (a stage-1 map), the signature it was
  written under: rewriting the same prediction changes its timestamps, not
  what it is.

Example:
    >>> volume_identity(open_volume("scan.zarr"))  # doctest: +SKIP
    {'files': '5d1c...', 'sample': '9f0e...'}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meunet.data.io import split_hdf5_path, split_region
from meunet.data.spec import DatasetSpec
from meunet.data.volume import Volume

SAMPLE_SIDE = 16  # side of each (1, side, side) crop the sample checksum reads


def file_identity(path: str | Path) -> str | None:
    """Digest of the size and modification time of every file at ``path``; None if absent.

    ``path`` is a file or a folder (walked entirely, names relative to it);
    ``file.h5:/dataset`` stands for ``file.h5``, and a region
    ``scan.zarr[0:20,0:64,0:64]`` for ``scan.zarr``.
    """
    root = split_hdf5_path(split_region(str(path))[0])[0].rstrip("/") or "/"
    entries: list[tuple[str, int, int]] = []
    if os.path.isfile(root):
        st = os.stat(root)
        entries.append((".", st.st_size, st.st_mtime_ns))
    elif os.path.isdir(root):
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(folder, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:  # removed while walking: it is not part of the input
                    continue
                entries.append((os.path.relpath(full, root), st.st_size, st.st_mtime_ns))
    else:
        return None
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def sample_checksum(vol: Volume) -> str:
    """Checksum of a few small crops of ``vol``: the middle of slices at 1/4, 1/2 and 3/4 of z.

    A volume that cannot be read at random (gzip) gives only the middle crop,
    so that the checksum costs at most one partial pass over the file.
    """
    nz, ny, nx = vol.shape
    zs = sorted({nz // 4, nz // 2, (3 * nz) // 4}) if vol.lazy else [nz // 2]
    y0, x0 = max(0, ny // 2 - SAMPLE_SIDE // 2), max(0, nx // 2 - SAMPLE_SIDE // 2)
    h = hashlib.sha256(str(vol.dtype).encode())
    for z in zs:
        crop = vol[z : z + 1, y0 : y0 + SAMPLE_SIDE, x0 : x0 + SAMPLE_SIDE]
        h.update(np.ascontiguousarray(crop).tobytes())
    return h.hexdigest()


def _meunet_signature(vol: Volume) -> str | None:
    """The signature of a finished meunet prediction stored as Zarr, else None."""
    if vol.format != "zarr":
        return None
    try:
        import zarr

        state = dict(zarr.open_array(vol.path, mode="r").attrs).get("meunet", {})
    except Exception:  # a group (OME-Zarr) or not ours: no signature
        return None
    sig = state.get("signature") if state.get("complete") else None
    return sig if isinstance(sig, str) else None


def volume_identity(vol: Volume) -> dict[str, Any]:
    """The identity of a volume's content: its files' listing and a sample of voxels.

    A finished meunet prediction is identified by its signature instead. A
    volume without files of its own (a view of part of another) has only the
    sample checksum; a region (``scan.zarr[0:20,0:64,0:64]``) adds its box.
    """
    sig = _meunet_signature(vol)
    if sig is not None:
        return {"meunet": sig}
    found = {"files": file_identity(vol.path), "sample": sample_checksum(vol)}
    box = split_region(vol.path)[1]
    return found if box is None else {**found, "region": [list(pair) for pair in box]}


def dataset_identity(
    spec: DatasetSpec, extra: Mapping[str, Sequence[str | Path]] | None = None
) -> dict[str, Any]:
    """What a training run learns from: the spec, its cases and split, and each case file.

    Args:
        spec: The dataset.
        extra: Stage-1 maps per case (stage 2 of a cascade).

    Returns:
        ``spec`` (the YAML's resolved path), ``spec_sha256`` (its bytes),
        ``cases_sha256`` (classes, channels, label map, spacing, every case's
        paths relative to the root, split and folds) and ``files`` (path
        relative to the root -> digest of its size and modification time).
        Only the last two decide whether two datasets are the same: a moved
        or re-commented dataset.yaml that lists the same files is the same
        dataset.
    """
    root = Path(spec.root)

    def rel(p: str | Path) -> str:
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return str(p)

    cases = {
        cid: {
            "images": [rel(p) for p in case.images],
            "label": rel(case.label) if case.label else None,
        }
        for cid, case in spec.cases.items()
    }
    described = {
        "classes": list(spec.classes),
        "channels": list(spec.channels),
        "label_map": sorted((float(k), int(v)) for k, v in spec.label_map.items()),
        "spacing": list(spec.spacing) if spec.spacing else None,
        "cases": cases,
        "split": {k: list(v) for k, v in sorted(spec.split.items())},
        "folds": [list(f) for f in spec.folds],
        "extra": {cid: [rel(p) for p in paths] for cid, paths in sorted((extra or {}).items())},
    }
    files: dict[str, str | None] = {}
    for case in spec.cases.values():
        for p in [*case.images, *([case.label] if case.label else [])]:
            files[rel(p)] = file_identity(p)
    for paths in (extra or {}).values():
        for p in paths:
            files[rel(p)] = file_identity(p)
    spec_path = Path(spec.path)
    try:
        spec_sha = hashlib.sha256(spec_path.read_bytes()).hexdigest()
    except OSError:
        spec_sha = None
    return {
        "spec": str(spec_path.resolve()),
        "spec_sha256": spec_sha,
        "cases_sha256": hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest(),
        "files": files,
    }


def dataset_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two :func:`dataset_identity` records, for a message (empty: the same)."""
    changes = []
    if old.get("cases_sha256") != new.get("cases_sha256"):
        changes.append("its cases, split, classes, channels or label map differ")
    old_files, new_files = old.get("files", {}), new.get("files", {})
    changed = sorted(
        k for k in set(old_files) | set(new_files) if old_files.get(k) != new_files.get(k)
    )
    if changed:
        shown = ", ".join(changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        changes.append(f"files were added, removed or modified since: {shown}")
    return changes


def training_spacing(spec: DatasetSpec, case_ids: Sequence[str]) -> list[float] | None:
    """The (z, y, x) voxel size a network trained on ``case_ids`` expects.

    The spec's ``spacing`` where it sets one; else the median per axis of the
    cases' first images' spacing (equal for most datasets). None where any of
    those files stores no voxel size: such a network cannot say at what
    resolution it should be used.
    """
    from meunet.data.io import open_volume

    if spec.spacing is not None:
        return [float(s) for s in spec.spacing]
    found = []
    for cid in case_ids:
        with open_volume(spec.cases[cid].images[0]) as vol:
            if not vol.spacing_known:
                return None
            found.append(vol.spacing)
    return [float(s) for s in np.median(np.asarray(found, float), axis=0)] if found else None
