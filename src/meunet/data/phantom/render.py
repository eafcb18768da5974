"""Rendering a slab of a case: tubes stamped segment by segment, analytic textures, per-slice noise."""

from __future__ import annotations

import functools

import numpy as np
from scipy.spatial import cKDTree

from meunet.data.phantom.config import PhantomConfig
from meunet.data.phantom.geometry import PhantomGeometry, Tube, check_seed, make_geometry

_RENDER_DEPTH = 16  # slices rendered at once; bounds the float32 temporaries
_NOISE_STREAM = 1  # spawn key of the per-slice noise seeds (apart from the geometry's)


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
    label volume before distractors are erased to background. Context markers
    are not tubes (0); which tubes are thin is ``phantom_geometry(...).context_ids``.
    """
    return _render(cfg, seed, case, z0, z1)[2]


class _Scene:
    """A case's geometry and its slab-independent precomputations."""

    def __init__(self, cfg: PhantomConfig, seed: int, case: int) -> None:
        self.cfg, self.seed, self.case = cfg, seed, case
        self.geometry = g = make_geometry(cfg, seed, case)
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
        # Per kind (bright, dark): a tree of the marker centres (None if there are none).
        self.kinds = []
        for kind in (True, False):
            centres = g.markers[g.cues == kind]
            self.kinds.append((cKDTree(centres) if len(centres) else None, centres))
        self.context_ids = np.asarray(g.context_ids, np.uint8)

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
        if self.context_ids.size:
            # Context mode: cut the thin tubes (rims included) where the class would be a
            # near call (see ``thin_class``).
            idx = np.argwhere(np.isin(ids, self.context_ids))
            cut = tuple(idx[self.thin_class(idx, z0) < 0].T)
            sdf[cut], ids[cut] = 1, 0
        return sdf, ids

    def thin_class(self, idx: np.ndarray, z0: int) -> np.ndarray:
        """Context mode's rule for thin-tube voxels ``idx`` (n, 3) of a slab from ``z0``.

        2 where a bright marker's centre lies within D and no dark one within
        (1 + margin) D; 0 the other way round; -1 (cut away) otherwise.
        Distances are Euclidean, from whole-voxel centres (exact, as in a
        distance transform).
        """
        cfg = self.cfg
        idx = idx + np.array([z0, 0, 0])
        far = cfg.context_distance * (1 + cfg.context_margin)
        bright, dark = (self.nearest(tree, centres, idx) for tree, centres in self.kinds)
        out = np.full(len(idx), -1, np.int8)
        out[(bright <= cfg.context_distance) & (dark > far)] = 2
        out[(dark <= cfg.context_distance) & (bright > far)] = 0
        return out

    @staticmethod
    def nearest(tree: cKDTree | None, centres: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Distance from each voxel of ``idx`` to the nearest of ``centres`` (inf if none)."""
        if tree is None:
            return np.full(len(idx), np.inf)
        _, i = tree.query(idx)
        return np.sqrt(np.sum(np.square(idx - centres[i]), axis=1))

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
        if len(self.geometry.markers):
            self.add_markers(value, z0, z1)
        noise = np.empty(value.shape, np.float32)
        for i, z in enumerate(range(z0, z1)):
            seq = np.random.SeedSequence([self.seed, self.case, z], spawn_key=(_NOISE_STREAM,))
            np.random.default_rng(seq).standard_normal(out=noise[i], dtype=np.float32)
        value += noise * np.float32(cfg.noise_sd)
        del noise
        image = np.rint(np.clip(value, 0, 65535)).astype(np.uint16)
        tube_ids = np.where(inside, ids, 0).astype(np.uint8)
        if self.context_ids.size:
            label = self.context_label(tube_ids, z0)
        else:
            label = np.where(tube_ids <= 2, tube_ids, 0).astype(np.uint8)
        return image, label, tube_ids

    def add_markers(self, value: np.ndarray, z0: int, z1: int) -> None:
        """Paint the markers over ``value``: flat at their level inside, blended in a rim."""
        r, g = self.cfg.marker_r, self.geometry
        for c, cue in zip(g.markers, g.cues, strict=True):
            level = np.float32(self.cfg.marker_level if cue else self.cfg.dark_marker_level)
            lo = np.maximum(np.floor(c - r - 1).astype(int), (z0, 0, 0))
            hi = np.minimum(np.ceil(c + r + 1).astype(int) + 1, (z1, *value.shape[1:]))
            if np.any(lo >= hi):
                continue
            zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            dist = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) - r
            weight = np.clip(1 - dist, 0, 1).astype(np.float32)  # 1 inside, a rim outside
            box = value[lo[0] - z0 : hi[0] - z0, lo[1] : hi[1], lo[2] : hi[2]]
            box += weight * (level - box)

    def context_label(self, tube_ids: np.ndarray, z0: int) -> np.ndarray:
        """Context mode's labels: the mid-gut is 1; a voxel of a thin tube is 2 iff a bright
        marker's centre lies within D of it (a dark one's then lies beyond (1 + margin) D);
        all else 0."""
        label = (tube_ids == 1).astype(np.uint8)
        thin = np.isin(tube_ids, self.context_ids)
        if not thin.any():
            return label
        label[thin] = self.thin_class(np.argwhere(thin), z0)  # never -1: those were cut
        return label


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
    check_seed(seed, case)
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
