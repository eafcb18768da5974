"""``meunet check``: validate a dataset before any training.

Every case is opened, compared and streamed slab by slab (bounded memory,
whatever the volume size). All problems are collected, each naming the case,
the file and the fix, so that one run lists everything to repair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from meunet.data.io import open_volume
from meunet.data.patch_size import PatchSize, fitting_patch, format_patch, patch_shape, thin_axes
from meunet.data.spec import Case, DatasetSpec
from meunet.data.volume import Volume
from meunet.errors import FormatError, MeunetError, RegionError

SPACING_RTOL = 1e-3
T = TypeVar("T")


@dataclass
class Problem:
    """One thing wrong with the dataset."""

    case: str | None
    file: str | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = " ".join(
            p
            for p in (
                f"case {self.case}:" if self.case else "",
                f"{self.file}:" if self.file else "",
            )
            if p
        )
        return f"{where} {self.message}; fix: {self.fix}".strip()


@dataclass
class CaseSummary:
    """What ``check`` learnt of one case."""

    id: str
    split: str
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    spacing_known: bool = True
    dtypes: list[str] = field(default_factory=list)
    ranges: list[tuple[float, float]] = field(default_factory=list)
    class_counts: list[int] | None = None


@dataclass
class CheckReport:
    """Summaries of all cases, every problem found, and warnings that do not fail the check."""

    spec: DatasetSpec
    cases: list[CaseSummary]
    problems: list[Problem]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """The cases as a fixed-width text table."""
        spec = self.spec
        head = ["case", "split", "shape (z,y,x)", "spacing (z,y,x)", "dtype"]
        head += [f"{c} range" for c in spec.channels] + [f"{c} voxels" for c in spec.classes]
        rows = [head]
        for s in self.cases:
            row = [
                s.id,
                s.split,
                "x".join(map(str, s.shape)) if s.shape else "?",
                _spacing_cell(s),
                "/".join(sorted(set(s.dtypes))) or "?",
            ]
            row += [f"{lo:.4g}..{hi:.4g}" for lo, hi in s.ranges] + ["?"] * (
                len(spec.channels) - len(s.ranges)
            )
            if s.class_counts is not None:
                total = max(sum(s.class_counts), 1)
                row += [f"{n} ({100 * n / total:.2f}%)" for n in s.class_counts]
            else:
                row += ["-"] * len(spec.classes)
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _spacing_cell(s: CaseSummary) -> str:
    if s.spacing is None:
        return "?"
    text = ", ".join(f"{v:g}" for v in s.spacing)
    return text if s.spacing_known else f"unknown ({text})"


def _unknown_spacing(spec: DatasetSpec, files: list[tuple[str, str]]) -> Problem:
    """One warning for every file that stores no voxel size (case, path pairs)."""
    case, path = files[0]
    more = f" and {len(files) - 1} other file(s)" if len(files) > 1 else ""
    return Problem(
        None,
        str(spec.path),
        f"case {case}: {path}{more} store no voxel size, so spacing 1, 1, 1 is assumed "
        "(resampling and HD95 in physical units would take it as the real one)",
        f"set 'spacing: [z, y, x]' in {spec.path.name} to the voxel size of the data",
    )


def _open_all(
    case: Case, spec: DatasetSpec, problems: list[Problem]
) -> tuple[list[Volume], Volume | None]:
    images: list[Volume] = []
    for path in case.images:
        try:
            images.append(open_volume(path, spacing=spec.spacing))
        except MeunetError as e:
            problems.append(
                Problem(
                    case.id,
                    str(path),
                    str(e).removeprefix(f"{path}: "),
                    _fix(e, "repair or re-export the file, or correct its path in the spec"),
                )
            )
    label = None
    if case.label is not None:
        try:
            label = open_volume(case.label, spacing=spec.spacing)
        except MeunetError as e:
            problems.append(
                Problem(
                    case.id,
                    str(case.label),
                    str(e).removeprefix(f"{case.label}: "),
                    _fix(e, "repair or re-export the label file, or correct its path in the spec"),
                )
            )
    return images, label


def _fix(error: MeunetError, repair: str) -> str:
    """The fix for a file that does not open: a format meunet does not read is not broken."""
    if isinstance(error, RegionError):
        return "correct the case's bbox in the spec to lie within the volume"
    if isinstance(error, FormatError):
        return "convert it to a format meunet reads, or correct its path in the spec"
    return repair


def _same_geometry(
    case: Case, images: list[Volume], label: Volume | None, problems: list[Problem]
) -> bool:
    ref = images[0]
    others = [("channel", v) for v in images[1:]] + ([("label", label)] if label else [])
    ok = True
    for what, v in others:
        if v.shape != ref.shape:
            msg = f"{what} shape {v.shape} differs from image shape {ref.shape} (of {ref.path})"
            problems.append(
                Problem(case.id, v.path, msg, "resample or crop the files of this case to one grid")
            )
            ok = False
        elif (
            v.spacing_known  # an assumed 1, 1, 1 is no mismatch: check warns of it instead
            and ref.spacing_known
            and not np.allclose(v.spacing, ref.spacing, rtol=SPACING_RTOL)
        ):
            msg = f"{what} spacing {v.spacing} differs from image spacing {ref.spacing} (of {ref.path})"
            fix = "fix the file headers, or set 'spacing:' in the dataset spec to override them"
            problems.append(Problem(case.id, v.path, msg, fix))
            ok = False
    return ok


def _image_stats(
    case: Case, vol: Volume, problems: list[Problem], bar: tqdm
) -> tuple[float, float] | None:
    if vol.dtype.kind not in "biuf":
        problems.append(
            Problem(
                case.id,
                vol.path,
                f"image dtype {vol.dtype} is not a real number type",
                "save the image as integers or floats",
            )
        )
        return None
    lo, hi, nonfinite = np.inf, -np.inf, 0
    for _, slab in vol.slabs():
        if slab.dtype.kind == "f":
            finite = np.isfinite(slab)
            nonfinite += int(slab.size - np.count_nonzero(finite))
            slab = slab[finite]
        if slab.size:
            lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
        bar.update(1)
    if nonfinite:
        problems.append(
            Problem(
                case.id,
                vol.path,
                f"image holds {nonfinite} NaN or Inf voxels",
                "replace them (e.g. with the background value) before training",
            )
        )
    if lo >= hi:
        problems.append(
            Problem(
                case.id,
                vol.path,
                f"image is constant (every voxel is {lo:g}): empty or failed export",
                "re-export the image",
            )
        )
    return float(lo), float(hi)


def _label_counts(
    case: Case, vol: Volume, spec: DatasetSpec, problems: list[Problem], bar: tqdm
) -> list[int] | None:
    if vol.dtype.kind not in "biuf":
        problems.append(
            Problem(
                case.id,
                vol.path,
                f"label dtype {vol.dtype} is not numeric",
                "save labels as integers",
            )
        )
        return None
    values: dict[float, int] = {}
    for _, slab in vol.slabs():
        u, n = np.unique(slab, return_counts=True)
        for v, c in zip(u.tolist(), n.tolist(), strict=True):
            values[v] = values.get(v, 0) + c
        bar.update(1)
    undeclared = sorted(v for v in values if not np.isfinite(v) or float(v) not in spec.label_map)
    if undeclared:
        shown = ", ".join(f"{v:g}" for v in undeclared[:10]) + (
            " ..." if len(undeclared) > 10 else ""
        )
        declared = ", ".join(f"{v:g}" for v in sorted(spec.label_map))
        problems.append(
            Problem(
                case.id,
                vol.path,
                f"label values {{{shown}}} are not declared (declared: {{{declared}}})",
                "add them to label_map in the dataset spec, or correct the label file",
            )
        )
        return None
    counts = [0] * spec.num_classes
    for v, c in values.items():
        counts[spec.label_map[float(v)]] += c
    return counts


def _unreadable_is_a_problem(
    case: Case, vol: Volume, problems: list[Problem], scan: Callable[[], T]
) -> T | None:
    """Run ``scan`` over ``vol``; a read error becomes a problem instead of ending the check."""
    try:
        return scan()
    except MeunetError as e:
        problems.append(
            Problem(
                case.id,
                vol.path,
                str(e).removeprefix(f"{vol.path}: "),
                "repair or re-export the file, or correct its path in the spec",
            )
        )
        return None


def _n_slabs(vols: Iterable[Volume]) -> int:
    from meunet.data.volume import slab_depth

    return sum(-(-v.shape[0] // slab_depth(v.shape, v.dtype)) for v in vols)


def check_dataset(
    spec: DatasetSpec,
    progress: bool = True,
    sizes: Mapping[str, PatchSize] | None = None,
) -> CheckReport:
    """Validate every case of ``spec``; return summaries and all problems found.

    ``sizes`` names the patch sizes to compare each case with (e.g.
    ``{"patch": 64, "expanded patch": 96}``, as :func:`training_sizes` gives
    them; None: none). A case thinner than one along an axis gets a warning
    naming the axis and a per-axis patch that fits.
    """
    problems: list[Problem] = []
    summaries: list[CaseSummary] = []
    unknown: list[tuple[str, str]] = []  # (case, file) without a stored voxel size
    for case in spec.cases.values():
        summary = CaseSummary(case.id, spec.split_of(case.id))
        summaries.append(summary)
        images, label = _open_all(case, spec, problems)
        if len(images) != len(case.images):
            continue
        vols = images + ([label] if label is not None else [])
        summary.shape, summary.spacing = images[0].shape, images[0].spacing
        summary.spacing_known = images[0].spacing_known
        unknown += [(case.id, v.path) for v in vols if not v.spacing_known]
        summary.dtypes = [str(v.dtype) for v in vols]
        if not _same_geometry(case, images, label, problems):
            continue
        with tqdm(
            total=_n_slabs(vols),
            desc=f"check {case.id}",
            unit="slab",
            disable=not progress,
            leave=False,
        ) as bar:
            # a file that opens can still fail half-way (a truncated .nii.gz, a corrupt
            # or missing chunk): note it and go on, so one run lists every problem
            for vol in images:
                rng = _unreadable_is_a_problem(
                    case, vol, problems, partial(_image_stats, case, vol, problems, bar)
                )
                summary.ranges.append(rng if rng is not None else (np.nan, np.nan))
            if label is not None:
                summary.class_counts = _unreadable_is_a_problem(
                    case, label, problems, partial(_label_counts, case, label, spec, problems, bar)
                )
        for v in vols:
            v.close()

    train = set(spec.training_ids())
    counted = [s.class_counts for s in summaries if s.id in train and s.class_counts is not None]
    if counted and len(counted) == len(train):
        totals = np.sum(counted, axis=0)
        for k, name in enumerate(spec.classes):
            if totals[k] == 0:
                problems.append(
                    Problem(
                        None,
                        str(spec.path),
                        f"class {k} ({name!r}) is absent from every training case",
                        "add a training case that contains it, fix the label_map, or remove the class",
                    )
                )
    warnings = [_unknown_spacing(spec, unknown)] if unknown else []
    warnings += _thin_cases(summaries, sizes or {})
    return CheckReport(spec, summaries, problems, warnings)


def training_sizes(cfg: Any) -> dict[str, PatchSize]:
    """The sizes a :class:`~meunet.training.config.TrainConfig` trains and predicts with, by name.

    What ``meunet check`` compares the cases with: the patch, a meU-net's
    expanded patch, and an ``infer_patch`` window when one is set.
    """
    sizes = {"patch": cfg.patch, "expanded patch": cfg.expanded, "window": cfg.infer_patch}
    return {what: size for what, size in sizes.items() if size}


def _thin_cases(summaries: list[CaseSummary], sizes: Mapping[str, PatchSize]) -> list[Problem]:
    """A warning for each case thinner than a patch size along an axis (it would be zero-padded)."""
    out = []
    patch = next(iter(sizes.values()), 0)
    for s in summaries:
        if s.shape is None:
            continue
        parts = [
            f"the {what} {format_patch(size)} along "
            + ", ".join(f"{axis} ({n} < {p})" for axis, n, p in thin)
            for what, size in sizes.items()
            if size and (thin := thin_axes(s.shape, size))
        ]
        if not parts:
            continue
        fit = fitting_patch([s.shape], patch) if patch else None
        z, y, x = patch_shape(fit) if fit else (0, 0, 0)
        out.append(
            Problem(
                s.id,
                None,
                f"{'x'.join(map(str, s.shape))} is thinner than "
                + " and than ".join(parts)
                + ", so the rest of each patch is zero padding",
                f"use a per-axis patch that fits, e.g. sampler.patch: [{z}, {y}, {x}] (or "
                "patch: auto, which follows the spacing)",
            )
        )
    return out
