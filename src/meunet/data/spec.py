"""The dataset specification: ``dataset.yaml``, written once per dataset.

Example (``examples/brats4.yaml``)::

    name: brats4
    root: ../../shared/data/brats4     # optional; relative to this file
    classes: [background, edema, tumour core]
    channels: [flair, t1c]
    label_map:                          # value in the label files -> class
      0: background
      2: edema
      1: tumour core                    # several values merge into one class
      3: tumour core
      4: tumour core
    spacing: [1.0, 1.0, 1.0]            # optional (z, y, x) override
    cases:
      pat0005:
        image: [pat0005/Flair.nii.gz, pat0005/T1c.nii.gz]   # one path per channel
        label: pat0005/OTMultiClass.nii.gz
    split:                              # or  folds: [[a, b], [c, d]]
      train: [pat0005]
      val: [pat0003]
      test: []

A case may be a region of larger files, read in place (not copied)::

      pat0005-top:
        image: pat0005/Flair.nii.gz
        label: pat0005/OTMultiClass.nii.gz
        bbox: [[0, 80], [0, 240], [0, 240]]   # [start, stop) per axis z, y, x

Reading it reads only the box, with the files' spacing and the origin of the
box's first voxel. Its paths carry the box as a suffix,
``Flair.nii.gz[0:80,0:240,0:240]``, which
:func:`~meunet.data.io.open_volume` reads, so every command that opens a
case's files (check, train, evaluate) sees the region alone.

Without ``label_map`` the label files must hold the class indices
0 .. len(classes) - 1 themselves. Case paths are relative to ``root``, and a
relative ``root`` to the folder of this file, so the spec works from any
working directory. A key given twice (a case id pasted twice) is refused
rather than silently collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from meunet.data.volume import Bbox, Spacing, as_bbox, as_spacing, format_bbox
from meunet.errors import SettingError, SpecError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Case:
    """One case: a path per input channel and an optional label path.

    With ``bbox``, every path ends in the box (``scan.zarr[0:20,0:64,0:64]``).
    """

    id: str
    images: tuple[Path, ...]
    label: Path | None = None
    bbox: Bbox | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A validated ``dataset.yaml``.

    Attributes:
        path: The YAML file.
        name: Dataset name.
        root: Folder the case paths are relative to.
        classes: Class names; index 0 is background.
        channels: Input channel names, in the order of each case's images.
        label_map: Value found in the label files -> class index.
        spacing: (z, y, x) voxel size overriding the files', or None.
        cases: Cases by id, in file order.
        split: Case ids per split (``train``, ``val``, ``test``).
        folds: Cross-validation folds (lists of case ids), or empty.
    """

    path: Path
    name: str
    root: Path
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    label_map: dict[float, int]
    cases: dict[str, Case]
    split: dict[str, tuple[str, ...]]
    spacing: Spacing | None = None
    folds: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_of(self, case_id: str) -> str:
        """Name of the split holding ``case_id`` ("fold N" with folds, "-" if none)."""
        for name, ids in self.split.items():
            if case_id in ids:
                return name
        for i, ids in enumerate(self.folds):
            if case_id in ids:
                return f"fold {i}"
        return "-"

    def training_ids(self) -> tuple[str, ...]:
        """Cases whose labels train a model: the train split, or every fold."""
        if self.split.get("train"):
            return self.split["train"]
        return tuple(i for fold in self.folds for i in fold)

    def remap_labels(self, values: np.ndarray, where: str = "") -> np.ndarray:
        """Map label-file values to class indices (uint8).

        Raises:
            ValueError: for values absent from ``label_map``, naming them.
        """
        keys = np.array(sorted(self.label_map), dtype=np.float64)
        targets = np.array([self.label_map[k] for k in sorted(self.label_map)], dtype=np.uint8)
        flat = np.asarray(values)
        idx = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
        bad = keys[idx] != flat
        if bad.any():
            found = np.unique(flat[bad])[:10].tolist()
            raise SettingError(
                f"{where}: label values {found} are not declared; add them to label_map in "
                f"{self.path.name} or fix the label file"
            )
        return targets[idx]


def _paths(value: Any, root: Path, where: str) -> tuple[Path, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise SpecError(f"{where}: expected a path or a list of paths, got {value!r}")
    return tuple(_resolve(p, root) for p in items)


def _resolve(p: str, root: Path) -> Path:
    # HDF5 paths carry ":/dataset" which must survive; Path() keeps it as text
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


def _label_map(raw: Any, classes: tuple[str, ...], where: str) -> dict[float, int]:
    if raw is None:
        return {float(i): i for i in range(len(classes))}
    if not isinstance(raw, dict) or not raw:
        raise SpecError(
            f"{where}: label_map must map label values to class names, e.g. {{2: edema}}"
        )
    out: dict[float, int] = {}
    for key, target in raw.items():
        try:
            if isinstance(key, bool):
                raise TypeError  # YAML's true/yes/on: a typo, not the value 1
            value = float(key)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: label_map key {key!r} is not a number") from None
        if isinstance(target, str):
            if target not in classes:
                raise SpecError(
                    f"{where}: label_map sends {key} to {target!r}, which is not in classes {list(classes)}"
                )
            out[value] = classes.index(target)
        elif (
            isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(classes)
        ):
            out[value] = target
        else:
            raise SpecError(
                f"{where}: label_map target {target!r} for {key} is neither a class name nor an index < {len(classes)}"
            )
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping key given twice.

    PyYAML keeps the last of two equal keys, so a case id pasted twice would
    silently lose the first case.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges keys that the mapping may override
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != line:
                raise SpecError(
                    f"{self.name}: key {key!r} appears twice (lines {first} and {line}), "
                    "and YAML would silently keep only the last one; rename or remove one of them"
                )
        return super().construct_mapping(node, deep=deep)


def _id_list(value: Any, where: str) -> tuple[str, ...]:
    """A list of case ids (null is empty); refuse a bare string, which is not a list."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(i, (str, int)) for i in value):
        raise SpecError(
            f"{where} must be a list of case ids, e.g. [{value}] or [c0, c1], got {value!r}"
            if isinstance(value, (str, int))
            else f"{where} must be a list of case ids, e.g. [c0, c1], got {value!r}"
        )
    return tuple(str(i) for i in value)


def load_spec(path: str | Path, root: str | Path | None = None) -> DatasetSpec:
    """Read and validate a ``dataset.yaml`` (structure only: files are checked by ``check``).

    Args:
        path: The YAML file.
        root: Folder for relative case paths, overriding the file's ``root``;
            a relative one is taken from the working directory, as a path typed
            on the command line (``--root``) is.

    Raises:
        SpecError: naming the key that is wrong and what it should be.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: dataset spec not found")
    try:
        loader = _UniqueKeyLoader(path.read_text())
        loader.name = str(path)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with keys classes, channels, cases, split")
    where = str(path)
    for key in ("classes", "cases"):
        if key not in raw:
            raise SpecError(f"{where}: missing required key {key!r}")
    known = {
        "name",
        "description",
        "root",
        "classes",
        "channels",
        "label_map",
        "spacing",
        "cases",
        "split",
        "folds",
    }
    unknown = set(raw) - known
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")

    classes = raw["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or len(set(map(str, classes))) != len(classes)
    ):
        raise SpecError(f"{where}: classes must list at least 2 distinct names (background first)")
    classes_t = tuple(str(c) for c in classes)
    base = Path(root) if root is not None else path.parent / str(raw.get("root", "."))
    base = base.resolve()

    cases_raw = raw["cases"]
    if not isinstance(cases_raw, dict) or not cases_raw:
        raise SpecError(f"{where}: cases must map case ids to {{image: [...], label: ...}}")
    cases: dict[str, Case] = {}
    n_channels: int | None = None
    for cid, entry in cases_raw.items():
        cw = f"{where}: case {cid}"
        if not isinstance(entry, dict) or "image" not in entry:
            raise SpecError(f"{cw}: needs 'image' (a path per channel) and usually 'label'")
        images = _paths(entry["image"], base, f"{cw}: image")
        if n_channels is None:
            n_channels = len(images)
        elif len(images) != n_channels:
            raise SpecError(
                f"{cw}: has {len(images)} image channels, other cases have {n_channels}"
            )
        label = _paths(entry["label"], base, f"{cw}: label")[0] if entry.get("label") else None
        box = None
        if entry.get("bbox") is not None:
            try:
                box = as_bbox(entry["bbox"], f"{cw}: bbox")
            except SettingError as e:
                raise SpecError(str(e)) from None
            images = tuple(Path(f"{p}{format_bbox(box)}") for p in images)
            label = Path(f"{label}{format_bbox(box)}") if label is not None else None
        cases[str(cid)] = Case(str(cid), images, label, box)
    assert n_channels is not None
    channels = raw.get("channels") or [f"ch{i}" for i in range(n_channels)]
    if len(channels) != n_channels:
        raise SpecError(
            f"{where}: channels lists {len(channels)} names but cases have {n_channels} images"
        )

    split: dict[str, tuple[str, ...]] = {}
    split_raw = raw.get("split") or {}
    if not isinstance(split_raw, dict):
        raise SpecError(
            f"{where}: split must map train/val/test to lists of case ids, "
            f"e.g. {{train: [c0, c1], val: [c2]}}, got {split_raw!r}"
        )
    for name, ids in split_raw.items():
        if name not in SPLITS:
            raise SpecError(f"{where}: split {name!r} unknown; use {list(SPLITS)}")
        split[name] = _id_list(ids, f"{where}: split {name!r}")
    folds_raw = raw.get("folds") or []
    if not isinstance(folds_raw, list):
        raise SpecError(
            f"{where}: folds must list the case ids of each fold, e.g. [[c0, c1], [c2, c3]], "
            f"got {folds_raw!r}"
        )
    folds = tuple(_id_list(fold, f"{where}: fold {i}") for i, fold in enumerate(folds_raw))
    listed = [i for ids in split.values() for i in ids] + [i for f in folds for i in f]
    for cid in listed:
        if cid not in cases:
            raise SpecError(f"{where}: split names case {cid!r}, which is not under cases")
    dupes = sorted({i for i in listed if listed.count(i) > 1})
    if dupes:
        raise SpecError(f"{where}: cases {dupes} appear in more than one split or fold")
    for cid in [*split.get("train", ()), *split.get("val", ()), *(i for f in folds for i in f)]:
        if cases[cid].label is None:
            raise SpecError(
                f"{where}: case {cid} is used for training or validation but has no label"
            )

    spacing = None
    if raw.get("spacing") is not None:
        try:
            spacing = as_spacing(raw["spacing"], f"{where}: spacing")
        except ValueError as e:
            raise SpecError(str(e)) from None
    return DatasetSpec(
        path=path,
        name=str(raw.get("name", path.parent.name)),
        root=base,
        classes=classes_t,
        channels=tuple(str(c) for c in channels),
        label_map=_label_map(raw.get("label_map"), classes_t, where),
        cases=cases,
        split=split,
        spacing=spacing,
        folds=folds,
    )
