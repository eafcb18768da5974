"""Cut one labelled volume into cases: ``meunet split-volume`` and ``meunet crop``.

Microscopy often has one annotated stack, or one annotated region of a huge
scan, where training wants cases. :func:`grid_regions` cuts a volume into
N blocks along chosen axes, :func:`parse_box` and :func:`read_regions` take
named boxes, and :func:`cut_volume` writes each region as a case (image
channels and label, in any format meunet writes) with a ``dataset.yaml``
that ``meunet check`` and ``meunet train`` accept. With ``copy=False`` no
voxel is copied: the ``dataset.yaml`` names the source files with a
``bbox:`` per case (see :mod:`meunet.data.spec`).

Everything is streamed: regions are lazy views (:func:`~meunet.data.volume.region`)
written slab by slab, and the label's values are counted slab by slab.

Example:
    >>> regions = grid_regions((20, 1024, 1024), (1, 2, 2))          # doctest: +SKIP
    >>> cut_volume(["em.zarr"], "labels.zarr", "fly-cases", regions)  # doctest: +SKIP
    PosixPath('fly-cases/dataset.yaml')
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from meunet.data.io import open_volume, split_hdf5_path, split_region, write_volume
from meunet.data.io.ownership import claim_output, make_folder, remove_owned, write_text
from meunet.data.volume import Bbox, Spacing, Volume, as_bbox, region
from meunet.errors import RegionError, SettingError, SpecError, VolumeError

#: Output suffix per ``--format`` name (those of ``meunet phantom``).
SUFFIXES = {
    "zarr": ".zarr", "nifti": ".nii.gz", "nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd",
    "hdf5": ".h5", "h5": ".h5", "numpy": ".npy", "npy": ".npy", "tiff": ".tif", "tif": ".tif",
}  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BOX_TEXT = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Region:
    """A named box of the volume, and the split its case goes to (None: decided later)."""

    name: str
    box: Bbox
    split: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.box)  # type: ignore[return-value]


def grid_regions(shape: Sequence[int], blocks: Sequence[int], min_size: int = 16) -> list[Region]:
    """``blocks`` (z, y, x) blocks of near-equal size tiling ``shape``, in C order.

    Blocks along an axis differ in size by at most one voxel. Block names
    say where a block lies: ``z0_y1_x0``.

    Raises:
        SettingError: a block count below 1, or blocks thinner than
            ``min_size`` along a cut axis (naming the most blocks that fit).

    Example:
        >>> [r.box for r in grid_regions((20, 64, 64), (1, 1, 2))]
        [((0, 20), (0, 64), (0, 32)), ((0, 20), (0, 64), (32, 64))]
    """
    if len(blocks) != 3 or min(blocks) < 1:
        raise SettingError(f"blocks must be three counts >= 1 (z, y, x), got {list(blocks)}")
    edges = []
    for axis, n, k in zip("zyx", shape, blocks, strict=True):
        if k > 1 and n // k < min_size:
            most = max(1, n // min_size)
            raise SettingError(
                f"{k} blocks along {axis} would be {n // k} voxels thick ({n} / {k}), below the "
                f"minimum {min_size}; cut {axis} into at most {most} block(s), or lower --min-size"
            )
        cuts = np.linspace(0, n, k + 1).round().astype(int)
        edges.append([(int(a), int(b)) for a, b in itertools.pairwise(cuts)])
    return [
        Region(f"z{iz}_y{iy}_x{ix}", (bz, by, bx))
        for iz, bz in enumerate(edges[0])
        for iy, by in enumerate(edges[1])
        for ix, bx in enumerate(edges[2])
    ]


def parse_box(text: str) -> Bbox:
    """A box from ``Z0:Z1,Y0:Y1,X0:X1`` (stop excluded, as in a slice).

    Example:
        >>> parse_box("0:20,0:512,256:512")
        ((0, 20), (0, 512), (256, 512))
    """
    m = _BOX_TEXT.match(text)
    if m is None:
        raise SettingError(
            f"box {text!r}: write it as Z0:Z1,Y0:Y1,X0:X1 in voxels, e.g. 0:20,0:512,256:512"
        )
    n = [int(v) for v in m.groups()]
    return as_bbox([n[0:2], n[2:4], n[4:6]], f"box {text!r}")


def parse_region(text: str) -> Region:
    """A region from ``NAME=Z0:Z1,Y0:Y1,X0:X1`` (the ``--region`` option)."""
    name, sep, box = text.partition("=")
    if not sep:
        raise SettingError(
            f"region {text!r}: write it as NAME=Z0:Z1,Y0:Y1,X0:X1, e.g. left=0:20,0:512,0:256"
        )
    return Region(_check_name(name.strip(), text), parse_box(box))


def read_regions(path: str | Path) -> list[Region]:
    """Named regions from a YAML file::

    regions:
      left: [[0, 20], [0, 512], [0, 256]]
      right: {bbox: [[0, 20], [0, 512], [256, 512]], split: val}
    """
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise SettingError(f"{where}: cannot read the regions file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{where}: not valid YAML ({e})") from None
    entries = raw.get("regions") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SpecError(
            f"{where}: expected 'regions:' mapping names to boxes, e.g. "
            "regions: {left: [[0, 20], [0, 512], [0, 256]]}"
        )
    out = []
    for name, entry in entries.items():
        split = None
        if isinstance(entry, dict):
            split = entry.get("split")
            if split not in (None, "train", "val", "test"):
                raise SpecError(f"{where}: region {name}: split {split!r}; use train, val or test")
            entry = entry.get("bbox")
        try:
            out.append(
                Region(
                    _check_name(str(name), where), as_bbox(entry, f"{where}: region {name}"), split
                )
            )
        except SettingError as e:
            raise SpecError(str(e)) from None
    return out


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise SettingError(
            f"{where}: region name {name!r} must be letters, digits, '_', '-' or '.' (it names "
            "a case and its folder)"
        )
    return name


def check_regions(regions: Sequence[Region], shape: Sequence[int], min_size: int = 16) -> list[str]:
    """Refuse boxes outside ``shape``, thinner than ``min_size``, or named twice; warn of overlaps.

    An axis a box spans whole is not held to ``min_size`` (a thin stack stays thin).

    Returns:
        Warnings: regions that overlap (overlapping training and validation
        regions share voxels, which flatters validation).
    """
    names = [r.name for r in regions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingError(f"regions {twice} are named twice; give every region its own name")
    for r in regions:
        for axis, (a, b), n in zip("zyx", r.box, shape, strict=True):
            if b > n:
                raise RegionError(
                    f"region {r.name}: box ends at {b} along {axis}, beyond the volume's {n} "
                    f"voxels (shape {tuple(shape)}, z, y, x); keep every stop within the shape"
                )
            if b - a < min_size and (a, b) != (0, n):
                raise SettingError(
                    f"region {r.name}: {b - a} voxels along {axis} ({a}:{b}), below the minimum "
                    f"{min_size}; make it larger, or lower --min-size"
                )
    warnings = []
    for i, r in enumerate(regions):
        for s in regions[i + 1 :]:
            if all(
                max(a0, b0) < min(a1, b1) for (a0, a1), (b0, b1) in zip(r.box, s.box, strict=True)
            ):
                warnings.append(f"regions {r.name} and {s.name} overlap")
    return warnings


def assign_splits(
    regions: Sequence[Region], val: Iterable[str] = (), test: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Train/val/test lists: ``val`` and ``test`` by name, then each region's own, the rest train.

    Without any validation region and with two regions or more, the last
    one validates, so that ``meunet train`` accepts the dataset as it is.
    """
    names = [r.name for r in regions]
    chosen = {n: "val" for n in val} | {n: "test" for n in test}
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SettingError(f"--val/--test name {unknown}, which are not regions; regions: {names}")
    both = sorted(set(val) & set(test))
    if both:
        raise SettingError(f"regions {both} are given both to --val and to --test; choose one")
    split = {r.name: chosen.get(r.name) or r.split or "train" for r in regions}
    if "val" not in split.values() and len(regions) > 1:
        split[names[-1]] = "val"
    return {s: [n for n in names if split[n] == s] for s in ("train", "val", "test")}


def label_classes(
    label: Volume, classes: Sequence[str] | None = None, progress: bool = True
) -> tuple[list[str], dict[int, str] | None]:
    """Class names for the values ``label`` holds (counted slab by slab), and a label map.

    Names come from ``classes`` (one per value 0 .. N-1), else from the
    label's segment names (a Slicer ``.seg.nrrd``), else ``class<V>``;
    value 0 is ``background``. The label map (value -> class name) is None
    where the values are already 0 .. N-1.
    """
    values: set[float] = set()
    with tqdm(
        total=label.shape[0], desc="label values", unit="slice", disable=not progress, leave=False
    ) as bar:
        for _, slab in label.slabs():
            values.update(np.unique(slab).tolist())
            bar.update(slab.shape[0])
    bad = sorted(v for v in values if not float(v).is_integer() or v < 0)
    if bad:
        raise VolumeError(
            f"{label.path}: label values {bad[:5]} are not whole numbers >= 0; "
            "is this the image? give the label volume as --label"
        )
    found = sorted(int(v) for v in values)
    if classes:
        if found[-1] >= len(classes):
            raise SettingError(
                f"{label.path}: holds label values {found[:10]}, but --classes names only "
                f"{len(classes)} classes (values 0..{len(classes) - 1}); name one class per value"
            )
        return list(classes), None
    segments = {int(s["label"]): str(s["name"]) for s in label.meta.get("segments") or []}
    ordered = sorted({0, *found})
    names = ["background" if v == 0 else segments.get(v, f"class{v}") for v in ordered]
    names = [
        n if names.count(n) == 1 else f"{n} ({v})" for n, v in zip(names, ordered, strict=True)
    ]
    if ordered == list(range(len(ordered))):
        return names, None
    return names, dict(zip(ordered, names, strict=True))


def _relative(path: str, box: Bbox, folder: Path) -> tuple[str, Bbox]:
    """``path`` relative to ``folder`` (an HDF5 dataset kept), and ``box`` within the file.

    A path that is itself a region (``scan.zarr[..]``) names its file, and the
    box moves by the region's start.
    """
    base, outer = split_region(path)
    if outer is not None:
        box = tuple((a + o, b + o) for (a, b), (o, _) in zip(box, outer, strict=True))  # type: ignore[assignment]
    file_part, dataset = split_hdf5_path(base)
    rel = os.path.relpath(os.path.abspath(file_part), folder.resolve())
    return (f"{rel}:/{dataset.lstrip('/')}" if dataset else rel), box


def cut_volume(
    images: Sequence[str | Path],
    label: str | Path,
    out: str | Path,
    regions: Sequence[Region],
    splits: dict[str, list[str]] | None = None,
    fmt: str = "zarr",
    copy: bool = True,
    classes: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    spacing: Spacing | None = None,
    min_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "split-volume",
) -> tuple[Path, list[str]]:
    """Write each region of the image channels and the label as a case, and a ``dataset.yaml``.

    Args:
        images: One volume per input channel.
        label: The label volume, on the images' grid.
        out: Output folder: ``CASE/image.zarr`` (``image_<i>`` with several
            channels) and ``CASE/label.zarr`` per region, then ``dataset.yaml``
            (written last: its presence means the folder is complete).
        regions: The boxes to cut (:func:`grid_regions`, :func:`parse_region`,
            :func:`read_regions`).
        splits: Case names per split (default :func:`assign_splits`).
        fmt: Output format (a key of :data:`SUFFIXES`).
        copy: False writes only ``dataset.yaml``, naming the source files with
            a ``bbox:`` per case.
        classes: Class names, one per label value 0 .. N-1 (default: the
            label's segment names, else ``class<V>``).
        channels: Channel names (default ``ch0``, ``ch1``...).
        spacing: (z, y, x) voxel size overriding the files' (also written to
            the spec as ``spacing:``).
        min_size: Smallest box side allowed, except along an axis a box spans whole.
        overwrite: Replace an ``out`` that meunet did not write.
        progress: Show progress bars.
        command: The command recorded in the output's marker.

    Returns:
        The ``dataset.yaml`` path, and warnings (overlapping regions).

    Raises:
        VolumeError: images and label of different shapes, naming both.
        RegionError, SettingError: a box outside the volume, too thin, or
            named twice; an unknown format.
    """
    if fmt.lower().lstrip(".") not in SUFFIXES:
        raise SettingError(f"unknown format {fmt!r}; choose one of {sorted(set(SUFFIXES))}")
    suffix = SUFFIXES[fmt.lower().lstrip(".")]
    out = Path(str(out).rstrip("/") or str(out))
    vols = [open_volume(p, spacing=spacing) for p in images]
    try:
        lab = open_volume(label, spacing=spacing)
        vols.append(lab)
        for v in vols[1:]:
            if v.shape != vols[0].shape:
                what = "label" if v is lab else "image"
                raise VolumeError(
                    f"{v.path}: {what} shape {v.shape} differs from image shape {vols[0].shape} "
                    f"(of {vols[0].path}); resample or crop them to one grid first"
                )
        warnings = check_regions(regions, vols[0].shape, min_size)
        splits = splits or assign_splits(regions)
        names, label_map = label_classes(lab, classes, progress)
        channels = list(channels or [f"ch{i}" for i in range(len(images))])
        if len(channels) != len(images):
            raise SettingError(f"{len(channels)} channel names for {len(images)} image volumes")
        cases: dict[str, Any] = {}
        with claim_output(out, vols, overwrite, folder=True, command=command):
            remove_owned(out)  # a rerun replaces a previous cut whole, never mixes with it
            make_folder(out, command)
            files = len(regions) * len(vols) if copy else 0
            with tqdm(total=files, desc=command, unit="file", disable=not progress) as bar:
                for r in regions:
                    cases[r.name] = (
                        _write_case(out, r, vols, suffix, bar)
                        if copy
                        else _reference_case(out, r, [*map(str, images), str(label)])
                    )
            spec = {
                "name": out.name,
                "description": f"{len(regions)} region(s) of {Path(str(images[0])).name}, "
                + ("copied" if copy else "read in place (bbox:)")
                + f" by meunet {command}",
                "classes": names,
                "channels": channels,
                **({"label_map": label_map} if label_map else {}),
                **({"spacing": [float(s) for s in spacing]} if spacing else {}),
                "cases": cases,
                "split": splits,
            }
            text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
            path = write_text(out / "dataset.yaml", text, vols, overwrite, command)
    finally:
        for v in vols:
            v.close()
    return path, warnings


def _write_case(
    out: Path, r: Region, vols: Sequence[Volume], suffix: str, bar: tqdm
) -> dict[str, Any]:
    """Copy region ``r`` of every channel and of the label (the last volume) into ``out/NAME``."""
    n = len(vols) - 1
    entry: dict[str, Any] = {"image": []}
    for i, vol in enumerate(vols):
        rel = (
            f"{r.name}/label{suffix}"
            if i == n
            else f"{r.name}/image{'' if n == 1 else f'_{i}'}{suffix}"
        )
        write_volume(out / rel, region(vol, r.box), inputs=vols)
        if i == n:
            entry["label"] = rel
        else:
            entry["image"].append(rel)
        bar.update(1)
    return entry


def _reference_case(out: Path, r: Region, paths: Sequence[str]) -> dict[str, Any]:
    """The source files with region ``r`` as the case's ``bbox:``."""
    located = [_relative(p, r.box, out) for p in paths]
    boxes = {box for _, box in located}
    if len(boxes) != 1:  # inputs given as different regions of their files
        raise SettingError(
            f"region {r.name}: the inputs are regions at different offsets of their files; "
            "a case has one bbox for all its files: give whole files, or copy (drop --no-copy)"
        )
    (box,) = boxes
    return {
        "image": [p for p, _ in located[:-1]],
        "label": located[-1][0],
        "bbox": [list(pair) for pair in box],
    }
