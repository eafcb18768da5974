"""Networks, created by name from a registry, and saved as self-describing checkpoints.

=================  ===========================================================
name               network
=================  ===========================================================
``unet``           the paper's 3D U-net
``meunet``         meU-net: the same U-net with a level-2 head for expanded patches
``cascade-post``   stage-2 U-net, stage-1 maps at every decoder level (the paper's)
``cascade-pre``    stage-2 U-net, stage-1 maps with the image at the input
=================  ===========================================================

The low-resolution cascade's stage 1 is a plain ``unet`` trained with
``downsample: 2`` (a data setting); the old name ``lowres`` is read as ``unet``.
What a name implies (a deep head, stage-1 inputs) is asked of :func:`variant`,
never by comparing names.

Example:
    >>> net = create_model("meunet", in_channels=2, num_classes=3)
    >>> net.cfg.deep_head
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meunet.errors import MeunetError, SettingError
from meunet.models.unet import UNet3D, UNetConfig

__all__ = [
    "MODELS",
    "ModelVariant",
    "UNet3D",
    "UNetConfig",
    "canonical_name",
    "create_model",
    "load_model",
    "save_model",
    "variant",
]

#: Registered model names and the configuration each one fixes.
MODELS: dict[str, dict[str, Any]] = {
    "unet": {},
    "meunet": {"deep_head": True},
    "cascade-post": {"extra_mode": "post"},
    "cascade-pre": {"extra_mode": "pre"},
}
#: Names read as another (checkpoints and configs written before the rename).
ALIASES = {"lowres": "unet"}


def canonical_name(name: str) -> str:
    """The registered name ``name`` stands for (``lowres`` -> ``unet``); others unchanged."""
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class ModelVariant:
    """What a registered model name implies for training and prediction."""

    deep_head: bool  # meU-net: trained on an expanded patch too
    takes_extra: bool  # a cascade's stage 2: needs stage-1 maps (extra_channels > 0)


def variant(name: str) -> ModelVariant:
    """The behaviour a model name fixes, read from the configuration it registers.

    Example:
        >>> variant("meunet")
        ModelVariant(deep_head=True, takes_extra=False)
    """
    fixed = MODELS.get(canonical_name(name))
    if fixed is None:
        raise SettingError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return ModelVariant(bool(fixed.get("deep_head", False)), "extra_mode" in fixed)


def create_model(name: str, **cfg: Any) -> UNet3D:
    """Build a registered network; ``cfg`` sets :class:`UNetConfig` fields."""
    if not isinstance(name, str) or canonical_name(name) not in MODELS:
        raise SettingError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    name = canonical_name(name)
    fixed = MODELS[name]
    clash = {k for k in fixed if k in cfg and cfg[k] != fixed[k]}
    if clash:
        raise SettingError(f"model {name!r} fixes {sorted(clash)}; use another model name instead")
    if variant(name).takes_extra and not cfg.get("extra_channels"):
        raise SettingError(f"model {name!r} needs extra_channels (stage-1 branches x classes)")
    unknown = set(cfg) - set(UNetConfig.__dataclass_fields__)
    if unknown:
        raise SettingError(
            f"unknown settings {sorted(unknown)} for {name!r}; known: {sorted(UNetConfig.__dataclass_fields__)}"
        )
    model = UNet3D(UNetConfig(**{**cfg, **fixed}))
    model.name = name  # type: ignore[assignment]
    return model


def save_model(path: str | Path, model: UNet3D, **extra: Any) -> None:
    """Save weights with what rebuilds the model: ``{"model", "config", "state_dict", ...}``.

    Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
    """
    from meunet.data.io.atomic import atomic_path

    payload = {
        "model": getattr(model, "name", "unet"),
        "config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        **extra,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise MeunetError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise MeunetError(
            f"{path}: empty file (0 bytes), not a checkpoint; it was cut off while being written "
            "or copied: copy it again, or train again"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickled objects are refused by the weights-only unpickler
        raise MeunetError(_unreadable(path, e)) from None
    if not isinstance(ckpt, dict) or not {"model", "config", "state_dict"} <= set(ckpt):
        raise MeunetError(f"{path}: not a meunet checkpoint (needs model, config, state_dict)")
    return ckpt


def _unreadable(path: Path, e: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, without torch's advice to
    retry with ``weights_only=False`` (which runs whatever code the file carries)."""
    text = str(e)
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if pickled:
        return (
            f"{path}: carries pickled objects that are refused for safety ({pickled.group(1)}): "
            "loading them can run any code, so do not retry with weights_only=False. meunet "
            "checkpoints hold only tensors and plain values; if this file is yours, load it "
            "where it was made and re-save the weights with meunet (meunet.save_model), "
            "or train again"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = [line for line in text.splitlines() if line.strip()]
    reason = detail.group(1) if detail else (lines[0] if lines else "no details")
    return (
        f"{path}: not a meunet checkpoint: cannot read it ({type(e).__name__}: "
        f"{reason.split('. ')[0][:200]}); it is corrupt, truncated or another kind of file: "
        "copy it again, or train again"
    )


def load_weights(model: UNet3D, state_dict: Any, path: str | Path) -> None:
    """Load a checkpoint's ``state_dict`` into ``model``, naming ``path`` when it does not fit."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = "; ".join(lines[1:3] or lines[:1])[:300]
        raise MeunetError(
            f"{path}: its weights do not fit the network its config describes ({reason}); "
            "the file was damaged or edited: use the checkpoint as meunet wrote it, or train again"
        ) from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> UNet3D:
    """Rebuild a network from a checkpoint written by :func:`save_model`."""
    ckpt = load_checkpoint(path, map_location)
    try:
        model = create_model(ckpt["model"], **ckpt["config"])
    except (SettingError, TypeError, ValueError) as e:
        raise MeunetError(
            f"{path}: its model description does not build a network ({e}); the file was "
            "damaged or edited: use the checkpoint as meunet wrote it, or train again"
        ) from None
    load_weights(model, ckpt["state_dict"], path)
    return model
