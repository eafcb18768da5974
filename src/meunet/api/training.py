"""Training one network or a cascade: :func:`train`, :func:`train_cascade`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from meunet.api.types import ConfigLike, DataLike, as_spec
from meunet.training.config import TrainConfig
from meunet.training.run import CascadeRun, Run


def load_training_config(config: ConfigLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a config object, YAML path or mapping, with ``--set`` items applied."""
    from meunet.training.config import load_config, override

    if isinstance(config, TrainConfig):
        return override(config, list(overrides))
    if isinstance(config, Mapping):
        return override(TrainConfig.from_dict(config), list(overrides))
    return load_config(config, list(overrides))


def train(
    config: ConfigLike,
    data: DataLike,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    fold: int | None = None,
    progress: bool = True,
) -> Path:
    """Train one network; return its best checkpoint (``OUT/best.pt``).

    Args:
        config: Training settings (``configs/*.yaml``, a mapping, or a TrainConfig).
        data: The dataset: train and val splits, or ``folds`` with ``fold``.
        out: Run folder (:class:`~meunet.training.run.Run`): new, empty or meunet's.
        overrides: ``--set`` items, e.g. ``["optimisation.epochs=5"]``.
        resume: Continue exactly from ``OUT/last.pt``.
        fold: With a dataset of cross-validation folds: the fold validated on.
        progress: Show progress bars.
    """
    from meunet.training.folds import select_fold
    from meunet.training.loop import train as train_loop

    cfg = load_training_config(config, overrides)
    spec = select_fold(as_spec(data), fold)
    return train_loop(cfg, spec, Run(out).folder, resume=resume, progress=progress)


def train_cascade(
    config: ConfigLike,
    data: DataLike,
    out: str | Path,
    *,
    mode: str = "post",
    overrides: Sequence[str] = (),
    fold: int | None = None,
    progress: bool = True,
) -> Path:
    """Train a whole cascade (stage-1 branches, their maps, stage 2); return its ``cascade.json``.

    Rerunning resumes: finished stages are reused (if made with the same
    settings and data), an interrupted one continues. ``mode``: ``post``
    (the paper's), ``pre`` or ``lowres``. The manifest is what
    :func:`predict` takes to run the whole cascade.
    """
    from meunet.training.cascade import train_cascade as train_stages
    from meunet.training.folds import select_fold

    base = load_training_config(config, overrides)
    spec = select_fold(as_spec(data), fold)
    run = CascadeRun(out)
    train_stages(spec, run.folder, mode=mode, base=base, progress=progress)
    return run.manifest_path
