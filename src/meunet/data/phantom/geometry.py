"""The random part of a case: body, tube centrelines (smooth random walks) and textures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from meunet.data.phantom.config import BODY_FILL, CENTRE_JITTER, WOBBLE, PhantomConfig
from meunet.errors import SettingError

_TRIES = 24  # direction proposals per centreline step before a walk is stuck
_BACKTRACKS = 40  # times a stuck walk may undo steps before it stops (or overlaps)
_CONTEXT_EXTRA_THIN = 2  # thin distractors added in context mode, so both classes are ample
_CONTEXT_COVER = 0.8  # share of thin centreline the markers aim to bring within reach
_MARKER_TRIES = 20000  # marker candidates drawn per case (a vectorised draw)


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
    # Context mode only: marker centres, (m, 3) whole voxel coordinates (z, y, x), their
    # kinds (m,) (True: a bright cue of class 2, False: a dark cue of background), and the
    # ids of the thin tubes whose voxels the marker rule labels.
    markers: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))
    cues: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    context_ids: tuple[int, ...] = ()


def check_seed(seed: int, case: int) -> None:
    if int(seed) < 0 or int(case) < 0:
        raise SettingError(
            f"seed and case must be non-negative integers, got seed={seed}, case={case}"
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _step(radius: float) -> float:
    """Spacing of centreline points: half the radius, so segments are short next to the tube."""
    return max(1.0, 0.5 * radius)


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
        self.gap = cfg.tube_gap
        self.persistence = cfg.persistence * cfg.radii[0]

    def rho(self, p: np.ndarray) -> float:
        return float(np.linalg.norm((p - self.centre) / self.axes))

    def limit(self, radius: float) -> float:
        # Points with rho <= 1 - d/min(axes) lie d voxels inside the ellipsoid, and the
        # wobbled body boundary is never inside rho = 1 - WOBBLE.
        return 1.0 - WOBBLE - (radius + self.gap) / float(self.axes.min())

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
        step = _step(radius)
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


def make_geometry(cfg: PhantomConfig, seed: int, case: int) -> PhantomGeometry:
    rng = np.random.default_rng(np.random.SeedSequence([seed, case]))
    n = np.asarray(cfg.shape, float)
    centre = (n - 1) / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 3) * n
    half = np.minimum(centre, n - 1 - centre) - 1
    axes = half * rng.uniform(*BODY_FILL, 3) / (1 + WOBBLE)
    body_periods = (cfg.body_period[0] * cfg.scale, cfg.body_period[1] * cfg.scale)
    tube_periods = (cfg.tube_period[0] * cfg.scale, cfg.tube_period[1] * cfg.scale)
    waves = {
        "body": _waves(rng, cfg.texture_waves, body_periods, cfg.body_texture_sd),
        "tube": _waves(rng, cfg.texture_waves, tube_periods, cfg.tube_texture_sd),
        "wobble": _waves(rng, 2, (1.0 * axes.min(), 2.0 * axes.min()), WOBBLE / math.sqrt(2)),
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
        if len(mid) < 2:
            continue
        midgut = Tube(mid, r1, 1, _step(r1))
        for end, inward in ((mid[-1], mid[-2]), (mid[0], mid[1])):
            out = _unit(end - inward)
            reach = r1 + r2 + walker.gap + _step(r1) + _step(r2)
            hind = walker.walk(end, out, length2, r2, [midgut], junction=(end, out, reach))
            got = (len(hind) - 1) * _step(r2)
            if best is None or got > best[0]:
                best = (got, midgut, Tube(hind, r2, 2, _step(r2)))
            if got >= 0.9 * length2:
                break
        if best[0] >= 0.9 * length2:
            break
    assert best is not None
    tubes = [best[1], best[2]]
    context = cfg.context_distance > 0
    n_thin = int(rng.integers(cfg.thin_distractors[0], cfg.thin_distractors[1] + 1))
    n_thin += _CONTEXT_EXTRA_THIN if context else 0
    specs = [(r2, 0.4, 0.8, length2, True)] * n_thin
    if rng.uniform() < cfg.thick_distractor_p:
        specs.append((r1, 0.15, 0.3, length1, False))
    context_ids = [2]
    for base_r, lo, hi, base_len, thin in specs:
        radius = base_r * rng.uniform(0.85, 1.15)
        if context and thin:
            radius = base_r  # every thin tube alike: only the markers tell them apart
        want = rng.uniform(lo, hi) * base_len
        found = None
        for _ in range(20):
            start = walker.inner_point(radius, tubes)
            if start is None:
                break
            pts = walker.walk(start, rng.standard_normal(3), want, radius, tubes)
            if len(pts) > 1 and (found is None or len(pts) > len(found)):
                found = pts
            if (len(pts) - 1) * _step(radius) >= 0.5 * want:
                break
        if found is not None:
            tubes.append(Tube(found, radius, len(tubes) + 1, _step(radius)))
            if thin:
                context_ids.append(len(tubes))
    for t in tubes:
        t.points.setflags(write=False)
    if not context:
        return PhantomGeometry(centre, axes, tuple(tubes), waves)
    thin_tubes = [t for t in tubes if t.tube_id in context_ids]
    markers, cues = _place_markers(cfg, rng, walker, tubes, thin_tubes)
    if not len(markers):  # every thin tube would be cut away
        raise SettingError(
            f"context_distance {cfg.context_distance:g}: no marker fits near a thin tube in case "
            f"{case} of seed {seed} at shape {cfg.shape}; use a larger distance or shape"
        )
    markers.setflags(write=False)
    cues.setflags(write=False)
    return PhantomGeometry(centre, axes, tuple(tubes), waves, markers, cues, tuple(context_ids))


def _place_markers(
    cfg: PhantomConfig,
    rng: np.random.Generator,
    walker: _Walker,
    tubes: list[Tube],
    thin: list[Tube],
) -> tuple[np.ndarray, np.ndarray]:
    """Marker centres (whole voxels) and kinds that bring most thin centreline within reach.

    Candidates are drawn uniformly in the body and kept when the nearest thin
    centreline lies within D/2 (so the stretch of tube within D of the marker
    is long, reaching D from it at both ends), every tube and marker is clear
    by the tube gap (a marker never touches a tube) and each brings new thin
    centreline within D. A marker takes the kind (bright cue or dark cue) with
    less centreline so far, so the classes are balanced, and keeps at least
    (2 + margin) D from markers of the other kind, so that no stretch of tube
    is near both. Drawing stops when the share of thin centreline within D
    reaches the cover target.
    """
    reach, rm = float(cfg.context_distance), cfg.marker_r
    apart = reach * (2 + cfg.context_margin)
    thin_pts = np.concatenate([t.points for t in thin])
    thin_tree = cKDTree(thin_pts)
    all_pts = np.concatenate([t.points for t in tubes])
    req = np.concatenate([np.full(len(t.points), t.radius + t.step / 2) for t in tubes])
    req += rm + walker.gap
    all_tree = cKDTree(all_pts)
    limit = walker.limit(rm)
    u = rng.standard_normal((_MARKER_TRIES, 3))
    u *= (rng.uniform(size=_MARKER_TRIES) ** (1 / 3) / np.linalg.norm(u, axis=1))[:, None]
    cand = np.rint(walker.centre + limit * u * walker.axes)
    rho = np.linalg.norm((cand - walker.centre) / walker.axes, axis=1)
    to_thin = thin_tree.query(cand)[0]
    cand = cand[(rho <= limit) & (to_thin <= reach / 2)]
    covered = np.zeros((2, len(thin_pts)), bool)  # thin centreline within D, per kind
    markers: list[np.ndarray] = []
    kinds: list[bool] = []
    for c in cand:
        if covered.any(axis=0).mean() >= _CONTEXT_COVER:
            break
        near = np.asarray(all_tree.query_ball_point(c, float(req.max())), dtype=int)
        if len(near) and np.any(np.linalg.norm(all_pts[near] - c, axis=1) <= req[near]):
            continue
        cue = bool(covered[1].sum() <= covered[0].sum())  # row 1: bright cues
        if markers:
            dist = np.linalg.norm(np.asarray(markers) - c, axis=1)
            if dist.min() < 2 * rm + walker.gap or np.any(dist[np.asarray(kinds) != cue] < apart):
                continue
        within = np.asarray(thin_tree.query_ball_point(c, reach), dtype=int)
        if not np.count_nonzero(~covered.any(axis=0)[within]):
            continue
        covered[int(cue), within] = True
        markers.append(c)
        kinds.append(cue)
    return np.asarray(markers, float).reshape(-1, 3), np.asarray(kinds, bool)
