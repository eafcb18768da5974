"""Writing phantom cases to disk and the dataset.yaml that describes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from meunet.data.io import ZarrSlabWriter, detect_format, write_volume
from meunet.data.io.ownership import OutputLock, make_folder
from meunet.data.phantom.config import CLASSES, PhantomConfig
from meunet.data.phantom.geometry import check_seed
from meunet.data.phantom.render import render_case
from meunet.errors import SettingError

MAX_IN_MEMORY_BYTES = 512 << 20  # image + label a non-Zarr output may hold in memory


def write_case(
    cfg: PhantomConfig,
    seed: int,
    case: int,
    image_path: str | Path,
    label_path: str | Path,
    slab: int = 32,
    progress: bool = False,
) -> dict[str, int]:
    """Write one case to disk and count its voxels per class.

    Zarr outputs are streamed slab by slab (memory bounded whatever the
    shape); other formats are rendered whole, then written, and are refused
    above ``MAX_IN_MEMORY_BYTES``.

    Args:
        cfg: Phantom configuration.
        seed: Dataset seed.
        case: Case index.
        image_path: Image output; the format follows the suffix.
        label_path: Label output.
        slab: Slices rendered at a time.
        progress: Show a progress bar over slabs.

    Returns:
        Voxel count per class name.
    """
    from tqdm.auto import tqdm

    if slab < 1:
        raise ValueError(f"slab must be at least 1 slice, got {slab}")
    nz, ny, nx = cfg.shape
    counts = np.zeros(len(CLASSES), dtype=np.int64)
    zarr_out = [detect_format(p, must_exist=False) == "zarr" for p in (image_path, label_path)]
    if not all(zarr_out):
        need = nz * ny * nx * 3
        if need > MAX_IN_MEMORY_BYTES:
            raise SettingError(
                f"phantom case of shape {cfg.shape} needs {need / 2**20:.0f} MiB in memory to write "
                f"{image_path} and {label_path}; write .zarr outputs instead, which are streamed "
                f"(limit {MAX_IN_MEMORY_BYTES >> 20} MiB)"
            )
        image, label = render_case(cfg, seed, case)
        write_volume(image_path, image, spacing=cfg.spacing)
        write_volume(label_path, label, spacing=cfg.spacing)
        counts += np.bincount(label.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
        return dict(zip(CLASSES, (int(c) for c in counts), strict=True))

    bar = tqdm(total=-(-nz // slab), desc=f"phantom case {case}", unit="slab", disable=not progress)
    with (
        ZarrSlabWriter(image_path, cfg.shape, np.uint16, spacing=cfg.spacing) as w_image,
        ZarrSlabWriter(label_path, cfg.shape, np.uint8, spacing=cfg.spacing) as w_label,
        bar,
    ):
        # Whole chunks per write: a Zarr chunk written in parts is re-read and re-compressed.
        chunk = int(w_image.array.chunks[0])
        block = chunk * -(-slab // chunk)
        for b0 in range(0, nz, block):
            b1 = min(nz, b0 + block)
            image = np.empty((b1 - b0, ny, nx), np.uint16)
            label = np.empty((b1 - b0, ny, nx), np.uint8)
            for z0 in range(b0, b1, slab):
                z1 = min(b1, z0 + slab)
                part = render_case(cfg, seed, case, z0, z1)
                image[z0 - b0 : z1 - b0], label[z0 - b0 : z1 - b0] = part
                bar.update()
            w_image.write(b0, image)
            w_label.write(b0, label)
            counts += np.bincount(label.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    return dict(zip(CLASSES, (int(c) for c in counts), strict=True))


_SUFFIX = {
    "zarr": ".zarr", "nifti": ".nii.gz", "nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd",
    "hdf5": ".h5", "h5": ".h5", "numpy": ".npy", "npy": ".npy", "tiff": ".tif", "tif": ".tif",
}  # fmt: skip


def make_phantom_dataset(
    out_dir: str | Path,
    cases: int = 6,
    shape: tuple[int, int, int] = (128, 96, 96),
    seed: int = 0,
    fmt: str = "zarr",
    progress: bool = True,
    context_distance: float = 0.0,
) -> Path:
    """Write a phantom dataset and its ``dataset.yaml``.

    Cases go to ``out_dir/case_XXX/image.<fmt>`` and ``label.<fmt>``. The split
    keeps at least one training case; from three cases on, validation and test
    get about a sixth each (at least one): 6 cases give 4/1/1.

    Args:
        out_dir: Output folder (created).
        cases: Number of cases (>= 1).
        shape: (z, y, x) size of every case, each axis >= 32.
        seed: Dataset seed; case i is drawn from ``(seed, i)``.
        fmt: ``zarr`` (streamed, any size), ``nifti``, ``nrrd``, ``hdf5``, ``numpy`` or ``tiff``.
        progress: Show a progress bar over cases.
        context_distance: 0 for the classic phantom; D > 0 for the context
            phantom, where a thin tube's voxel is hind-gut iff a bright marker's
            centre lies within D voxels (see :class:`PhantomConfig`).

    Returns:
        Path of the written ``dataset.yaml``.

    Example:
        >>> make_phantom_dataset("runs/phantom", cases=6, seed=0)  # doctest: +SKIP
        PosixPath('runs/phantom/dataset.yaml')
    """
    from tqdm.auto import tqdm

    if int(cases) < 1:
        raise SettingError(f"cases must be at least 1, got {cases}")
    if fmt.lower().lstrip(".") not in _SUFFIX:
        raise SettingError(f"unknown phantom format {fmt!r}; choose one of {sorted(set(_SUFFIX))}")
    check_seed(seed, 0)
    cfg = PhantomConfig(shape=tuple(shape), context_distance=float(context_distance))  # type: ignore[arg-type]
    suffix = _SUFFIX[fmt.lower().lstrip(".")]
    out = Path(out_dir)
    # a new or empty folder, or one meunet made (a phantom is rewritten in place); locked
    with OutputLock(out, "phantom"):
        make_folder(out, "phantom")
        names = [f"case_{i:03d}" for i in range(int(cases))]
        entries: dict[str, Any] = {}
        for i, name in enumerate(tqdm(names, desc="phantom", unit="case", disable=not progress)):
            image, label = f"{name}/image{suffix}", f"{name}/label{suffix}"
            write_case(cfg, seed, i, out / image, out / label)
            entries[name] = {"image": [image], "label": label}
        spec = {
            "name": "phantom",
            "description": (
                f"synthetic microCT-like phantom (meunet.data.phantom), seed {seed}, "
                f"shape {cfg.shape[0]}x{cfg.shape[1]}x{cfg.shape[2]} (z, y, x)"
                + _context_note(cfg.context_distance)
            ),
            "classes": list(CLASSES),
            "channels": ["ct"],
            "cases": entries,
            "split": _split(names),
        }
        path = out / "dataset.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))
    return path


def _context_note(distance: float) -> str:
    if distance <= 0:
        return ""
    return (
        f"; context phantom, context_distance {distance:g} voxels: a thin-tube voxel is "
        f"hind-gut (2) iff a bright marker's centre lies within {distance:g} voxels, background "
        f"(0) iff a dark marker's does; thin tubes are cut away where no marker lies within "
        f"{distance:g} voxels or one of the other kind within {1.5 * distance:g}; markers are "
        "background; mid-gut (1) and the thick look-alike (0) as in the classic phantom"
    )


def _split(names: list[str]) -> dict[str, list[str]]:
    """Train/val/test: 1 case trains; 2 give 1/1/0; from 3 on, val and test ~1/6 each (>= 1)."""
    n = len(names)
    n_test = max(1, round(n / 6)) if n >= 3 else 0
    n_val = n_test if n >= 3 else n - 1
    n_train = n - n_val - n_test
    return {
        "train": names[:n_train],
        "val": names[n_train : n_train + n_val],
        "test": names[n_train + n_val :],
    }
