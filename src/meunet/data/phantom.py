"""A synthetic microCT-like phantom: the embedded default dataset.

Each case is a uint16 image and a uint8 label volume, axes (z, y, x):

- air (dark, noisy) around a textured, noisy body filling most of the volume;
- label 1 "mid-gut": a large tortuous tube inside the body;
- label 2 "hind-gut": a thin tube (a third of the mid-gut's radius) that leaves
  one end of the mid-gut and wanders off; a few per cent of the foreground;
- distractors (label 0): two to four thin tubes and maybe one thick one that
  look exactly like the gut but never touch it.

Every voxel within a tube's radius takes the same intensity (one mean, one
texture, one noise) whatever the tube, so a voxel's neighbourhood does not say
whether it is mid-gut, hind-gut or distractor: only the wider context does
(which tube joins which, and how thick it is next to its neighbours), the
difficulty the paper's cascade is built for. Partial-volume blending is done
in a one-voxel rim *outside* the tubes, never inside.

Rendering streams along z: tubes are polylines whose segments are drawn only
into the slab they cross, textures are analytic functions of (z, y, x) and the
noise of slice z comes from its own seed, so a slab renders bit-identically
however the volume is cut, and a paper-scale case (1072 x 470 x 470) is
written to Zarr in a few hundred MB of memory.

Example:
    >>> spec = make_phantom_dataset("runs/phantom", cases=6)   # doctest: +SKIP
    >>> image, label = render_case(PhantomConfig(), seed=0, case=0, z0=60, z1=68)
    >>> image.dtype, label.shape
    (dtype('uint16'), (8, 96, 96))
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.spatial import cKDTree

from meunet.data.io import ZarrSlabWriter, detect_format, write_volume

__all__ = [
    "CLASSES",
    "PhantomConfig",
    "PhantomGeometry",
    "Tube",
    "make_phantom_dataset",
    "phantom_geometry",
    "render_case",
    "tube_map",
    "write_case",
]

CLASSES = ("background", "mid-gut", "hind-gut")
MIN_SIZE = 32  # voxels per axis; below this the tubes no longer fit in the body
MAX_IN_MEMORY_BYTES = 512 << 20  # image + label a non-Zarr output may hold in memory
_REFERENCE_SIZE = 96.0  # geometry defaults are in voxels at min(y, x) = 96
_RENDER_DEPTH = 16  # slices rendered at once; bounds the float32 temporaries
_WOBBLE = 0.05  # relative amplitude of the body's low-frequency boundary wobble
_TRIES = 24  # direction proposals per centreline step before a walk is stuck
_BACKTRACKS = 40  # times a stuck walk may undo steps before it stops (or overlaps)
_NOISE_STREAM = 1  # spawn key of the per-slice noise seeds (apart from the geometry's)


@dataclass(frozen=True)
class PhantomConfig:
    """What a phantom case looks like. Lengths are voxels at min(y, x) = 96."""

    shape: tuple[int, int, int] = (128, 96, 96)  # (z, y, x) voxels; each axis >= 32
    # Voxel size in micrometres, like the paper's fly scans.
    spacing: tuple[float, float, float] = (2.95, 2.95, 2.95)
    midgut_radius: float = 6.0  # scaled by min(y, x) / 96
    hindgut_ratio: float = 1 / 3  # hind-gut radius / mid-gut radius
    midgut_share: float = 0.08  # mid-gut volume / body volume
    hindgut_share: tuple[float, float] = (0.045, 0.07)  # hind-gut / foreground, drawn per case
    persistence: float = 4.0  # centreline persistence length in mid-gut radii (smaller: curlier)
    thin_distractors: tuple[int, int] = (2, 4)  # inclusive range of hind-gut-like label-0 tubes
    thick_distractor_p: float = 0.5  # chance of one mid-gut-like label-0 tube
    gap: float = 3.0  # clearance between distinct tubes beyond their radii; scaled
    air_level: float = 3000.0  # grey values of the uint16 image
    body_level: float = 14000.0
    tube_level: float = 26000.0
    noise_sd: float = 1500.0  # per-voxel Gaussian noise, the same everywhere
    body_texture_sd: float = 1500.0
    tube_texture_sd: float = 500.0
    texture_waves: int = 3  # low-frequency 3D sinusoids per texture
    body_period: tuple[float, float] = (16.0, 48.0)  # range of the body texture's periods; scaled
    tube_period: tuple[float, float] = (6.0, 16.0)  # range of the tube texture's periods; scaled

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < MIN_SIZE:
            raise ValueError(
                f"phantom shape {tuple(self.shape)}: need three axes (z, y, x) of at least "
                f"{MIN_SIZE} voxels each, e.g. (128, 96, 96)"
            )
        object.__setattr__(self, "shape", shape)
        if not 0 < self.hindgut_ratio < 1 or not 0 < self.midgut_share < 0.5:
            raise ValueError("hindgut_ratio must lie in (0, 1) and midgut_share in (0, 0.5)")
        if not 0 < self.hindgut_share[0] <= self.hindgut_share[1] < 0.5:
            raise ValueError(f"hindgut_share {self.hindgut_share}: need 0 < low <= high < 0.5")

    @property
    def scale(self) -> float:
        """Size of this volume relative to the reference min(y, x) = 96."""
        return min(self.shape[1:]) / _REFERENCE_SIZE

    @property
    def radii(self) -> tuple[float, float]:
        """Mid-gut and hind-gut radii in voxels at this shape."""
        r1 = max(3.0, self.midgut_radius * self.scale)
        return r1, max(1.0, r1 * self.hindgut_ratio)


@dataclass(frozen=True, eq=False)
class Tube:
    """A tube: a polyline centreline with one radius.

    Attributes:
        points: (n, 3) centreline points, voxel coordinates (z, y, x).
        radius: Voxels within this distance of the centreline are inside.
        tube_id: 1 mid-gut, 2 hind-gut, 3 and up distractors (label 0).
        step: Nominal spacing of the centreline points.
    """

    points: np.ndarray
    radius: float
    tube_id: int
    step: float


@dataclass(frozen=True, eq=False)
class PhantomGeometry:
    """Everything random about one case except the per-voxel noise."""

    centre: np.ndarray  # (3,) body centre (z, y, x)
    axes: np.ndarray  # (3,) body semi-axes
    tubes: tuple[Tube, ...]
    waves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> (k, phase, amplitude)


def phantom_geometry(cfg: PhantomConfig, seed: int, case: int) -> PhantomGeometry:
    """Body, tubes and textures of one case, from ``SeedSequence([seed, case])``."""
    return _scene(cfg, seed, case).geometry


def render_case(
    cfg: PhantomConfig, seed: int, case: int, z0: int = 0, z1: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint16) and label (uint8) slab ``z0:z1`` of one case.

    The result does not depend on how the volume is cut into slabs.

    Args:
        cfg: Phantom configuration.
        seed: Dataset seed (>= 0).
        case: Case index (>= 0); each case has its own geometry.
        z0: First slice.
        z1: One past the last slice; the whole depth by default.
    """
    image, label, _ = _render(cfg, seed, case, z0, z1)
    return image, label


def tube_map(
    cfg: PhantomConfig, seed: int, case: int, z0: int = 0, z1: int | None = None
) -> np.ndarray:
    """Which tube covers each voxel of slab ``z0:z1`` (uint8).

    0 outside every tube, 1 mid-gut, 2 hind-gut, 3 and up distractors: the
    label volume before distractors are erased to background.
    """
    return _render(cfg, seed, case, z0, z1)[2]


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
            raise ValueError(
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

    Returns:
        Path of the written ``dataset.yaml``.

    Example:
        >>> make_phantom_dataset("runs/phantom", cases=6, seed=0)  # doctest: +SKIP
        PosixPath('runs/phantom/dataset.yaml')
    """
    from tqdm.auto import tqdm

    if int(cases) < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if fmt.lower().lstrip(".") not in _SUFFIX:
        raise ValueError(f"unknown phantom format {fmt!r}; choose one of {sorted(set(_SUFFIX))}")
    _check_seed(seed, 0)
    cfg = PhantomConfig(shape=tuple(shape))  # type: ignore[arg-type]
    suffix = _SUFFIX[fmt.lower().lstrip(".")]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        ),
        "classes": list(CLASSES),
        "channels": ["ct"],
        "cases": entries,
        "split": _split(names),
    }
    path = out / "dataset.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))
    return path


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


# --------------------------------------------------------------------------- geometry


def _check_seed(seed: int, case: int) -> None:
    if int(seed) < 0 or int(case) < 0:
        raise ValueError(
            f"seed and case must be non-negative integers, got seed={seed}, case={case}"
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _waves(
    rng: np.random.Generator, n: int, periods: tuple[float, float], sd: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wave vectors, phases and amplitudes of ``n`` sinusoids summing to about ``sd``."""
    k = np.array([_unit(rng.standard_normal(3)) for _ in range(n)]).reshape(n, 3)
    k *= (2 * np.pi / rng.uniform(periods[0], periods[1], n))[:, None]
    return k, rng.uniform(0, 2 * np.pi, n), np.full(n, sd * math.sqrt(2.0 / n))


class _Walker:
    """Grows smooth random centrelines inside the body, clear of other tubes."""

    def __init__(
        self, cfg: PhantomConfig, rng: np.random.Generator, centre: np.ndarray, axes: np.ndarray
    ) -> None:
        self.rng, self.centre, self.axes = rng, centre, axes
        self.gap = max(2.0, cfg.gap * cfg.scale)
        self.persistence = cfg.persistence * cfg.radii[0]

    def rho(self, p: np.ndarray) -> float:
        return float(np.linalg.norm((p - self.centre) / self.axes))

    def limit(self, radius: float) -> float:
        # Points with rho <= 1 - d/min(axes) lie d voxels inside the ellipsoid, and the
        # wobbled body boundary is never inside rho = 1 - _WOBBLE.
        return 1.0 - _WOBBLE - (radius + self.gap) / float(self.axes.min())

    def walk(
        self,
        start: np.ndarray,
        direction: np.ndarray,
        length: float,
        radius: float,
        others: list[Tube],
        overlap_ok: bool = False,
        junction: tuple[np.ndarray, np.ndarray, float] | None = None,
    ) -> np.ndarray:
        """Centreline from ``start``: stops early when stuck unless ``overlap_ok``.

        ``junction`` = (point, direction, reach): within ``reach`` of the point the
        walk may overlap ``others`` but must stay in a cone around the direction.
        """
        step = max(1.0, 0.5 * radius)
        sigma = math.sqrt(step / self.persistence)
        limit = self.limit(radius)
        tree, o_pts, o_req = None, np.empty((0, 3)), np.empty(0)
        if others:
            o_pts = np.concatenate([t.points for t in others])
            o_req = np.concatenate([np.full(len(t.points), t.radius + t.step / 2) for t in others])
            o_req = o_req + radius + step / 2 + self.gap
            tree = cKDTree(o_pts)
        near_junction = None
        if junction is not None:
            near_junction = np.linalg.norm(o_pts - junction[0], axis=1) < junction[2]
        own_skip = math.ceil(3.5 * radius / step) + 1
        own_req = 2 * radius + step + self.gap

        def clearance(p: np.ndarray, pts: list[np.ndarray]) -> float:
            """Distance to spare between proposal ``p`` and everything it must avoid."""
            if self.rho(p) > limit:
                return -np.inf
            clear, skip = np.inf, None
            if junction is not None and np.linalg.norm(p - junction[0]) < junction[2]:
                clear = float(np.dot(_unit(p - junction[0]), junction[1])) - 0.7
                skip = near_junction
            if tree is not None:
                near = np.asarray(tree.query_ball_point(p, float(o_req.max())), dtype=int)
                if skip is not None:
                    near = near[~skip[near]]
                if len(near):
                    clear = min(
                        clear, float(np.min(np.linalg.norm(o_pts[near] - p, axis=1) - o_req[near]))
                    )
            if len(pts) > own_skip:
                own = np.linalg.norm(np.asarray(pts[:-own_skip]) - p, axis=1).min() - own_req
                clear = min(clear, float(own))
            return clear

        pts, d = [np.asarray(start, float)], _unit(np.asarray(direction, float))
        n_steps, backtracks = math.ceil(length / step), 0
        while len(pts) <= n_steps:
            p0 = pts[-1]
            q = (p0 - self.centre) / self.axes
            if np.linalg.norm(q) > 0.7 * limit:  # turn away from the wall before hitting it
                d = _unit(d - 0.6 * sigma * _unit(q / self.axes))
            best, best_clear = None, -np.inf
            for attempt in range(_TRIES):
                nd = _unit(d + sigma * (1 + attempt / 4) * self.rng.standard_normal(3))
                clear = clearance(p0 + step * nd, pts)
                if clear > best_clear:
                    best_clear, best = clear, (p0 + step * nd, nd)
                if clear >= 0:
                    break
            if best is not None and (best_clear >= 0 or (overlap_ok and backtracks >= _BACKTRACKS)):
                pts.append(best[0])
                d = best[1]
            elif backtracks < _BACKTRACKS and len(pts) > 1:
                # Stuck: undo a few steps (more each time) and try another way.
                backtracks += 1
                del pts[max(1, len(pts) - 2 - backtracks // 2) :]
                d = (
                    _unit(pts[-1] - pts[-2])
                    if len(pts) > 1
                    else _unit(np.asarray(direction, float))
                )
            else:
                break
        return np.asarray(pts)

    def inner_point(self, radius: float, others: list[Tube], tries: int = 200) -> np.ndarray | None:
        """A random point where a tube of ``radius`` may start, clear of ``others``."""
        limit = self.limit(radius)
        for _ in range(tries):
            u = _unit(self.rng.standard_normal(3)) * self.rng.uniform() ** (1 / 3) * limit
            p = self.centre + u * self.axes
            clear = all(
                np.linalg.norm(t.points - p, axis=1).min() > t.radius + radius + self.gap + t.step
                for t in others
            )
            if clear:
                return p
        return None


def _make_geometry(cfg: PhantomConfig, seed: int, case: int) -> PhantomGeometry:
    rng = np.random.default_rng(np.random.SeedSequence([seed, case]))
    n = np.asarray(cfg.shape, float)
    centre = (n - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * n
    half = np.minimum(centre, n - 1 - centre) - 1
    axes = half * rng.uniform(0.82, 0.92, 3) / (1 + _WOBBLE)
    body_periods = (cfg.body_period[0] * cfg.scale, cfg.body_period[1] * cfg.scale)
    tube_periods = (cfg.tube_period[0] * cfg.scale, cfg.tube_period[1] * cfg.scale)
    waves = {
        "body": _waves(rng, cfg.texture_waves, body_periods, cfg.body_texture_sd),
        "tube": _waves(rng, cfg.texture_waves, tube_periods, cfg.tube_texture_sd),
        "wobble": _waves(rng, 2, (1.0 * axes.min(), 2.0 * axes.min()), _WOBBLE / math.sqrt(2)),
    }
    walker = _Walker(cfg, rng, centre, axes)
    r1, r2 = cfg.radii
    body_volume = 4 / 3 * np.pi * float(np.prod(axes))
    v1 = cfg.midgut_share * body_volume
    length1 = max(4 * r1, (v1 - 4 / 3 * np.pi * r1**3) / (np.pi * r1**2))
    share = rng.uniform(*cfg.hindgut_share)
    # The hind-gut's first r1 voxels lie inside the mid-gut and count as mid-gut.
    length2 = (share / (1 - share) * v1 - 2 / 3 * np.pi * r2**3) / (np.pi * r2**2) + r1
    best: tuple[float, Tube, Tube] | None = None
    for _ in range(12):
        start = walker.inner_point(r1, [])
        assert start is not None  # the empty body always has room
        mid = walker.walk(start, rng.standard_normal(3), length1, r1, [], overlap_ok=True)
        midgut = Tube(mid, r1, 1, max(1.0, 0.5 * r1))
        for end, inward in ((mid[-1], mid[-2]), (mid[0], mid[1])):
            out = _unit(end - inward)
            reach = r1 + r2 + walker.gap + max(1.0, 0.5 * r1) + max(1.0, 0.5 * r2)
            hind = walker.walk(end, out, length2, r2, [midgut], junction=(end, out, reach))
            got = (len(hind) - 1) * max(1.0, 0.5 * r2)
            if best is None or got > best[0]:
                best = (got, midgut, Tube(hind, r2, 2, max(1.0, 0.5 * r2)))
            if got >= 0.9 * length2:
                break
        if best[0] >= 0.9 * length2:
            break
    assert best is not None
    tubes = [best[1], best[2]]
    n_thin = int(rng.integers(cfg.thin_distractors[0], cfg.thin_distractors[1] + 1))
    specs = [(r2, 0.4, 0.8, length2)] * n_thin
    if rng.uniform() < cfg.thick_distractor_p:
        specs.append((r1, 0.15, 0.3, length1))
    for base_r, lo, hi, base_len in specs:
        radius = base_r * rng.uniform(0.85, 1.15)
        want = rng.uniform(lo, hi) * base_len
        found = None
        for _ in range(20):
            start = walker.inner_point(radius, tubes)
            if start is None:
                break
            pts = walker.walk(start, rng.standard_normal(3), want, radius, tubes)
            if len(pts) > 1 and (found is None or len(pts) > len(found)):
                found = pts
            if (len(pts) - 1) * max(1.0, 0.5 * radius) >= 0.5 * want:
                break
        if found is not None:
            tubes.append(Tube(found, radius, len(tubes) + 1, max(1.0, 0.5 * radius)))
    for t in tubes:
        t.points.setflags(write=False)
    return PhantomGeometry(centre, axes, tuple(tubes), waves)


# -------------------------------------------------------------------------- rendering


class _Scene:
    """A case's geometry and its slab-independent precomputations."""

    def __init__(self, cfg: PhantomConfig, seed: int, case: int) -> None:
        self.cfg, self.seed, self.case = cfg, seed, case
        self.geometry = g = _make_geometry(cfg, seed, case)
        _, ny, nx = cfg.shape
        y, x = np.arange(ny, dtype=float), np.arange(nx, dtype=float)
        f32 = np.float32
        # Textures are sums of sin(kz z + ky y + kx x + phase): the (y, x) factor of each
        # wave is computed once, its z factor per slice, so no value depends on the slab.
        self.planes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for name, (k, _, _) in g.waves.items():
            angle = [kk[1] * y[:, None] + kk[2] * x[None, :] for kk in k]
            self.planes[name] = [(np.cos(a).astype(f32), np.sin(a).astype(f32)) for a in angle]
        dy, dx = (y - g.centre[1]) / g.axes[1], (x - g.centre[2]) / g.axes[2]
        self.rho_yx = (dy[:, None] ** 2 + dx[None, :] ** 2).astype(np.float32)
        self.segments = []
        for t in g.tubes:
            a, b = t.points[:-1], t.points[1:]
            lo = np.floor(np.minimum(a, b) - t.radius - 1).astype(int)
            hi = np.ceil(np.maximum(a, b) + t.radius + 1).astype(int)
            lo, hi = np.maximum(lo, 0), np.minimum(hi, np.asarray(cfg.shape) - 1)
            self.segments.append((t, a, b, lo, hi))

    def texture(self, name: str, zs: np.ndarray) -> np.ndarray:
        k, phase, amp = self.geometry.waves[name]
        out = np.zeros((len(zs), *self.cfg.shape[1:]), np.float32)
        for (cos_yx, sin_yx), kk, ph, a in zip(self.planes[name], k, phase, amp, strict=True):
            angle = kk[0] * zs + ph
            s_z = (a * np.sin(angle)).astype(np.float32)[:, None, None]
            c_z = (a * np.cos(angle)).astype(np.float32)[:, None, None]
            out += s_z * cos_yx
            out += c_z * sin_yx
        return out

    def tubes(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to the nearest tube surface (clipped at 1) and that tube's id."""
        sdf = np.ones((z1 - z0, *self.cfg.shape[1:]), np.float32)
        ids = np.zeros(sdf.shape, np.uint8)
        for tube, a_pts, b_pts, lo, hi in self.segments:
            for i in np.flatnonzero((lo[:, 0] < z1) & (hi[:, 0] >= z0)):
                _stamp(sdf, ids, z0, z1, a_pts[i], b_pts[i], tube, lo[i], hi[i])
        return sdf, ids

    def render(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg, g = self.cfg, self.geometry
        zs = np.arange(z0, z1, dtype=float)
        rho_z = (((zs - g.centre[0]) / g.axes[0]) ** 2).astype(np.float32)
        rho = np.sqrt(self.rho_yx + rho_z[:, None, None])
        edge = (rho - 1 - self.texture("wobble", zs)) * np.float32(g.axes.min())
        inside_body = np.clip(0.5 - edge, 0, 1)
        del rho, edge
        body = self.texture("body", zs)
        body += np.float32(cfg.body_level - cfg.air_level)
        body *= inside_body
        body += np.float32(cfg.air_level)
        del inside_body
        sdf, ids = self.tubes(z0, z1)
        inside = sdf <= 0
        tube = self.texture("tube", zs)
        tube += np.float32(cfg.tube_level)
        # Inside a tube: the tube's value, untouched; in the one-voxel rim outside it, a blend.
        rim = np.clip(1 - sdf, 0, 1)
        value = np.where(inside, tube, body + rim * (tube - body))
        del body, tube, rim, sdf
        noise = np.empty(value.shape, np.float32)
        for i, z in enumerate(range(z0, z1)):
            seq = np.random.SeedSequence([self.seed, self.case, z], spawn_key=(_NOISE_STREAM,))
            np.random.default_rng(seq).standard_normal(out=noise[i], dtype=np.float32)
        value += noise * np.float32(cfg.noise_sd)
        del noise
        image = np.rint(np.clip(value, 0, 65535)).astype(np.uint16)
        tube_ids = np.where(inside, ids, 0).astype(np.uint8)
        label = np.where(tube_ids <= 2, tube_ids, 0).astype(np.uint8)
        return image, label, tube_ids


def _stamp(
    sdf: np.ndarray, ids: np.ndarray, z0: int, z1: int,
    a: np.ndarray, b: np.ndarray, tube: Tube, lo: np.ndarray, hi: np.ndarray,
) -> None:  # fmt: skip
    """Lower ``sdf`` to the distance from segment a-b minus the radius, in its box."""
    za, zb = max(int(lo[0]), z0), min(int(hi[0]) + 1, z1)
    ya, yb, xa, xb = int(lo[1]), int(hi[1]) + 1, int(lo[2]), int(hi[2]) + 1
    if za >= zb or ya >= yb or xa >= xb:
        return
    f32 = np.float32
    pz = (np.arange(za, zb) - a[0]).astype(f32)[:, None, None]
    py = (np.arange(ya, yb) - a[1]).astype(f32)[None, :, None]
    px = (np.arange(xa, xb) - a[2]).astype(f32)[None, None, :]
    d = (b - a).astype(f32)
    dd = float(np.dot(b - a, b - a))
    t = pz * d[0] + py * d[1] + px * d[2]
    t *= f32(1 / dd) if dd > 0 else f32(0)
    np.clip(t, 0, 1, out=t)
    dist2 = np.square(pz - t * d[0])
    dist2 += np.square(py - t * d[1])
    dist2 += np.square(px - t * d[2])
    dist = np.sqrt(dist2, out=dist2)
    dist -= f32(tube.radius)
    box = (slice(za - z0, zb - z0), slice(ya, yb), slice(xa, xb))
    closer = dist < sdf[box]
    np.copyto(sdf[box], dist, where=closer)
    np.copyto(ids[box], tube.tube_id, where=closer)


@functools.lru_cache(maxsize=4)
def _scene(cfg: PhantomConfig, seed: int, case: int) -> _Scene:
    return _Scene(cfg, seed, case)


def _render(
    cfg: PhantomConfig, seed: int, case: int, z0: int, z1: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check_seed(seed, case)
    nz, ny, nx = cfg.shape
    z1 = nz if z1 is None else int(z1)
    if not 0 <= z0 < z1 <= nz:
        raise ValueError(f"slab z0:z1 = {z0}:{z1} is not a non-empty range inside depth {nz}")
    scene = _scene(cfg, int(seed), int(case))
    image = np.empty((z1 - z0, ny, nx), np.uint16)
    label = np.empty(image.shape, np.uint8)
    ids = np.empty(image.shape, np.uint8)
    for a in range(z0, z1, _RENDER_DEPTH):
        b = min(z1, a + _RENDER_DEPTH)
        image[a - z0 : b - z0], label[a - z0 : b - z0], ids[a - z0 : b - z0] = scene.render(a, b)
    return image, label, ids
