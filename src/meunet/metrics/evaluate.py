"""Evaluate predictions against ground truth: Dice, HD95, relative volume difference.

Everything streams in z-slabs: Dice and volumes from per-slab counts, and
HD95 from the surface voxels of each class (found slab by slab with a one-
slice halo), so that a paper-scale volume never needs a full copy. Distances
are in physical units (the truth's spacing). A class absent from both
prediction and truth is reported as absent (NaN), never as a silent 1.0.

HD95 has two definitions in use (:data:`HD95_DEFINITIONS`): meunet's default
``"max"`` is the larger of the two directed 95th percentiles (prediction
surface to truth surface, and back), as MONAI computes it; ``"pooled"`` is
the 95th percentile of both directed distance sets together, which some tools
report (usually the smaller of the two).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from meunet.data.volume import Volume, slab_depth
from meunet.errors import MeunetError, SettingError
from meunet.metrics.dice import DiceCounter

Remap = Callable[[np.ndarray], np.ndarray]

#: What HD95 means under each ``hd95`` mode, as the evaluation output states it.
HD95_DEFINITIONS = {
    "max": "the larger of the two directed 95th percentiles of the surface distances "
    "(prediction to truth, truth to prediction), as MONAI computes it",
    "pooled": "the 95th percentile of both directed surface distance sets pooled "
    "(prediction to truth and truth to prediction together)",
}


@dataclass
class ClassScores:
    """Scores of one class in one case (NaN where undefined)."""

    dice: float
    hd95: float  # physical units; inf when only one side has the class
    rvd: float  # (predicted - true) / true voxels
    voxels_pred: int
    voxels_true: int

    @property
    def absent(self) -> bool:
        return self.voxels_pred == 0 and self.voxels_true == 0


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (outside the volume counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _check_hd95(mode: str) -> None:
    if mode not in HD95_DEFINITIONS:
        raise SettingError(f"hd95 must be one of {sorted(HD95_DEFINITIONS)}, got {mode!r}")


def _hd95(a: np.ndarray, b: np.ndarray, mode: str = "max") -> float:
    """Symmetric 95th-percentile Hausdorff distance between two point sets (see :data:`HD95_DEFINITIONS`)."""
    if len(a) == 0 and len(b) == 0:
        return float("nan")
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    d_ab = cKDTree(b).query(a, workers=-1)[0]
    d_ba = cKDTree(a).query(b, workers=-1)[0]
    if mode == "pooled":
        return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def _check_labels(arr: np.ndarray, num_classes: int, path: str) -> None:
    """Refuse values that are not class indices: a cast would turn 1.5 into 1 and NaN into garbage."""
    if arr.dtype.kind not in "biuf":
        raise MeunetError(
            f"{path}: label dtype {arr.dtype} is not numeric; save labels as integers"
        )
    if not arr.size:
        return
    if arr.dtype.kind == "f":
        odd = ~np.isfinite(arr) | (arr != np.round(arr))
        if odd.any():
            found = ", ".join(f"{v:g}" for v in np.unique(arr[odd])[:5])
            raise MeunetError(
                f"{path}: label values {{{found}}} are not whole class indices; fix the label file "
                "(NaN marks no class: replace it with a class index)"
            )
    if arr.min() < 0 or arr.max() >= num_classes:
        found = ", ".join(f"{v:g}" for v in np.unique(arr[(arr < 0) | (arr >= num_classes)])[:5])
        raise MeunetError(
            f"{path}: label values outside 0..{num_classes - 1}; pass --data DATASET.yaml to "
            f"remap them, or fix the label file (found {{{found}}})"
        )


def evaluate_case(
    pred: Volume,
    truth: Volume,
    num_classes: int,
    remap_truth: Remap | None = None,
    remap_pred: Remap | None = None,
    hd95: str = "max",
) -> list[ClassScores]:
    """Scores per class (index 0 is background) of one predicted volume.

    HD95 is in the unit of ``truth.spacing`` (open the truth with a dataset
    spec's ``spacing:`` to use that); ``hd95`` picks its definition,
    ``"max"`` (MONAI's) or ``"pooled"`` (see :data:`HD95_DEFINITIONS`).
    """
    _check_hd95(hd95)
    if pred.shape != truth.shape:
        raise MeunetError(
            f"{pred.path}: prediction shape {pred.shape} differs from truth {truth.path} shape {truth.shape}"
        )
    spacing = np.asarray(truth.spacing)
    counter = DiceCounter(num_classes)
    surfaces: dict[tuple[str, int], list[np.ndarray]] = {
        (s, c): [] for s in ("p", "t") for c in range(num_classes)
    }
    nz = pred.shape[0]
    depth = max(8, slab_depth(pred.shape, np.float64, 32 << 20))
    for z0 in range(0, nz, depth):
        z1 = min(nz, z0 + depth)
        lo, hi = max(0, z0 - 1), min(nz, z1 + 1)  # one-slice halo: surfaces need neighbours
        p = np.asarray(pred[lo:hi])
        t = np.asarray(truth[lo:hi])
        p = remap_pred(p) if remap_pred else p
        t = remap_truth(t) if remap_truth else t
        _check_labels(p, num_classes, pred.path)
        _check_labels(t, num_classes, truth.path)
        core = slice(z0 - lo, z0 - lo + (z1 - z0))
        counter.update(p[core].astype(np.int64), t[core].astype(np.int64))
        for c in range(1, num_classes):
            for name, arr in (("p", p), ("t", t)):
                mask = arr == c
                if not mask.any():
                    continue
                # beyond the block counts as outside: right at the volume ends, and
                # only the halo slices (cropped away) are affected inside the volume
                surf = _surface(mask)[core]
                pts = np.argwhere(surf).astype(np.float64)
                pts[:, 0] += z0
                surfaces[(name, c)].append(pts * spacing)
    dice = counter.dice()
    pred_vox = counter.tp + counter.fp
    true_vox = counter.tp + counter.fn
    out = []
    for c in range(num_classes):
        pts = {
            s: np.concatenate(surfaces[(s, c)]) if surfaces[(s, c)] else np.zeros((0, 3))
            for s in ("p", "t")
        }
        hd = _hd95(pts["p"], pts["t"], hd95) if c > 0 else float("nan")
        rvd = float((pred_vox[c] - true_vox[c]) / true_vox[c]) if true_vox[c] else float("nan")
        out.append(ClassScores(float(dice[c]), hd, rvd, int(pred_vox[c]), int(true_vox[c])))
    return out


def hd95_note(hd95: str = "max") -> str:
    """The line under an evaluation table that says what its HD95 is."""
    _check_hd95(hd95)
    return f"HD95 ({hd95}): {HD95_DEFINITIONS[hd95]}; in the unit of the voxel spacing."


def summary_table(
    results: dict[str, list[ClassScores]], classes: Sequence[str], hd95: str = "max"
) -> tuple[list[dict[str, object]], str]:
    """CSV rows (case, class, metrics) and a markdown table with per-case values and mean +- sd.

    A line under the table states the HD95 definition the scores used (``hd95``).
    """
    rows: list[dict[str, object]] = []
    for case, scores in results.items():
        for c, s in enumerate(scores):
            if c == 0:
                continue
            rows.append({
                "case": case, "class": classes[c], "dice": s.dice, "hd95": s.hd95, "rvd": s.rvd,
                "voxels_pred": s.voxels_pred, "voxels_true": s.voxels_true, "absent": s.absent,
            })  # fmt: skip

    def fmt(v: float) -> str:
        return "absent" if np.isnan(v) else ("inf" if np.isinf(v) else f"{v:.3f}")

    lines = [
        "| case | class | Dice | HD95 | RVD | voxels pred / true |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = " (absent from both)" if r["absent"] else ""
        lines.append(
            f"| {r['case']} | {r['class']}{note} | {fmt(r['dice'])} | {fmt(r['hd95'])} | {fmt(r['rvd'])} | "
            f"{r['voxels_pred']} / {r['voxels_true']} |"
        )
    for c in classes[1:]:
        vals = {
            m: np.array([r[m] for r in rows if r["class"] == c and not r["absent"]], float)
            for m in ("dice", "hd95", "rvd")
        }

        def ms(v: np.ndarray) -> str:
            v = v[np.isfinite(v)]
            return f"{v.mean():.3f} +- {v.std():.3f}" if len(v) else "-"

        lines.append(
            f"| **mean** | {c} | {ms(vals['dice'])} | {ms(vals['hd95'])} | {ms(vals['rvd'])} | |"
        )
    lines += ["", hd95_note(hd95)]
    return rows, "\n".join(lines)
