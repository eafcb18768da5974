"""Training patches from volumes that need not fit in memory (``docs/method.md``, *Patch sampling*).

Candidate patches of size P (a cube's side, or one side per axis,
:mod:`meunet.data.patch_size`) lie on a grid with step s = P/2 along each
axis, starting at 0 and running until a patch reaches the far end of the
volume, which is zero-padded (:func:`grid_positions`). Inference uses the same
grid, so a patch seen in training sits where a sliding window would.

Each epoch keeps every candidate that holds foreground and each "background"
candidate (background fraction >= ``bg_threshold``, padding counted as
background) with probability ``bg_keep``: the paper's roulette. The draw
depends on ``(seed, epoch)`` only.

No label volume is ever read whole. At construction each label volume is
streamed once in z-slabs of depth s and reduced to voxel counts per class per
cell of side s; a candidate covers 2 x 2 x 2 cells, so its class counts are a
sum of eight cells. Images are streamed once for their per-channel mean and
standard deviation. Training reads crops only: :meth:`PatchSampler.dataset`
opens the volumes in each worker process and reads the in-bounds part of each
patch.

Example:
    >>> spec = load_spec("runs/phantom/dataset.yaml")              # doctest: +SKIP
    >>> cfg = SamplerConfig(patch=64)
    >>> sampler = PatchSampler(spec, spec.training_ids(), cfg)     # doctest: +SKIP
    >>> refs = sampler.epoch(0)                                    # doctest: +SKIP
    >>> weights = class_weights(sampler.class_counts(refs))        # doctest: +SKIP
    >>> loader = DataLoader(sampler.dataset(refs), batch_size=2)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meunet.data.grid import grid_positions
from meunet.data.io import open_volume
from meunet.data.normalise import STREAM_BYTES, channel_stats
from meunet.data.patch_size import PatchSize, format_patch, parse_patch, patch_shape
from meunet.data.patches import CaseFiles, PatchDataset, PatchRef
from meunet.data.spec import DatasetSpec
from meunet.data.volume import Volume, slab_depth
from meunet.errors import SettingError, SpecError, VolumeError

# channel_stats and grid_positions live in meunet.data.normalise and meunet.data.grid;
# imported from here by code written before they moved
__all__ = [
    "PatchSampler",
    "SamplerConfig",
    "channel_stats",
    "check_class_map",
    "grid_positions",
]

MIN_PATCH = 16  # below this the U-net's four poolings leave less than one voxel
MAX_PATCH = 512  # per-cell counts are uint32: (512 / 2)^3 voxels fit easily


@dataclass(frozen=True)
class SamplerConfig:
    """How training patches are drawn.

    Raises:
        ValueError: for a patch side that is odd, < 16 or > 512, an expanded
            side that is odd or smaller than the patch, or probabilities
            outside [0, 1].
    """

    patch: PatchSize = 64  # standard patch P: a cube's side or (z, y, x) sides
    expanded: PatchSize = 0  # meU-net's expanded patch (same centre), likewise; 0 = none
    bg_threshold: float = 0.99  # a candidate whose background fraction >= this is "background"
    bg_keep: float = 0.1  # probability that a background candidate is kept in an epoch
    max_patches: int = 0  # cap per epoch after shuffling (0 = no cap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", parse_patch(self.patch))
        object.__setattr__(self, "expanded", parse_patch(self.expanded, "expanded"))
        shown = format_patch(self.patch)
        for p in patch_shape(self.patch):
            if p % 2:
                raise SettingError(
                    f"patch {shown}: side {p} is odd; the half-overlap grid needs even sides: "
                    f"use {p + 1}"
                )
            if p < MIN_PATCH:
                raise SettingError(
                    f"patch {shown}: side {p} is below {MIN_PATCH}: use at least {MIN_PATCH}"
                )
            if p > MAX_PATCH:
                raise SettingError(
                    f"patch {shown}: side {p} is above {MAX_PATCH}: use at most {MAX_PATCH} "
                    "(or a downsampled dataset for more context)"
                )
        if self.expanded:
            for p, e in zip(patch_shape(self.patch), patch_shape(self.expanded), strict=True):
                if e % 2 or e < p:
                    raise SettingError(
                        f"expanded side {e} (of {format_patch(self.expanded)}) must be even and at "
                        f"least the patch side {p} (of {shown}), or 0 for none: use e.g. "
                        f"{max(p, e + e % 2)}"
                    )
        if not 0.0 < self.bg_threshold <= 1.0:
            raise SettingError(f"bg_threshold must be in (0, 1], got {self.bg_threshold}")
        if not 0.0 <= self.bg_keep <= 1.0:
            raise SettingError(f"bg_keep must be a probability in [0, 1], got {self.bg_keep}")
        if self.max_patches < 0:
            raise SettingError(f"max_patches must be >= 0 (0 = no cap), got {self.max_patches}")


@dataclass(frozen=True)
class _CaseGrid:
    """A case's candidates: grid starts per axis and voxel counts per class."""

    positions: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    counts: np.ndarray  # (C, gz, gy, gx) int64: real voxels per class in each candidate
    background: np.ndarray  # (gz, gy, gx) float64: background fraction, padding included


class PatchSampler:
    """The paper's patch sampler over the labelled cases of a dataset.

    Args:
        spec: The dataset.
        case_ids: Cases to sample from (e.g. ``spec.training_ids()``); each needs a label.
        cfg: Patch sides and roulette settings.
        extra: Case id -> paths of extra label volumes (class indices, e.g. a
            cascade's stage-1 predictions), the same shape as the case; given
            to the network as one-hot channels.
        seed: Seed of the roulette and shuffle (with the epoch number).
        progress: Show a progress bar while streaming the volumes.

    Attributes:
        normalisation: Case id -> per-channel (mean, std) of the whole image.

    Raises:
        ValueError: for an empty or unknown case list, or extra paths missing for a case.
        SpecError: for a case without label.
        VolumeError: for volumes whose shapes differ from the case's label, naming the file.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        case_ids: Sequence[str],
        cfg: SamplerConfig,
        extra: Mapping[str, Sequence[str | Path]] | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        if int(seed) < 0:
            raise SettingError(f"seed must be >= 0, got {seed}")
        self.spec = spec
        self.cfg = cfg
        self.seed = int(seed)
        self.case_ids = _check_cases(spec, case_ids)
        self._files = {cid: _case_files(spec, cid, extra) for cid in self.case_ids}
        shapes = {cid: _check_shapes(cid, files) for cid, files in self._files.items()}
        self.shapes = shapes

        total = sum(s[0] * (1 + len(spec.channels)) for s in shapes.values())
        self.normalisation: dict[str, list[tuple[float, float]]] = {}
        self._grids: dict[str, _CaseGrid] = {}
        with tqdm(total=total, desc="sampler", unit="slice", disable=not progress) as bar:
            for cid, files in self._files.items():
                with open_volume(files.label) as label:
                    self._grids[cid] = _case_grid(spec, cid, label, cfg.patch, bar.update)
                self.normalisation[cid] = []
                for path in files.images:
                    with open_volume(path) as vol:
                        self.normalisation[cid].append(channel_stats(vol, bar.update))

    @property
    def num_candidates(self) -> int:
        """Number of candidate patches over all cases."""
        return sum(g.background.size for g in self._grids.values())

    def candidates(self) -> list[PatchRef]:
        """Every candidate: cases in the given order, then grid (z, y, x) in C order."""
        return self._refs(np.arange(self.num_candidates))

    def background_fractions(self) -> np.ndarray:
        """Background fraction of each candidate, in :meth:`candidates` order (padding counts)."""
        return np.concatenate([g.background.ravel() for g in self._grids.values()])

    def epoch(self, epoch: int) -> list[PatchRef]:
        """The patches of one epoch: roulette, then shuffle, then cap.

        Depends on ``(seed, epoch)`` only: the same arguments give the same list.
        """
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, int(epoch)])
        background = self.background_fractions() >= self.cfg.bg_threshold
        keep = ~background | (rng.random(background.size) < self.cfg.bg_keep)
        order = rng.permutation(np.flatnonzero(keep))
        if self.cfg.max_patches:
            order = order[: self.cfg.max_patches]
        return self._refs(order)

    def class_counts(self, refs: Sequence[PatchRef]) -> np.ndarray:
        """Voxels per class, shape ``(num_classes,)`` int64, over these standard patches.

        Only voxels inside the volumes count (padding is no class). The refs
        must be candidates of this sampler.
        """
        out = np.zeros(self.spec.num_classes, np.int64)
        steps = tuple(p // 2 for p in patch_shape(self.cfg.patch))
        for ref in refs:
            grid = self._grids.get(ref.case)
            idx = tuple(s // st for s, st in zip(ref.start, steps, strict=True))
            if (
                grid is None
                or any(s % st for s, st in zip(ref.start, steps, strict=True))
                or not all(0 <= i < n for i, n in zip(idx, grid.background.shape, strict=True))
            ):
                raise ValueError(
                    f"{ref} is not a candidate of this sampler (grid steps {list(steps)})"
                )
            out += grid.counts[(slice(None), *idx)]
        return out

    def first_epoch_class_counts(self) -> np.ndarray:
        """Voxels per class over the patches of epoch 0 (what the class weights are made of).

        Raises:
            SettingError: when the roulette keeps no patch, with the setting to change
                (a patch side larger than the volumes makes every candidate mostly padding).
        """
        refs = self.epoch(0)
        if refs:
            return self.class_counts(refs)
        p, cfg = self.cfg.patch, self.cfg
        message = (
            f"no training patch: each of the {self.num_candidates} candidate patches is at least "
            f"{cfg.bg_threshold:g} background (padding counts) and the roulette, keeping such a "
            f"patch with probability bg_keep = {cfg.bg_keep:g}, kept none"
        )
        sides = patch_shape(p)
        if all(any(n < q for n, q in zip(s, sides, strict=True)) for s in self.shapes.values()):
            shapes = ", ".join(f"{cid} {shape}" for cid, shape in list(self.shapes.items())[:5])
            fit = [
                min(q, max(n // 2 * 2 for n in (s[i] for s in self.shapes.values())))
                for i, q in enumerate(sides)
            ]
            raise SettingError(
                f"{message}: the patch {format_patch(p)} is larger than every training volume "
                f"along an axis ({shapes}); "
                + (
                    f"lower the patch to at most {format_patch(fit)} "
                    f"(--set sampler.patch={_written(fit)}), or use patch: auto"
                    if min(fit) >= MIN_PATCH
                    else f"the volumes are smaller than the smallest patch side {MIN_PATCH}: "
                    "pad them, or raise bg_keep"
                )
            )
        raise SettingError(f"{message}; raise bg_keep, or lower the patch side")

    def dataset(self, refs: Sequence[PatchRef]) -> PatchDataset:
        """A map-style dataset reading these patches lazily (see :class:`PatchDataset`)."""
        unknown = sorted({r.case for r in refs} - set(self._files))
        if unknown:
            raise ValueError(
                f"patches of cases {unknown[:5]} were asked for, but this sampler holds "
                f"only {list(self.case_ids)[:5]}...: build the sampler with those cases"
            )
        return PatchDataset(
            self.spec, refs, self._files, self.normalisation, self.cfg.patch, self.cfg.expanded
        )

    def _refs(self, indices: np.ndarray) -> list[PatchRef]:
        """Candidates by index into the :meth:`candidates` order."""
        grids = list(self._grids.items())
        ends = np.cumsum([g.background.size for _, g in grids])
        which = np.searchsorted(ends, indices, side="right")
        local = indices - np.concatenate([[0], ends])[which]
        corners = np.zeros((len(indices), 3), np.int64)
        for n in np.unique(which):
            sel = which == n
            grid = grids[n][1]
            for axis, i in enumerate(np.unravel_index(local[sel], grid.background.shape)):
                corners[sel, axis] = np.asarray(grid.positions[axis])[i]
        ids = [cid for cid, _ in grids]
        return [
            PatchRef(ids[n], (z, y, x))
            for n, (z, y, x) in zip(which.tolist(), corners.tolist(), strict=True)
        ]


def _check_cases(spec: DatasetSpec, case_ids: Sequence[str]) -> tuple[str, ...]:
    ids = tuple(str(c) for c in case_ids)
    if not ids:
        raise SettingError(
            f"no cases to sample patches from: pass case ids of {spec.path.name} "
            "(e.g. spec.training_ids()), or add a train split to it"
        )
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ValueError(f"cases {dupes} are listed twice; list each case once")
    unknown = [c for c in ids if c not in spec.cases]
    if unknown:
        raise ValueError(
            f"cases {unknown[:5]} are not in {spec.path.name}; known cases: {list(spec.cases)[:10]}"
        )
    for cid in ids:
        if spec.cases[cid].label is None:
            raise SpecError(
                f"{spec.path}: case {cid} has no label, so it cannot give training patches: "
                "add 'label:' to it or leave it out of the training cases"
            )
    return ids


def _case_files(
    spec: DatasetSpec, cid: str, extra: Mapping[str, Sequence[str | Path]] | None
) -> CaseFiles:
    case = spec.cases[cid]
    paths: tuple[str, ...] = ()
    if extra is not None:
        if cid not in extra or not extra[cid]:
            raise ValueError(
                f"extra volumes were given, but none for case {cid}: give every case the "
                "same number of extra paths (e.g. the stage-1 prediction of each case)"
            )
        paths = tuple(str(p) for p in extra[cid])
        first = extra[next(iter(extra))]
        if len(paths) != len(first):
            raise ValueError(
                f"case {cid} has {len(paths)} extra volumes, others have {len(first)}; "
                "give every case one path per branch"
            )
    return CaseFiles(tuple(str(p) for p in case.images), str(case.label), paths)


def _check_shapes(cid: str, files: CaseFiles) -> tuple[int, int, int]:
    """The case's shape; every image and extra volume must have the label's."""
    with open_volume(files.label) as label:
        shape = label.shape
    for kind, paths in (("image", files.images), ("extra", files.extra)):
        for path in paths:
            with open_volume(path) as vol:
                if vol.shape != shape:
                    raise VolumeError(
                        f"{path}: {kind} volume of shape {vol.shape} differs from the label "
                        f"shape {shape} of case {cid}; resample or crop it to the label's grid"
                    )
                if kind == "extra" and vol.dtype.kind not in "iu":
                    raise VolumeError(
                        f"{path}: extra volume of case {cid} has dtype {vol.dtype}; it must "
                        "hold integer class indices (e.g. uint8 predictions)"
                    )
    return shape


def _case_grid(
    spec: DatasetSpec,
    cid: str,
    label: Volume,
    patch: PatchSize,
    advance: Callable[[int], object],
) -> _CaseGrid:
    """Stream one label volume and count each candidate's voxels per class."""
    sides = patch_shape(patch)
    (sz, sy, sx), c = (p // 2 for p in sides), spec.num_classes
    positions = tuple(tuple(grid_positions(n, p)) for n, p in zip(label.shape, sides, strict=True))
    cz, cy, cx = (len(p) + 1 for p in positions)  # candidate i covers cells i and i + 1
    nz, ny, nx = label.shape
    cells = np.zeros((c, cz, cy, cx), np.uint32)  # real voxels per class and cell
    # a cell row (depth P/2) is read in parts when large: remapping costs ~40 bytes a voxel
    depth = min(sz, slab_depth(label.shape, np.float64, STREAM_BYTES))
    for i, z0 in enumerate(range(0, nz, sz)):
        for z in range(z0, min(z0 + sz, nz), depth):
            values = spec.remap_labels(
                label[z : min(z + depth, z0 + sz)], f"case {cid}: {label.path}"
            )
            slab = np.full((len(values), cy * sy, cx * sx), c, np.uint8)  # c: outside, no class
            slab[:, :ny, :nx] = values
            blocks = slab.reshape(len(values), cy, sy, cx, sx)
            for k in range(c):
                cells[k, i] += np.count_nonzero(blocks == k, axis=(0, 2, 4)).astype(np.uint32)
            advance(len(values))
    counts = cells.astype(np.int64)
    for axis in (1, 2, 3):  # sum each 2 x 2 x 2 block of cells
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        counts = counts[tuple(lo)] + counts[tuple(hi)]
    background = 1.0 - counts[1:].sum(axis=0) / float(np.prod(sides))
    return _CaseGrid((positions[0], positions[1], positions[2]), counts, background)


def _written(sides: list[int]) -> str:
    """A size as ``--set`` takes it: ``64`` or ``[16,64,64]``."""
    return str(sides[0]) if len(set(sides)) == 1 else "[" + ",".join(map(str, sides)) + "]"


def check_class_map(vol: Volume, num_classes: int) -> None:
    """Refuse a label volume (e.g. a stage-1 prediction) unless it holds class indices.

    Streamed in slabs. Values are checked on the volume's own dtype, before any
    cast: a negative value would otherwise pick a class counted from the end.

    Raises:
        VolumeError: for a non-integer dtype or values outside 0..num_classes - 1.
    """
    if vol.dtype.kind not in "biu":
        raise VolumeError(
            f"{vol.path}: label map has dtype {vol.dtype}; it must hold integer class indices "
            "(e.g. the uint8 labels meunet predict writes)"
        )
    lo, hi = 0, 0
    for _, slab in vol.slabs(slab_depth(vol.shape, vol.dtype, STREAM_BYTES)):
        if slab.size:
            lo, hi = min(lo, int(slab.min())), max(hi, int(slab.max()))
    if lo < 0 or hi >= num_classes:
        raise VolumeError(
            f"{vol.path}: label map holds values {lo}..{hi}, but the model has {num_classes} "
            f"classes (0..{num_classes - 1}); pass the stage-1 prediction made for this model"
        )
