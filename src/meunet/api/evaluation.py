"""Scoring predictions against ground truth: :func:`evaluate`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from meunet.api.types import DataLike, as_spec
from meunet.data.spec import DatasetSpec
from meunet.errors import MeunetError

PREDICTION_SUFFIXES = (".zarr", ".nii.gz", ".nii", ".nrrd", ".tif", ".h5", ".npy")


@dataclasses.dataclass
class Evaluation:
    """Scores per case and class, and the summary table :func:`evaluate` made of them."""

    results: dict[str, Any]  # case id -> [ClassScores per class]
    classes: list[str]
    rows: list[dict[str, Any]]  # one per case and class (the CSV)
    table: str  # Markdown summary
    written: tuple[Path, ...] = ()  # OUT.csv and OUT.md, when asked for

    def dice(self, case: str) -> list[float]:
        return [s.dice for s in self.results[case]]


def find_prediction(folder: str | Path, case: str) -> Path | None:
    """``folder/CASE.zarr`` (or another format's file) if it exists."""
    for suffix in PREDICTION_SUFFIXES:
        path = Path(folder) / f"{case}{suffix}"
        if path.exists():
            return path
    return None


def _pairs(
    predictions: str | Path, truth: str | Path | None, spec: DatasetSpec | None, split: str
) -> list[tuple[str, str, str]]:
    """(case, prediction, truth) to score: one pair, or a folder's files matched to the split's cases."""
    pred = str(predictions)
    if os.path.isdir(pred) and not pred.rstrip("/").endswith(".zarr"):
        if spec is None:
            raise MeunetError(
                f"{pred} is a folder of predictions: give --data DATASET.yaml to match them to cases"
            )
        ids = spec.split.get(split, ()) if split != "all" else tuple(spec.cases)
        pairs = []
        for cid in ids:
            found = find_prediction(pred, cid)
            if found and spec.cases[cid].label is not None:
                pairs.append((cid, str(found), str(spec.cases[cid].label)))
        if not pairs:
            raise MeunetError(
                f"{pred}: no CASE.zarr / CASE.nii.gz predictions for the {split} cases of {spec.path}"
            )
        return pairs
    if truth is None:
        raise MeunetError("give --truth for a single prediction")
    return [(Path(pred).name.split(".")[0], pred, str(truth))]


def evaluate(
    predictions: str | Path,
    truth: str | Path | None = None,
    *,
    data: DataLike | None = None,
    split: str = "test",
    classes: int = 0,
    hd95: str = "max",
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Evaluation:
    """Dice, HD95 and volume difference per class, streamed.

    Args:
        predictions: A label volume (with ``truth``), or a folder of ``CASE.zarr``
            predictions matched to the ``split`` cases of ``data``.
        truth: Reference labels of a single prediction.
        data: The dataset: class names, label remapping, its spacing (which
            overrides the truth files'), and the cases of a folder.
        split: train, val, test or all (a folder of predictions).
        classes: Number of classes when no ``data`` is given.
        hd95: ``max`` (MONAI's) or ``pooled``.
        out: Also write ``OUT.csv`` and ``OUT.md``.
        overwrite: Replace an ``OUT.*`` meunet did not write.
    """
    import csv
    import io

    from meunet.data.io import open_volume
    from meunet.data.io.ownership import prepare_output, write_text
    from meunet.metrics.evaluate import evaluate_case, summary_table

    spec = as_spec(data) if data is not None else None
    if spec is None and not classes:
        raise MeunetError("give --data DATASET.yaml (classes and label remapping) or --classes N")
    names = (
        list(spec.classes) if spec else ["background", *(f"class {c}" for c in range(1, classes))]
    )
    remap = (lambda a: spec.remap_labels(a, "truth")) if spec else None
    pairs = _pairs(predictions, truth, spec, split)
    sources = [p for pair in pairs for p in pair[1:]] + (
        [str(spec.path)] if spec is not None and spec.path else []
    )
    if out:  # refuse before the (long) evaluation
        for suffix in (".csv", ".md"):
            prepare_output(f"{out}{suffix}", sources, overwrite, folder=False)
    # a spec's spacing overrides the files' (which may have none, giving voxels)
    spacing = spec.spacing if spec else None
    results = {
        cid: evaluate_case(
            open_volume(p), open_volume(t, spacing=spacing), len(names), remap, hd95=hd95
        )
        for cid, p, t in pairs
    }
    rows, table = summary_table(results, names, hd95=hd95)
    if spec is not None and spacing is not None:
        table += f"\nSpacing (z, y, x) {list(spacing)} from {spec.path}, not the files'."
    else:
        table += "\nSpacing: each truth file's own."
    written: tuple[Path, ...] = ()
    if out:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        written = (
            write_text(f"{out}.csv", buffer.getvalue(), sources, overwrite, "evaluate"),
            write_text(f"{out}.md", table + "\n", sources, overwrite, "evaluate"),
        )
    return Evaluation(results, names, rows, table, written)
