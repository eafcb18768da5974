"""Networks, created by name from a registry, and saved as self-describing checkpoints.

=================  ===========================================================
name               network
=================  ===========================================================
``unet``           the paper's 3D U-net
``meunet``         meU-net: the same U-net with a level-2 head for expanded patches
``cascade-post``   stage-2 U-net, stage-1 maps at every decoder level (the paper's)
``cascade-pre``    stage-2 U-net, stage-1 maps with the image at the input
``lowres``         a plain U-net for the low-resolution cascade's stage 1
=================  ===========================================================

Example:
    >>> net = create_model("meunet", in_channels=2, num_classes=3)
    >>> net.cfg.deep_head
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meunet.errors import MeunetError
from meunet.models.unet import UNet3D, UNetConfig

__all__ = ["MODELS", "UNet3D", "UNetConfig", "create_model", "load_model", "save_model"]

#: Registered model names and the configuration each one fixes.
MODELS: dict[str, dict[str, Any]] = {
    "unet": {},
    "meunet": {"deep_head": True},
    "cascade-post": {"extra_mode": "post"},
    "cascade-pre": {"extra_mode": "pre"},
    "lowres": {},
}


def create_model(name: str, **cfg: Any) -> UNet3D:
    """Build a registered network; ``cfg`` sets :class:`UNetConfig` fields."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    fixed = MODELS[name]
    clash = {k for k in fixed if k in cfg and cfg[k] != fixed[k]}
    if clash:
        raise ValueError(f"model {name!r} fixes {sorted(clash)}; use another model name instead")
    if name.startswith("cascade") and not cfg.get("extra_channels"):
        raise ValueError(f"model {name!r} needs extra_channels (stage-1 branches x classes)")
    unknown = set(cfg) - set(UNetConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
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
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickled objects are refused by the weights-only unpickler
        raise MeunetError(
            f"{path}: not a meunet checkpoint, or it carries pickled objects that are refused "
            f"for safety ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "config", "state_dict"} <= set(ckpt):
        raise MeunetError(f"{path}: not a meunet checkpoint (needs model, config, state_dict)")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> UNet3D:
    """Rebuild a network from a checkpoint written by :func:`save_model`."""
    ckpt = load_checkpoint(path, map_location)
    model = create_model(ckpt["model"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model
