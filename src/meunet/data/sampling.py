"""Training patches from volumes that need not fit in memory (``docs/method.md``, *Patch sampling*).

Candidate patches are cubes of side P on a grid with step s = P/2 along each
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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meunet.data.io import open_volume
from meunet.data.patches import CaseFiles, PatchDataset, PatchRef
from meunet.data.spec import DatasetSpec
from meunet.data.volume import Volume, slab_depth
from meunet.errors import SettingError, SpecError, VolumeError

MIN_PATCH = 16  # below this the U-net's four poolings leave less than one voxel
MAX_PATCH = 512  # per-cell counts are uint32: (512 / 2)^3 voxels fit easily
STREAM_BYTES = 32 << 20  # float64 bytes of one slab while streaming statistics


@dataclass(frozen=True)
class SamplerConfig:
    """How training patches are drawn.

    Raises:
        ValueError: for a patch side that is odd, < 16 or > 512, an expanded
            side that is odd or smaller than the patch, or probabilities
            outside [0, 1].
    """

    patch: int = 64  # standard patch side P (cubic patches)
    expanded: int = 0  # side of meU-net's expanded patch (same centre), 0 = none
    bg_threshold: float = 0.99  # a candidate whose background fraction >= this is "background"
    bg_keep: float = 0.1  # probability that a background candidate is kept in an epoch
    max_patches: int = 0  # cap per epoch after shuffling (0 = no cap)

    def __post_init__(self) -> None:
        p, e = self.patch, self.expanded
        if p % 2:
            raise SettingError(
                f"patch side {p} is odd; the half-overlap grid needs an even side: use {p + 1}"
            )
        if p < MIN_PATCH:
            raise SettingError(f"patch side {p} is below {MIN_PATCH}: use at least {MIN_PATCH}")
        if p > MAX_PATCH:
            raise SettingError(
                f"patch side {p} is above {MAX_PATCH}: use at most {MAX_PATCH} "
                "(or a downsampled dataset for more context)"
            )
        if e and (e % 2 or e < p):
            raise SettingError(
                f"expanded side {e} must be even and at least the patch side {p} "
                f"(or 0 for none): use e.g. {max(p, e + e % 2)}"
            )
        if not 0.0 < self.bg_threshold <= 1.0:
            raise SettingError(f"bg_threshold must be in (0, 1], got {self.bg_threshold}")
        if not 0.0 <= self.bg_keep <= 1.0:
            raise SettingError(f"bg_keep must be a probability in [0, 1], got {self.bg_keep}")
        if self.max_patches < 0:
            raise SettingError(f"max_patches must be >= 0 (0 = no cap), got {self.max_patches}")


def grid_positions(n: int, patch: int, step: int | None = None) -> list[int]:
    """Starts of the half-overlap windows covering an axis of ``n`` voxels.

    Positions are 0, s, 2s, ... (s = ``step``, by default ``patch // 2``) up to
    the first whose window reaches the end (``pos + patch >= n``); the rest is
    zero padding.

    Example:
        >>> grid_positions(33, 16)
        [0, 8, 16, 24]
        >>> grid_positions(10, 16)
        [0]
    """
    if n < 1 or patch < 2 or patch % 2:
        raise ValueError(f"need n >= 1 and an even patch >= 2, got n={n}, patch={patch}")
    step = patch // 2 if step is None else step
    if not 1 <= step <= patch:
        raise ValueError(f"window step must lie in 1..{patch}, got {step}")
    out = [0]
    while out[-1] + patch < n:
        out.append(out[-1] + step)
    return out


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
        step = self.cfg.patch // 2
        for ref in refs:
            grid = self._grids.get(ref.case)
            idx = tuple(s // step for s in ref.start)
            if (
                grid is None
                or any(s % step for s in ref.start)
                or not all(0 <= i < n for i, n in zip(idx, grid.background.shape, strict=True))
            ):
                raise ValueError(f"{ref} is not a candidate of this sampler (grid step {step})")
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
        fit = max(min(shape) for shape in self.shapes.values()) // 2 * 2
        if all(min(shape) < p for shape in self.shapes.values()):
            shapes = ", ".join(f"{cid} {shape}" for cid, shape in list(self.shapes.items())[:5])
            raise SettingError(
                f"{message}: the patch side {p} is larger than every training volume ({shapes}); "
                + (
                    f"lower the patch side to at most {fit} (--set patch={fit})"
                    if fit >= MIN_PATCH
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
    spec: DatasetSpec, cid: str, label: Volume, patch: int, advance: Callable[[int], object]
) -> _CaseGrid:
    """Stream one label volume and count each candidate's voxels per class."""
    step, c = patch // 2, spec.num_classes
    positions = tuple(tuple(grid_positions(n, patch)) for n in label.shape)
    cz, cy, cx = (len(p) + 1 for p in positions)  # candidate i covers cells i and i + 1
    nz, ny, nx = label.shape
    cells = np.zeros((c, cz, cy, cx), np.uint32)  # real voxels per class and cell
    # a cell row (depth P/2) is read in parts when large: remapping costs ~40 bytes a voxel
    depth = min(step, slab_depth(label.shape, np.float64, STREAM_BYTES))
    for i, z0 in enumerate(range(0, nz, step)):
        for z in range(z0, min(z0 + step, nz), depth):
            values = spec.remap_labels(
                label[z : min(z + depth, z0 + step)], f"case {cid}: {label.path}"
            )
            slab = np.full((len(values), cy * step, cx * step), c, np.uint8)  # c: outside, no class
            slab[:, :ny, :nx] = values
            blocks = slab.reshape(len(values), cy, step, cx, step)
            for k in range(c):
                cells[k, i] += np.count_nonzero(blocks == k, axis=(0, 2, 4)).astype(np.uint32)
            advance(len(values))
    counts = cells.astype(np.int64)
    for axis in (1, 2, 3):  # sum each 2 x 2 x 2 block of cells
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        counts = counts[tuple(lo)] + counts[tuple(hi)]
    background = 1.0 - counts[1:].sum(axis=0) / float(patch) ** 3
    return _CaseGrid((positions[0], positions[1], positions[2]), counts, background)


def channel_stats(
    vol: Volume, advance: Callable[[int], object] | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of a whole volume, streamed in slabs.

    Slabs are merged with Chan et al.'s pairwise update in float64, so the
    result does not depend on the slab size beyond rounding. A standard
    deviation below 1e-8 (a constant image) is returned as 1.0.

    Args:
        vol: The image.
        advance: Called with the number of z-slices read after each slab (a progress bar).

    Raises:
        VolumeError: if the volume holds NaN or infinite values.
    """
    if vol.dtype.kind not in "biuf":  # complex would lose its imaginary part unseen
        raise VolumeError(
            f"{vol.path}: image dtype {vol.dtype} is not a real number type; "
            "save the image as integers or floats (e.g. the magnitude of complex data)"
        )
    n, mean, m2 = 0, 0.0, 0.0
    for _, slab in vol.slabs(slab_depth(vol.shape, np.float64, STREAM_BYTES)):
        x = slab.astype(np.float64)
        nb, mb = x.size, float(x.mean())
        m2b = float(np.square(x - mb).sum())
        delta, total = mb - mean, n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
        if advance is not None:
            advance(len(slab))
    std = math.sqrt(m2 / n)
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise VolumeError(f"{vol.path}: image holds NaN or infinite values; fix or re-export it")
    return mean, std if std >= 1e-8 else 1.0


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
