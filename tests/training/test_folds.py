"""Cross-validation folds: training validates on the chosen fold, or says how to choose one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import meunet
from meunet.data.spec import load_spec
from meunet.errors import MeunetError
from meunet.training.folds import select_fold


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    return meunet.make_phantom_dataset(out, cases=3, shape=(48, 32, 32), seed=1, progress=False)


@pytest.fixture
def folded(phantom: Path) -> Any:
    spec = load_spec(phantom)
    ids = list(spec.cases)
    return dataclasses.replace(spec, split={}, folds=((ids[0],), (ids[1],), (ids[2],)))


def test_a_fold_validates_and_the_others_train(folded: Any) -> None:
    a, b, c = (f[0] for f in folded.folds)
    assert select_fold(folded, 1).split == {"train": (a, c), "val": (b,)}
    assert select_fold(folded, 0).split == {"train": (b, c), "val": (a,)}


@pytest.mark.parametrize(
    "fold, message",
    [
        (None, r"has 3 cross-validation folds and no split.train/split.val: choose .* --fold N"),
        (3, r"--fold 3: the dataset has 3 folds, 0..2"),
    ],
)
def test_folds_without_a_valid_choice_are_refused(folded: Any, fold: Any, message: str) -> None:
    with pytest.raises(MeunetError, match=message):
        select_fold(folded, fold)


def test_a_fold_of_a_spec_without_folds_is_refused(phantom: Path) -> None:
    with pytest.raises(MeunetError, match="--fold 0 given, but the dataset has no folds"):
        select_fold(load_spec(phantom), 0)
    assert select_fold(load_spec(phantom), None) == load_spec(phantom)  # the split stands


def test_training_uses_the_chosen_fold(folded: Any, tmp_path: Path, monkeypatch: Any) -> None:
    import meunet.training.loop as loop

    seen: list[Any] = []
    monkeypatch.setattr(loop, "train", lambda cfg, spec, out, **kw: seen.append(spec.split))
    meunet.train(None, folded, tmp_path / "run", fold=2, progress=False)
    a, b, c = (f[0] for f in folded.folds)
    assert seen == [{"train": (a, b), "val": (c,)}]
    with pytest.raises(MeunetError, match="choose the validation fold"):
        meunet.train(None, folded, tmp_path / "run", progress=False)
