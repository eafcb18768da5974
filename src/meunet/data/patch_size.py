"""Patch and window sizes: one side for a cube, or one per axis ``(z, y, x)``.

A size is written the way PyTorch writes a ``Conv3d`` kernel size: an int
``P`` means the cube ``(P, P, P)``; three values are the sides along z, y
and x. Configs, checkpoints and messages keep a cube as its int (so every
config and checkpoint written before per-axis sizes reads as it did) and
any other size as ``[Pz, Py, Px]``; code that needs the sides calls
:func:`patch_shape`.

:func:`auto_patch` is the spacing-aware default (``patch: auto``): like
nnU-Net's planner, it keeps the physical extent of the patch about equal
along the three axes, within a voxel budget, in multiples of the network's
divisor, and never larger than the volumes along an axis without saying so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meunet.errors import SettingError

Shape3 = tuple[int, int, int]
#: A patch or window size: a cube's side, or the sides along (z, y, x).
PatchSize = int | Shape3
AXES = ("z", "y", "x")
AUTO = "auto"
AUTO_CUBE = 64  # ``patch: auto`` keeps within this cube's voxels unless ``auto:N`` says otherwise


def patch_shape(size: PatchSize | Sequence[int]) -> Shape3:
    """The ``(z, y, x)`` sides of a size (an int is a cube).

    Example:
        >>> patch_shape(64), patch_shape([16, 64, 64])
        ((64, 64, 64), (16, 64, 64))
    """
    if isinstance(size, int | float) and not isinstance(size, bool):
        return (int(size),) * 3  # type: ignore[return-value]
    sides = tuple(int(v) for v in size)
    if len(sides) != 3:
        raise SettingError(f"a patch size is one side or three (z, y, x), got {list(sides)}")
    return (sides[0], sides[1], sides[2])


def compact(shape: Sequence[int] | int) -> PatchSize:
    """A size as configs write it: the int of a cube, else the (z, y, x) tuple.

    Example:
        >>> compact((32, 32, 32)), compact([16, 64, 64])
        (32, (16, 64, 64))
    """
    z, y, x = patch_shape(shape)
    return z if z == y == x else (z, y, x)


def parse_patch(value: Any, name: str = "patch", allow_auto: bool = False) -> PatchSize | str:
    """Read a size as a config, ``--set`` or a command line gives it.

    Accepts an int, three ints (a list, ``"16,64,64"``, ``"[16, 64, 64]"``,
    ``"16x64x64"``), and with ``allow_auto`` the words ``auto`` and ``auto:N``
    (the spacing-aware default within N^3 voxels). Returns :func:`compact`'s
    form, or the auto word (``"auto:64"``).

    Raises:
        SettingError: for anything else, naming ``name``.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if allow_auto and (text == AUTO or text.startswith(AUTO + ":")):
            cube = text.partition(":")[2] or str(AUTO_CUBE)
            if not cube.isdigit() or int(cube) < 16:
                raise SettingError(f"{name}: write auto or auto:N with N >= 16, got {value!r}")
            return f"{AUTO}:{int(cube)}"
        parts = [p for p in re.split(r"[\s,x\[\]()]+", text) if p]
        try:
            values: Any = [int(p) for p in parts]
        except ValueError:
            values = None
        if values is None or len(values) not in (1, 3):
            hint = " or auto" if allow_auto else ""
            raise SettingError(
                f"{name}: write one side (64) or three, z y x ([16, 64, 64]){hint}; got {value!r}"
            )
        return compact(values[0] if len(values) == 1 else values)
    if isinstance(value, bool):
        raise SettingError(f"{name}: expected a side or three (z, y, x), got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Iterable):
        items = list(value)
        if items and all(isinstance(v, str) for v in items):  # command-line words: 16 64 64
            return parse_patch(" ".join(items), name, allow_auto)
        if len(items) == 1:
            return parse_patch(items[0], name)
        if len(items) != 3 or not all(
            isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in items
        ):
            raise SettingError(f"{name}: expected one side or three (z, y, x), got {items!r}")
        return compact(items)
    raise SettingError(f"{name}: expected a side or three (z, y, x), got {value!r}")


def auto_cube(value: Any) -> int | None:
    """N of an ``auto:N`` size (``auto`` is ``auto:64``); None for a size that is not auto."""
    if isinstance(value, str) and value.startswith(AUTO):
        return int(value.partition(":")[2] or AUTO_CUBE)
    return None


def format_patch(size: PatchSize | Sequence[int]) -> str:
    """``64^3`` for a cube, ``16x64x64`` (z x y x x) otherwise.

    Example:
        >>> format_patch(64), format_patch((16, 64, 64))
        ('64^3', '16x64x64')
    """
    z, y, x = patch_shape(size)  # type: ignore[arg-type]
    return f"{z}^3" if z == y == x else f"{z}x{y}x{x}"


def voxels(size: PatchSize | Sequence[int]) -> int:
    """Voxels in a patch of this size."""
    return math.prod(patch_shape(size))  # type: ignore[arg-type]


def thin_axes(shape: Sequence[int], size: PatchSize | Sequence[int]) -> list[tuple[str, int, int]]:
    """``(axis, volume side, patch side)`` of each axis along which ``shape`` is thinner than the patch.

    Example:
        >>> thin_axes((20, 512, 512), (32, 64, 64))
        [('z', 20, 32)]
    """
    return [
        (AXES[i], int(n), p)
        for i, (n, p) in enumerate(zip(shape, patch_shape(size), strict=True))  # type: ignore[arg-type]
        if n < p
    ]


def fitting_patch(
    shapes: Iterable[Sequence[int]], size: PatchSize | Sequence[int], divisor: int = 16
) -> PatchSize:
    """``size`` lowered along each axis to the thinnest volume (in multiples of ``divisor``, at least one).

    What ``meunet check`` and the thin-volume warnings suggest.

    Example:
        >>> fitting_patch([(20, 512, 512)], 64)
        (16, 64, 64)
    """
    sides = list(patch_shape(size))  # type: ignore[arg-type]
    for shape in shapes:
        for i, n in enumerate(shape):
            sides[i] = min(sides[i], max(divisor, int(n) // divisor * divisor))
    return compact(sides)


def thin_message(
    shapes: Mapping[str, Sequence[int]],
    size: PatchSize,
    what: str = "patch",
    divisor: int = 16,
) -> str | None:
    """One line naming every case thinner than ``size`` along an axis, with a patch that fits; None if none is.

    ``what`` names the size (``"patch"``, ``"expanded patch"``, ``"window"``).
    """
    thin = {cid: thin_axes(shape, size) for cid, shape in shapes.items()}
    thin = {cid: axes for cid, axes in thin.items() if axes}
    if not thin:
        return None
    shown = "; ".join(
        f"{cid} {'x'.join(map(str, shapes[cid]))}: "
        + ", ".join(f"{a} {n} < {p}" for a, n, p in axes)
        for cid, axes in list(thin.items())[:5]
    ) + (f"; and {len(thin) - 5} more" if len(thin) > 5 else "")
    fit = fitting_patch([shapes[c] for c in thin], size, divisor)
    if what == "patch":
        fix = (
            f"a per-axis patch that fits is {format_patch(fit)} "
            f"(--set sampler.patch={_as_list(fit)}), or patch: auto"
        )
    elif what == "expanded patch":
        fix = "meU-net's deeper levels see zero padding there, as the volume holds no more context"
    else:
        fix = f"a window that fits is {format_patch(fit)} (--patch {' '.join(map(str, patch_shape(fit)))})"
    return (
        f"{what} {format_patch(size)} is larger than {len(thin)} volume(s) along an axis "
        f"({shown}): the rest of each is zero padding; {fix}"
    )


def as_json(size: PatchSize) -> int | list[int]:
    """A size as checkpoints and manifests record it: an int for a cube, else ``[z, y, x]``."""
    size = compact(size)
    return size if isinstance(size, int) else list(size)


def _as_list(size: PatchSize) -> str:
    z, y, x = patch_shape(size)
    return str(z) if z == y == x else f"[{z},{y},{x}]"


@dataclass(frozen=True)
class AutoPatch:
    """What :func:`auto_patch` chose, and why."""

    patch: PatchSize  # compact: an int for a cube
    spacing: tuple[float, float, float]  # the spacing it was chosen for
    budget: int  # voxels it had to keep within
    notes: tuple[str, ...]  # warnings: an axis thinner than the smallest patch side

    @property
    def extent(self) -> tuple[float, float, float]:
        """Physical size of the patch along (z, y, x), in the spacing's unit."""
        z, y, x = (p * s for p, s in zip(patch_shape(self.patch), self.spacing, strict=True))
        return (z, y, x)

    def describe(self) -> str:
        extent = " x ".join(f"{e:.4g}" for e in self.extent)
        return (
            f"patch {format_patch(self.patch)} ({voxels(self.patch)} voxels of a budget of "
            f"{self.budget}; extent {extent} at spacing {', '.join(f'{s:g}' for s in self.spacing)})"
        )


def auto_patch(
    spacing: Sequence[float],
    shapes: Iterable[Sequence[int]] = (),
    cube: int = AUTO_CUBE,
    divisor: int = 16,
    max_side: int = 512,
) -> AutoPatch:
    """Per-axis patch sides for this spacing, like nnU-Net's planner.

    The rule: every side is a multiple of ``divisor`` (at least one divisor,
    at least 16); the patch holds at most ``cube^3`` voxels; starting from the
    smallest patch, the side whose physical extent (side x spacing) is the
    smallest grows by one divisor at a time, as long as the budget allows and
    the side stays within the thinnest of ``shapes`` (rounded down to a
    divisor multiple) and ``max_side``. The physical extent is so kept about
    equal along the axes. An axis thinner than the smallest side gets that side
    anyway, with a note naming it (the rest is zero padding).

    Example:
        >>> auto_patch((1.0, 1.0, 1.0), [(200, 200, 200)]).patch
        64
        >>> auto_patch((50, 4.6, 4.6), [(20, 512, 512)]).patch  # a thin serial-section EM stack
        (16, 128, 128)
    """
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0 or not all(math.isfinite(s) for s in sp):
        raise SettingError(f"auto patch: spacing must be three positive numbers, got {spacing!r}")
    if cube < 16:
        raise SettingError(f"auto patch: the voxel budget's cube side must be >= 16, got {cube}")
    step = max(int(divisor), 1)
    smallest = -(-max(16, step) // step) * step
    shapes = [tuple(int(n) for n in s) for s in shapes]
    caps = [max_side // step * step] * 3
    notes: list[str] = []
    for axis in range(3):
        sides = [s[axis] for s in shapes]
        if sides:
            thinnest = min(sides)
            caps[axis] = min(caps[axis], thinnest // step * step)
            if thinnest < smallest:
                notes.append(
                    f"axis {AXES[axis]}: the thinnest volume has {thinnest} voxels, fewer than "
                    f"the smallest patch side {smallest}; the patch takes {smallest} along "
                    f"{AXES[axis]} and the rest is zero padding"
                )
    budget = cube**3
    sides3 = [smallest] * 3
    grow = [caps[a] >= smallest + step for a in range(3)]
    while any(grow):
        # the axis that is shortest in physical units grows first (ties: z, then y, then x)
        axis = min((a for a in range(3) if grow[a]), key=lambda a: (sides3[a] * sp[a], a))
        wider = sides3[axis] + step
        if wider > caps[axis]:
            grow[axis] = False
            continue
        if math.prod(sides3) // sides3[axis] * wider > budget:
            break  # the physically shortest axis cannot grow: stop, rather than grow another
        sides3[axis] = wider
    return AutoPatch(compact(sides3), (sp[0], sp[1], sp[2]), budget, tuple(notes))


def dataset_patch(
    spec: Any,
    case_ids: Sequence[str] | None = None,
    cube: int = AUTO_CUBE,
    divisor: int = 16,
    downsample: int = 1,
) -> AutoPatch:
    """:func:`auto_patch` for a dataset's cases (default: its training cases).

    The spacing is the spec's ``spacing:``, else the median of the cases'
    own (a file without a stored voxel size counts as 1, 1, 1, and a note
    says so); the volumes' shapes bound each side. ``downsample``: for the
    volumes a low-resolution stage trains on (``ceil(n / d)`` voxels of d
    times the spacing per axis).
    """
    import numpy as np

    from meunet.data.io import open_volume

    ids = list(case_ids) if case_ids is not None else list(spec.training_ids() or spec.cases)
    shapes, spacings, unknown = [], [], []
    for cid in ids:
        with open_volume(spec.cases[cid].images[0], spacing=spec.spacing) as vol:
            shapes.append(tuple(-(-n // downsample) for n in vol.shape))
            spacings.append(tuple(v * downsample for v in vol.spacing))
            if not vol.spacing_known:
                unknown.append(cid)
    if not shapes:
        raise SettingError(f"{spec.path}: patch: auto needs cases to read shapes and spacing from")
    spacing = (
        tuple(v * downsample for v in spec.spacing)
        if spec.spacing
        else tuple(float(v) for v in np.median(np.asarray(spacings), axis=0))
    )
    choice = auto_patch(spacing, shapes, cube, divisor)
    if unknown:
        note = (
            f"cases {unknown[:5]} store no voxel size, so spacing 1, 1, 1 was assumed; set "
            f"'spacing: [z, y, x]' in {spec.path.name} for a patch shaped to the real voxels"
        )
        choice = AutoPatch(choice.patch, choice.spacing, choice.budget, (*choice.notes, note))
    return choice
