"""Which torch device a ``device`` setting names (training, prediction, memory)."""

from __future__ import annotations

import platform

import torch

from meunet.errors import MeunetError


def device_name(name: str) -> str:
    """The hardware a ``device`` setting runs on, for reports: the GPU's name, else the CPU's
    architecture (``"x86_64 CPU"``)."""
    if name.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(name))
    return f"{platform.machine() or 'unnamed'} CPU"


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting: auto, cpu, cuda, cuda:N (or mps).

    Raises:
        MeunetError: for a name torch does not know, or a GPU this machine lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise MeunetError(
            f"device {name!r} is not one meunet runs on: use auto, cpu, cuda or cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeunetError(
            f"device {name!r} asked for, but this PyTorch sees no CUDA GPU; "
            "use device cpu (--device cpu, or --set device=cpu in training)"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise MeunetError(
            f"device {name!r}: this machine has {n} CUDA GPU(s), cuda:0 .. cuda:{n - 1}"
        )
    return device
