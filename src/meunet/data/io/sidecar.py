"""What a volume carries beside its voxels: segment names and whether its spacing is known.

Both travel from a volume read to a volume written (``convert``, ``crop``,
``split-volume``, ``resample``), each format keeping them its own way:

- Zarr: array attributes ``segments`` and ``spacing_known`` (group
  attributes for OME-Zarr); HDF5: the dataset's attributes;
- NRRD: segments as Slicer's ``Segment<N>_Name`` / ``_LabelValue`` /
  ``_Layer`` header fields;
- NIfTI, TIFF, NumPy (and an NRRD's unknown spacing): a JSON sidecar
  ``NAME.json`` beside the file (``label.nii.gz.json``), the one NumPy's
  spacing already lives in.

``segments`` is a list of ``{"name": str, "label": int, "layer": int}``,
the label value a segment has in the volume; ``spacing_known`` is recorded
only when false (the spacing was assumed, see ``Volume.spacing_known``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from meunet.data.io.atomic import atomic_path
from meunet.errors import VolumeError

KEYS = ("segments", "spacing_known")

Segments = list[dict[str, Any]]


def sidecar_path(path: str) -> str:
    """The sidecar of a volume file or folder: ``NAME.json`` beside it."""
    return (path.rstrip("/") or path) + ".json"


def as_segments(value: Any, where: str = "segments") -> Segments:
    """Segments as a list of ``{"name", "label", "layer"}``, from that form or ``{label: name}``.

    Example:
        >>> as_segments({1: "liver", 2: "spleen"})
        [{'name': 'liver', 'label': 1, 'layer': 0}, {'name': 'spleen', 'label': 2, 'layer': 0}]
    """
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [{"name": n, "label": v} for v, n in sorted(value.items())]
    try:
        return [
            {"name": str(s["name"]), "label": int(s["label"]), "layer": int(s.get("layer", 0))}
            for s in value
        ]
    except (TypeError, KeyError, ValueError):
        raise VolumeError(
            f"{where}: segments must be a list of {{name, label}} entries, got {value!r}"
        ) from None


def read_sidecar(path: str) -> dict[str, Any]:
    """The sidecar's content (empty without one; unreadable ones are named)."""
    side = sidecar_path(path)
    if not os.path.isfile(side):
        return {}
    try:
        with open(side) as f:
            content = json.load(f)
    except (OSError, ValueError) as e:
        raise VolumeError(
            f"{side}: unreadable sidecar of {path} ({e}); delete or repair it"
        ) from None
    return content if isinstance(content, dict) else {}


def write_sidecar(path: str, segments: Sequence[Mapping[str, Any]], spacing_known: bool) -> None:
    """Record ``segments`` and an unknown spacing in ``path``'s sidecar (kept keys are merged).

    With nothing to record, the keys are dropped, and a sidecar left empty is
    removed, so that a rewritten volume never inherits a stale one.
    """
    side = sidecar_path(path)
    content = {k: v for k, v in read_sidecar(path).items() if k not in KEYS}
    if segments:
        content["segments"] = as_segments(segments, side)
    if not spacing_known:
        content["spacing_known"] = False
    if not content:
        with contextlib.suppress(FileNotFoundError):
            os.remove(side)
        return
    with atomic_path(side) as tmp:
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1)


def segment_table(segments: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per segment, ``label value: name``, for ``meunet info``."""
    layered = len({s.get("layer", 0) for s in segments}) > 1
    return [
        f"{s['label']}: {s['name']}" + (f" (layer {s.get('layer', 0)})" if layered else "")
        for s in segments
    ]
