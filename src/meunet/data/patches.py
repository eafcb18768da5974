"""Training patches read from disk on demand: the ``Dataset`` a ``DataLoader`` iterates.

A :class:`PatchRef` names a case and the corner of a standard patch; the
dataset reads that crop (and meU-net's expanded crop, and stage-1 maps)
lazily, zero-padded outside the volume. See :mod:`meunet.data.sampling` for
how the refs are chosen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from meunet.data.io import open_volume
from meunet.data.patch_size import PatchSize, Shape3, patch_shape
from meunet.data.spec import DatasetSpec
from meunet.data.volume import Volume
from meunet.errors import VolumeError

Start = tuple[int, int, int]


@dataclass(frozen=True)
class PatchRef:
    """One standard patch: its case and (z, y, x) corner.

    The patch may run past the far end of the volume; that part is zero padding.
    """

    case: str
    start: Start


@dataclass(frozen=True)
class CaseFiles:
    """Paths a dataset worker opens for one case (picklable, unlike open volumes)."""

    images: tuple[str, ...]
    label: str
    extra: tuple[str, ...] = ()


class PatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Patches read from disk on demand, ready for a ``DataLoader``.

    Item ``i`` is a dict of tensors:

    - ``image``: float32 (channels, Pz, Py, Px), normalised per case and channel;
    - ``label``: int64 (Pz, Py, Px) class indices;
    - with an expanded patch E: ``expanded_image`` float32 (channels, Ez, Ey, Ex)
      with the same centre (corner ``start - (E - P) // 2`` per axis) and
      ``expanded_label`` int64 (Ez/2, Ey/2, Ex/2), the expanded label taken
      every second voxel;
    - with extra volumes: ``extra`` float32 (branches * num_classes, P, P, P)
      one-hot maps, branch-major, and ``expanded_extra`` at E likewise.

    Outside the volume images, labels and one-hot maps are 0. Volumes are
    opened on first use in each process, so the dataset pickles and works
    with ``num_workers > 0``.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        refs: Sequence[PatchRef],
        files: Mapping[str, CaseFiles],
        normalisation: Mapping[str, Sequence[tuple[float, float]]],
        patch: PatchSize,
        expanded: PatchSize = 0,
    ) -> None:
        self.spec = spec
        self.refs = tuple(refs)
        self.patch = patch_shape(patch)  # (z, y, x) sides
        self.expanded = patch_shape(expanded) if expanded else None
        cases = {r.case for r in self.refs}
        self._files = {cid: f for cid, f in files.items() if cid in cases}
        self._norm = {
            cid: [(np.float32(m), np.float32(s)) for m, s in normalisation[cid]] for cid in cases
        }
        self._pid: int | None = None
        self._open: dict[str, tuple[list[Volume], Volume, list[Volume]]] = {}

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ref = self.refs[i]
        images, label, extra = self._volumes(ref.case)
        out = {
            "image": self._image(ref.case, images, ref.start, self.patch),
            "label": self._label(ref.case, label, ref.start, self.patch),
        }
        if extra:
            out["extra"] = self._onehot(extra, ref.start, self.patch)
        if self.expanded:
            half = [(e - p) // 2 for e, p in zip(self.expanded, self.patch, strict=True)]
            start = (ref.start[0] - half[0], ref.start[1] - half[1], ref.start[2] - half[2])
            out["expanded_image"] = self._image(ref.case, images, start, self.expanded)
            full = self._label(ref.case, label, start, self.expanded)
            out["expanded_label"] = full[::2, ::2, ::2].contiguous()
            if extra:
                out["expanded_extra"] = self._onehot(extra, start, self.expanded)
        return out

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_pid"], state["_open"] = None, {}  # open files do not cross processes
        return state

    def _volumes(self, cid: str) -> tuple[list[Volume], Volume, list[Volume]]:
        if self._pid != os.getpid():  # a forked worker must not share its parent's handles
            self._pid, self._open = os.getpid(), {}
        if cid not in self._open:
            f = self._files[cid]
            self._open[cid] = (
                [open_volume(p) for p in f.images],
                open_volume(f.label),
                [open_volume(p) for p in f.extra],
            )
        return self._open[cid]

    def _image(self, cid: str, vols: list[Volume], start: Start, size: Shape3) -> torch.Tensor:
        out = np.zeros((len(vols), *size), np.float32)
        for ch, (vol, (mean, std)) in enumerate(zip(vols, self._norm[cid], strict=True)):
            crop = read_padded(vol, start, size)
            if crop is not None:
                dst, values = crop
                out[ch][dst] = (values.astype(np.float32) - mean) / std
        return torch.from_numpy(out)

    def _label(self, cid: str, vol: Volume, start: Start, size: Shape3) -> torch.Tensor:
        out = np.zeros(size, np.int64)
        crop = read_padded(vol, start, size)
        if crop is not None:
            dst, values = crop
            out[dst] = self.spec.remap_labels(values, f"case {cid}: {vol.path}")
        return torch.from_numpy(out)

    def _onehot(self, vols: list[Volume], start: Start, size: Shape3) -> torch.Tensor:
        c = self.spec.num_classes
        out = np.zeros((len(vols) * c, *size), np.float32)
        for b, vol in enumerate(vols):
            crop = read_padded(vol, start, size)
            if crop is None:
                continue
            dst, values = crop
            if values.size and (values.min() < 0 or values.max() >= c):
                raise VolumeError(
                    f"{vol.path}: holds value {int(values.max())} but the dataset has {c} "
                    f"classes; extra volumes must hold class indices 0..{c - 1}"
                )
            for k in range(c):
                out[b * c + k][dst] = values == k
        return torch.from_numpy(out)


def read_padded(
    vol: Volume, start: Start, size: PatchSize
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Read the in-bounds part of the box of ``size`` (a cube's side or (z, y, x) sides) at ``start``.

    Returns:
        Where the part goes in a box of that size and the part itself, or
        None when the box lies wholly outside the volume.
    """
    src: list[slice] = []
    dst: list[slice] = []
    for s0, n, side in zip(start, vol.shape, patch_shape(size), strict=True):
        lo, hi = max(s0, 0), min(s0 + side, n)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - s0, hi - s0))
    return (dst[0], dst[1], dst[2]), vol[src[0], src[1], src[2]]
