"""Three orthogonal slices through a structure, with the labels drawn over the image.

Only the three slices are read (plus one streamed pass over the label
volume to find the structure's centre), so it works on volumes of any size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from meunet.data.io.atomic import atomic_path
from meunet.data.volume import Volume, slab_depth
from meunet.errors import SettingError, VolumeError

COLOURS = [
    (0, 0, 0, 0),
    (0.1, 0.85, 0.2, 1),
    (0.95, 0.15, 0.15, 1),
    (0.2, 0.45, 1, 1),
    (1, 0.8, 0.1, 1),
]


def centre_of(labels: Volume, cls: int | None) -> tuple[tuple[int, int, int], int | None]:
    """Centroid of class ``cls`` (default: the smallest foreground class present), streamed."""
    counts: dict[int, int] = {}
    sums: dict[int, np.ndarray] = {}
    present: set[int] = set()
    depth = slab_depth(labels.shape, np.int64, 64 << 20)
    for z0 in range(0, labels.shape[0], depth):
        slab = np.asarray(labels[z0 : z0 + depth])
        for c in np.unique(slab):
            c = int(c)
            present.add(c)
            if c == 0 or (cls is not None and c != cls):
                continue
            pts = np.argwhere(slab == c)
            pts[:, 0] += z0
            counts[c] = counts.get(c, 0) + len(pts)
            sums[c] = sums.get(c, np.zeros(3)) + pts.sum(0)
    if cls is not None and not counts:
        found = sorted(present - {0})
        raise SettingError(
            f"{labels.path}: class {cls} does not occur in these labels "
            f"({f'classes present: {found}' if found else 'only background'}); "
            "choose one of them with --class, or leave --class out"
        )
    if not counts:
        return tuple(n // 2 for n in labels.shape), None  # type: ignore[return-value]
    chosen = cls if cls is not None else min(counts, key=lambda c: counts[c])
    z, y, x = (round(float(v)) for v in sums[chosen] / counts[chosen])
    return (z, y, x), chosen


def overlay_png(
    image: Volume,
    labels: Volume,
    out: str | Path,
    truth: Volume | None = None,
    cls: int | None = None,
    names: list[str] | None = None,
    remap_truth: Callable[[np.ndarray], np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PNG: axial, coronal and sagittal slices through the structure of interest.

    ``remap_truth`` maps the truth file's values to class indices (a dataset
    spec's ``remap_labels``); z runs upwards in the coronal and sagittal views.
    An existing ``out`` that meunet did not write is refused unless ``overwrite``.
    """
    from meunet.data.io.ownership import claim_output, mark, prepare_output

    sources = [image, labels, *([truth] if truth is not None else [])]
    prepare_output(out, sources, overwrite, folder=False)  # refuse before reading anything
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    for vol in (labels, truth):
        if vol is not None and vol.shape != image.shape:
            raise VolumeError(
                f"{vol.path}: shape {vol.shape} differs from the image {image.path} {image.shape}"
            )
    (z, y, x), chosen = centre_of(labels, cls)
    sz, sy, sx = image.spacing
    views = [
        (f"axial z={z}", np.s_[z, :, :], sy / sx),
        (f"coronal y={y}", np.s_[:, y, :], sz / sx),
        (f"sagittal x={x}", np.s_[:, :, x], sz / sy),
    ]
    rows = [("prediction", labels)] + ([("truth", truth)] if truth is not None else [])
    cmap = ListedColormap(COLOURS)
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4 * len(rows)), squeeze=False)
    slices = [np.asarray(image[key], np.float32) for _, key, _ in views]
    lo, hi = np.percentile(np.concatenate([s.ravel() for s in slices]), [1, 99])
    for r, (title, vol) in enumerate(rows):
        for c, ((name, key, aspect), img) in enumerate(zip(views, slices, strict=True)):
            ax = axes[r][c]
            origin = "upper" if c == 0 else "lower"  # z upwards in the coronal and sagittal views
            ax.imshow(
                img,
                cmap="gray",
                vmin=lo,
                vmax=hi,
                aspect=aspect,
                interpolation="nearest",
                origin=origin,
            )
            lab = np.asarray(vol[key])
            if vol is truth and remap_truth is not None:
                lab = remap_truth(lab)
            lab = lab.astype(int) % len(COLOURS)
            masked = np.ma.masked_equal(lab, 0)
            top = len(COLOURS) - 1
            ax.imshow(
                masked,
                cmap=cmap,
                vmin=0,
                vmax=top,
                alpha=0.45,
                aspect=aspect,
                interpolation="nearest",
                origin=origin,
            )
            ax.set_title(f"{title}: {name}")
            ax.axis("off")
    what = (
        (
            names[chosen]
            if names and chosen is not None and chosen < len(names)
            else f"class {chosen}"
        )
        if chosen
        else "volume centre"
    )
    fig.suptitle(f"{Path(str(image.path)).name}: slices through {what}")
    fig.tight_layout()
    out = Path(out)
    with claim_output(out, sources, overwrite, folder=False, command="overlay"):
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        mark(out, "overlay")
    return out
