"""Training checkpoints: self-describing, written atomically, checked on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meunet.errors import MeunetError
from meunet.models import UNet3D, load_checkpoint, save_model

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
    if ckpt["model"] != name or ckpt["config"] != model.cfg.to_dict():
        raise MeunetError(
            f"{path}: checkpoint of model {ckpt['model']!r} with config {ckpt['config']}, but this run "
            f"builds {name!r} with {model.cfg.to_dict()}; resume with the config it was trained with, "
            "or train into a new --out folder"
        )
    old = {k: v for k, v in ckpt.get("train_config", {}).items() if k not in RESUMABLE}
    new = {k: v for k, v in train_config.items() if k not in RESUMABLE}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise MeunetError(
            f"{path}: checkpoint was trained with other settings ({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in diff)}); "
            "resume with the same settings (only epochs, patience, workers and device may change), "
            "or train into a new --out folder"
        )


def load_training_state(
    path: Path, model: UNet3D, train_config: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Load ``path`` into ``model`` after checking it belongs to this run; return the checkpoint."""
    ckpt = load_checkpoint(path, map_location=device)
    check_compatible(ckpt, path, model, train_config)
    model.load_state_dict(ckpt["state_dict"])
    return ckpt
