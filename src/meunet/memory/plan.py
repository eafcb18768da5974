"""Find, by measuring, the largest patch whose training step fits a memory budget."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from meunet.data.patch_size import PatchSize, compact, format_patch, patch_shape
from meunet.errors import SettingError
from meunet.memory.measure import DIVISOR, MemoryConfig, measure

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """Parse "16GB", "16GiB", "500M", "2.5 G" into bytes (powers of 1024, as GPU tools report).

    Example:
        >>> parse_bytes("16GB") == 16 * 2**30
        True
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise SettingError(f"cannot read memory size {text!r}; write e.g. 16GB, 512MB or 2.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    """A byte count in the largest unit (powers of 1024) that keeps it >= 1.

    Example:
        >>> format_bytes(3 * 2**30), format_bytes(1536 * 2**10), format_bytes(1000)
        ('3.00 GiB', '1.50 MiB', '1000 B')
    """
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.2f} {unit}iB"
    return f"{n:.0f} B"


def scaled_patch(shape: PatchSize | tuple[int, ...], side: int) -> PatchSize:
    """``shape`` scaled so that its largest side is ``side``; each side a multiple of 16, at least 16.

    Example:
        >>> scaled_patch(64, 96), scaled_patch((16, 128, 128), 256), scaled_patch((16, 128, 128), 64)
        (96, (32, 256, 256), (16, 64, 64))
    """
    sides = patch_shape(shape)
    top = max(sides)
    return compact([max(DIVISOR, round(n * side / top / DIVISOR) * DIVISOR) for n in sides])


@dataclass
class PlanResult:
    """The largest fitting patch and every measurement that led to it."""

    cfg: MemoryConfig | None  # with the chosen patch; None: even the smallest does not fit
    budget: int
    measured: list[dict[str, Any]]

    @property
    def fits(self) -> bool:
        return self.cfg is not None


def plan_patch(
    base: MemoryConfig,
    budget: int,
    measure_fn: Callable[[MemoryConfig], dict[str, Any]] | None = None,
    max_patch: int = 512,
    progress: Callable[[str], None] | None = None,
) -> PlanResult:
    """Largest standard patch P (a multiple of 16, at least 32) whose measured step peak fits ``budget``.

    With a cube as ``base.patch`` the patches searched are cubes of side P.
    With per-axis sides (e.g. ``(16, 128, 128)`` for a thin anisotropic
    stack) they are that shape scaled so that its largest side is P, each side
    rounded to a multiple of 16 (at least 16): the search keeps the base's
    proportions (:func:`scaled_patch`).

    The search keeps the largest P measured to fit and the smallest measured
    not to, and measures next where a * P^3 + b, drawn through the two nearest
    measurements, meets the budget (never more than doubling P at once, so
    that no step measures a far oversized patch). It ends when the two are 16
    apart: the answer is bracketed by measurements.
    """
    measure_fn = measure_fn or measure
    cache: dict[int, int] = {}
    results: dict[int, dict[str, Any]] = {}
    shape = patch_shape(base.patch)

    def fits(p: int) -> bool:
        if p not in cache:
            size = scaled_patch(shape, p)
            if progress:
                progress(f"measuring {base.model} patch {format_patch(size)} ...")
            results[p] = measure_fn(replace(base, patch=size))
            cache[p] = int(results[p]["peak_bytes"])
        return cache[p] <= budget

    def done(p: int) -> PlanResult:
        cfg = replace(base, patch=scaled_patch(shape, p)) if p else None
        return PlanResult(cfg, budget, [results[k] for k in sorted(results)])

    step = DIVISOR
    smallest = 2 * DIVISOR  # at 16^3 the deepest level is 1 voxel: BatchNorm cannot train on it
    if not fits(smallest):
        return done(0)
    lo, hi = smallest, None  # largest fitting, smallest over budget
    while (hi is None or hi - lo > step) and lo + step <= max_patch:
        below = [p for p in cache if p <= lo]
        a = sorted(below)[-2] if len(below) > 1 else None
        if hi is not None:
            p0, p1 = lo, hi
        elif a is not None:
            p0, p1 = a, lo
        else:
            p0 = p1 = lo
        if p0 == p1:
            guess = 2 * lo
        else:
            slope = max((cache[p1] - cache[p0]) / (p1**3 - p0**3), 1e-9)
            guess = ((budget - cache[p0]) / slope + p0**3) ** (1 / 3)
        upper = min(max_patch, 2 * lo, (hi - step) if hi is not None else max_patch)
        p = int(min(max(guess // step * step, lo + step), upper))
        if fits(p):
            lo = p
        else:
            hi = p
    return done(lo)


@dataclass
class PlanShape:
    """The patch shape a plan scales, and the training volumes it must fit."""

    shape: PatchSize  # a cube's side (searched as cubes) or (z, y, x) sides (scaled)
    volumes: dict[str, tuple[int, ...]]  # training case id -> image shape (with a dataset)
    notes: tuple[str, ...] = ()  # how ``patch: auto`` chose the shape


def plan_shape(patch: Any, divisor: int, data: Any = None) -> PlanShape:
    """What ``meunet plan`` scales: ``patch`` (a size, or ``auto`` chosen from ``data``).

    Args:
        patch: The requested shape (a side, (z, y, x), or ``auto`` / ``auto:N``).
        divisor: The network's size divisor (sides of auto shapes are multiples of it).
        data: A dataset spec or its ``dataset.yaml``: its training cases' shapes bound
            the patch, and ``auto`` follows their spacing.

    Raises:
        SettingError: ``auto`` without a dataset.
    """
    from meunet.data.patch_size import auto_cube, dataset_patch

    volumes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    if data is not None:
        from meunet.data.io import open_volume
        from meunet.data.spec import DatasetSpec, load_spec

        spec = data if isinstance(data, DatasetSpec) else load_spec(data)
        for cid in spec.training_ids():
            with open_volume(spec.cases[cid].images[0], spacing=spec.spacing) as vol:
                volumes[cid] = vol.shape
        if auto_cube(patch) is not None:
            choice = dataset_patch(spec, None, auto_cube(patch) or 64, divisor)
            notes = [f"patch: auto -> {choice.describe()}; scaling that shape", *choice.notes]
            patch = choice.patch
    if auto_cube(patch) is not None:
        raise SettingError("plan: patch auto is chosen from a dataset: add --data DATASET.yaml")
    return PlanShape(patch if isinstance(patch, tuple) else 32, volumes, tuple(notes))


def plan_models(
    cfg: Any,
    budget: int,
    shape: PatchSize,
    in_channels: int = 1,
    num_classes: int = 3,
    compare: bool = True,
    max_patch: int = 512,
    progress: Callable[[str], None] | None = None,
) -> list[tuple[str, PlanResult]]:
    """:func:`plan_patch` for ``cfg``'s network and, for a meU-net, a U-net of the same budget.

    Args:
        cfg: The training configuration (:class:`~meunet.training.config.TrainConfig`).
        budget: Bytes a training step may take at its peak.
        shape: The shape to scale (:func:`plan_shape`).
        compare: Plan the U-net too (for a network with a deep head).

    Returns:
        (model name, its plan) for each network planned.
    """
    from meunet.models import variant

    models = [cfg.model] + (["unet"] if compare and variant(cfg.model).deep_head else [])
    return [
        (
            model,
            plan_patch(
                MemoryConfig.from_train(
                    replace(cfg, model=model), in_channels, num_classes, patch=shape
                ),
                budget,
                max_patch=max_patch,
                progress=progress,
            ),
        )
        for model in models
    ]
