"""Training checkpoints: self-describing, written atomically, checked on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meunet.data.identity import dataset_changes
from meunet.data.patch_size import parse_patch
from meunet.errors import MeunetError
from meunet.models import UNet3D, canonical_name, load_checkpoint, load_weights, save_model

#: Settings that may change between a run and its resumption (they do not change the model).
RESUMABLE = {"epochs", "patience", "workers", "device"}


def save_training_state(path: Path, model: UNet3D, **state: Any) -> None:
    """Write model, optimizer, scaler, RNG and loop state; temporary file, then rename."""
    save_model(path, model, **state)


def check_compatible(
    ckpt: dict[str, Any], path: Path, model: UNet3D, train_config: dict[str, Any]
) -> None:
    """Refuse a checkpoint of another model, network config or training config."""
    name = getattr(model, "name", "unet")
    if canonical_name(ckpt["model"]) != name or ckpt["config"] != model.cfg.to_dict():
        raise MeunetError(
            f"{path}: checkpoint of model {ckpt['model']!r} with config {ckpt['config']}, but this run "
            f"builds {name!r} with {model.cfg.to_dict()}; resume with the config it was trained with, "
            "or train into a new --out folder"
        )
    check_settings(ckpt.get("train_config", {}), path, train_config)


def check_settings(recorded: dict[str, Any], path: Path, train_config: dict[str, Any]) -> None:
    """Refuse resuming ``path`` (a checkpoint or a cascade stage) with other training settings."""
    # a checkpoint from before infer_patch existed was trained with its default (0)
    old = {"infer_patch": 0, **recorded}
    old = {k: v for k, v in old.items() if k not in RESUMABLE}
    new = {k: v for k, v in train_config.items() if k not in RESUMABLE}
    for d in (old, new):  # "lowres" is read as "unet"
        if "model" in d:
            d["model"] = canonical_name(d["model"])
        for key in ("patch", "infer_patch"):  # [64, 64, 64] is 64; a list reads as a tuple
            if key in d:
                d[key] = parse_patch(d[key], key, allow_auto=True)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise MeunetError(
            f"{path}: was trained with other settings ({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff)}); "
            "resume with the same settings (only epochs, patience, workers and device may change), "
            "or train into a new --out folder"
        )


def check_dataset(recorded: dict[str, Any] | None, path: Path, dataset: dict[str, Any]) -> None:
    """Refuse resuming ``path`` on another dataset than it was trained on.

    ``recorded`` and ``dataset`` are :func:`~meunet.data.identity.dataset_identity`
    records; a checkpoint from before datasets were recorded (None) is taken as is.
    """
    if not recorded:
        return
    changes = dataset_changes(recorded, dataset)
    if not changes:
        return
    old, new = recorded.get("spec"), dataset.get("spec")
    which = f"{old}, which has changed since" if old == new else f"{old}, but this run gives {new}"
    raise MeunetError(
        f"{path}: was trained on the dataset {which} ({'; '.join(changes)}); resume with the "
        "dataset it was trained on, or train into a new --out folder"
    )


def load_training_state(
    path: Path,
    model: UNet3D,
    train_config: dict[str, Any],
    device: torch.device,
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``path`` into ``model`` after checking it belongs to this run; return the checkpoint.

    ``dataset`` (:func:`~meunet.data.identity.dataset_identity`) is compared
    with the one the checkpoint records.
    """
    ckpt = load_checkpoint(path, map_location=device)
    check_compatible(ckpt, path, model, train_config)
    if dataset is not None:
        check_dataset(ckpt.get("dataset"), path, dataset)
    load_weights(model, ckpt["state_dict"], path)
    return ckpt
