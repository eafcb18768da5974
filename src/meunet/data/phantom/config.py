"""What a phantom case looks like: :class:`PhantomConfig` and the constants."""

from __future__ import annotations

from dataclasses import dataclass

from meunet.errors import SettingError

CLASSES = ("background", "mid-gut", "hind-gut")
MIN_SIZE = 32  # voxels per axis; below this the tubes no longer fit in the body
_REFERENCE_SIZE = 96.0  # geometry defaults are in voxels at min(y, x) = 96
WOBBLE = 0.05  # relative amplitude of the body's low-frequency boundary wobble
BODY_FILL = (0.82, 0.92)  # range of the body's semi-axes over the volume's half sizes
CENTRE_JITTER = 0.02  # the body's centre moves by up to this share of each axis
_MIN_ROOM = 0.05  # least share of the body's radius left to the mid-gut's centreline


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
    # Context mode (> 0): every thin-tube voxel lies within this many voxels (not scaled) of
    # a marker, and is hind-gut iff that marker is a bright one, background iff a dark one;
    # 0 gives the classic phantom, byte for byte.
    context_distance: float = 0.0
    marker_radius: float = 2.0  # context mode's spherical markers; scaled
    marker_level: float = 42000.0  # bright markers' grey value, brighter than anything else
    dark_marker_level: float = 3000.0  # dark markers' grey value, the air's, inside the body
    # Thin tubes are cut away where no marker lies within D, or a marker of the other kind
    # lies within (1 + margin) D: a voxel's class is never a near call.
    context_margin: float = 0.5

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < MIN_SIZE:
            raise SettingError(
                f"phantom shape {tuple(self.shape)}: need three axes (z, y, x) of at least "
                f"{MIN_SIZE} voxels each, e.g. (128, 96, 96)"
            )
        object.__setattr__(self, "shape", shape)
        if self.room(min(shape)) < _MIN_ROOM:
            thinnest = next(
                n for n in range(min(shape), 100 * max(shape)) if self.room(n) >= _MIN_ROOM
            )
            raise SettingError(
                f"phantom shape {shape}: an axis of {min(shape)} voxels is too thin for tubes "
                f"sized for y, x = {shape[1]}, {shape[2]} (mid-gut radius {self.radii[0]:.1f}); "
                f"make every axis at least {thinnest} voxels, or y and x smaller"
            )
        if not 0 < self.hindgut_ratio < 1 or not 0 < self.midgut_share < 0.5:
            raise SettingError("hindgut_ratio must lie in (0, 1) and midgut_share in (0, 0.5)")
        if not 0 < self.hindgut_share[0] <= self.hindgut_share[1] < 0.5:
            raise SettingError(f"hindgut_share {self.hindgut_share}: need 0 < low <= high < 0.5")
        if not self.context_distance >= 0:
            raise SettingError(
                f"context_distance {self.context_distance}: need a distance >= 0 in voxels "
                "(0: the classic phantom)"
            )
        if 0 < self.context_distance < self.min_context_distance:
            raise SettingError(
                f"context_distance {self.context_distance}: markers cannot sit clear of the thin "
                f"tubes that close at shape {shape}; use at least {self.min_context_distance:.1f} "
                "voxels (or 0 for the classic phantom)"
            )
        if not self.context_margin >= 0:
            raise SettingError(f"context_margin {self.context_margin}: need a fraction of D >= 0")

    @property
    def scale(self) -> float:
        """Size of this volume relative to the reference min(y, x) = 96."""
        return min(self.shape[1:]) / _REFERENCE_SIZE

    @property
    def radii(self) -> tuple[float, float]:
        """Mid-gut and hind-gut radii in voxels at this shape."""
        r1 = max(3.0, self.midgut_radius * self.scale)
        return r1, max(1.0, r1 * self.hindgut_ratio)

    @property
    def tube_gap(self) -> float:
        """Clearance between distinct tubes (and markers) beyond their radii, in voxels."""
        return max(2.0, self.gap * self.scale)

    def room(self, n: int) -> float:
        """Share of the body's radius, in the worst case along an axis of ``n`` voxels, that
        lies inside the wobble and clear of the mid-gut's radius and gap."""
        half = (n - 1) / 2 - CENTRE_JITTER * n - 1
        semi_axis = half * BODY_FILL[0] / (1 + WOBBLE)
        return 1 - WOBBLE - (self.radii[0] + self.tube_gap) / semi_axis

    @property
    def marker_r(self) -> float:
        """Radius of the context markers in voxels at this shape."""
        return max(1.5, self.marker_radius * self.scale)

    @property
    def min_context_distance(self) -> float:
        """Shortest D at which a marker fits clear of a thin tube (radius, half a centreline
        step, marker radius and gap) with a voxel to spare, yet within D/2 of its centreline."""
        r2 = self.radii[1]
        return 2 * (r2 + max(1.0, 0.5 * r2) / 2 + self.marker_r + self.tube_gap + 1)
