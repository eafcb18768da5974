"""Downsampled copies of a dataset, for the low-resolution cascade's stage 1.

Images are resampled with cubic B-splines, labels with nearest neighbour
(``../shared/DESIGN.md`` 1.4). Each case is resampled in memory: fine for the
volumes a low-resolution stage is meant for; the copy is written once and
reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage
from tqdm.auto import tqdm

from meunet.data.io import open_volume, write_volume
from meunet.data.spec import DatasetSpec, load_spec


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Cubic B-spline resampling to ``ceil(n / factor)`` voxels per axis."""
    target = [-(-n // factor) for n in image.shape]
    zoom = [t / n for t, n in zip(target, image.shape, strict=True)]
    return ndimage.zoom(image.astype(np.float32), zoom, order=3, mode="nearest", grid_mode=True)


def downsample_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour onto the grid of :func:`downsample_image` (``ceil(n / factor)`` per axis).

    Output voxel i takes the input voxel under its centre, ``(i + 1/2) n / ceil(n / factor)``:
    for a size divisible by ``factor``, the voxel at the centre of each factor^3 block.
    """
    index = [
        np.minimum(
            ((np.arange(-(-n // factor)) + 0.5) * n / -(-n // factor)).astype(np.intp), n - 1
        )
        for n in labels.shape
    ]
    return np.ascontiguousarray(labels[np.ix_(*index)])


def upsample_labels(labels: np.ndarray, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour back to ``shape`` (the inverse grid of :func:`downsample_labels`)."""
    up = labels.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
    out = np.zeros(shape, labels.dtype)
    z, y, x = (min(a, b) for a, b in zip(shape, up.shape, strict=True))
    out[:z, :y, :x] = up[:z, :y, :x]
    return out


def downsampled_dataset(
    spec: DatasetSpec, factor: int, out_dir: str | Path, progress: bool = True
) -> DatasetSpec:
    """Write (once) and return a copy of ``spec`` downsampled by ``factor``; labels hold class indices."""
    out = Path(out_dir)
    yaml_path = out / "dataset.yaml"
    if yaml_path.is_file():
        return dataclasses.replace(load_spec(yaml_path), split=spec.split, folds=spec.folds)
    cases = {}
    for cid, case in tqdm(
        spec.cases.items(), desc=f"downsample x{factor}", disable=not progress, leave=False
    ):
        images = []
        for i, path in enumerate(case.images):
            vol = open_volume(path, spacing=spec.spacing)
            name = f"{cid}/image_{i}.zarr"
            spacing = tuple(s * factor for s in vol.spacing)
            write_volume(out / name, downsample_image(vol[...], factor), spacing=spacing)
            images.append(name)
        entry: dict[str, object] = {"image": images}
        if case.label is not None:
            label = spec.remap_labels(open_volume(case.label)[...], str(case.label))
            write_volume(
                out / f"{cid}/label.zarr", downsample_labels(label, factor), spacing=spacing
            )
            entry["label"] = f"{cid}/label.zarr"
        cases[cid] = entry
    raw = {
        "name": f"{spec.name}-x{factor}",
        "description": f"{spec.name} downsampled by {factor} (images cubic B-spline, labels nearest)",
        "classes": list(spec.classes),
        "channels": list(spec.channels),
        "cases": cases,  # no split: the copy caches volumes, the caller's spec keeps the split
    }
    tmp = out / ".dataset.yaml.partial"
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(yaml_path)  # written last: its presence means the copy is complete
    return dataclasses.replace(load_spec(yaml_path), split=spec.split, folds=spec.folds)
