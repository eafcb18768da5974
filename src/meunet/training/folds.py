"""Cross-validation folds of a dataset spec, turned into the split a training run uses."""

from __future__ import annotations

import dataclasses

from meunet.data.spec import DatasetSpec
from meunet.errors import MeunetError


def select_fold(spec: DatasetSpec, fold: int | None) -> DatasetSpec:
    """``spec`` with fold ``fold`` as the validation cases and the other folds as training cases.

    ``fold=None`` keeps the spec's ``split``; a spec that has folds but no
    ``split.train``/``split.val`` then needs a fold chosen, and says so.
    A ``split.test`` is kept as it is.

    Example:
        >>> spec = DatasetSpec(path=None, name="d", root=None, classes=("bg", "a"), channels=("c",),
        ...                    label_map={}, cases={}, split={}, folds=(("a", "b"), ("c",)))
        >>> select_fold(spec, 1).split
        {'train': ('a', 'b'), 'val': ('c',)}

    Raises:
        MeunetError: for a fold the spec lacks, or folds without a chosen fold.
    """
    where = spec.path or spec.name
    if fold is None:
        if spec.folds and not (spec.split.get("train") and spec.split.get("val")):
            raise MeunetError(
                f"{where}: has {len(spec.folds)} cross-validation folds and no split.train/"
                f"split.val: choose the validation fold with --fold N (fold=N), N in 0..{len(spec.folds) - 1}"
            )
        return spec
    if not spec.folds:
        raise MeunetError(f"{where}: --fold {fold} given, but the dataset has no folds")
    if not 0 <= fold < len(spec.folds):
        raise MeunetError(
            f"{where}: --fold {fold}: the dataset has {len(spec.folds)} folds, 0..{len(spec.folds) - 1}"
        )
    train = tuple(cid for i, ids in enumerate(spec.folds) if i != fold for cid in ids)
    split = {"train": train, "val": tuple(spec.folds[fold])}
    if spec.split.get("test"):
        split["test"] = tuple(spec.split["test"])
    return dataclasses.replace(spec, split=split)
