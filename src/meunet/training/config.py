"""Training configuration: a YAML file plus typed ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from meunet.errors import MeunetError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on besides the data (``configs/*.yaml``)."""

    model: str = "meunet"  # unet | meunet | cascade-post | cascade-pre | lowres
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16)
    patch: int = 64  # standard patch side P
    k: float = 1.5  # meU-net: expanded patch side k * P (rounded to a multiple of 16)
    infer_patch: int = 0  # inference/validation window side (0: E for meU-net, else P)
    batch: int = 2  # patches per optimizer step (the global batch, shared by DDP processes)
    micro_batches: int = 1  # split each batch, averaging the parts' gradients (what DDP does)
    lr: float = 9e-4  # Adam, the paper's
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    patience: int = 30  # epochs without validation improvement before stopping
    patches_per_epoch: int = 0  # cap on sampled patches per epoch (0: all the sampler keeps)
    bg_threshold: float = 0.99  # background fraction that makes a candidate patch "background"
    bg_keep: float = 0.1  # probability a background candidate is kept in an epoch (the roulette)
    fusion: str = "vote"  # validation fusion: vote (the paper's) or prob
    checkpointing: bool = False  # gradient checkpointing per block
    amp: bool = True  # float16 autocast, on CUDA only
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    workers: int = 0  # DataLoader worker processes
    seed: int = 0
    downsample: int = 1  # low-resolution stage 1: train on volumes downsampled by this factor

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(self.encoder_channels))
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        problems = []
        if self.patch < 16 or self.patch % 2:
            problems.append(f"patch must be an even number >= 16, got {self.patch}")
        if self.infer_patch and (self.infer_patch < 16 or self.infer_patch % 2):
            problems.append(
                f"infer_patch must be 0 (the default window) or an even number >= 16, got {self.infer_patch}"
            )
        if not 1.0 <= self.k <= 4.0:
            problems.append(f"k must lie in [1, 4], got {self.k}")
        if self.batch < 1 or self.epochs < 1 or self.patience < 1:
            problems.append("batch, epochs and patience must be >= 1")
        if self.micro_batches < 1 or self.batch % self.micro_batches:
            problems.append(
                f"batch {self.batch} must be a multiple of micro_batches {self.micro_batches}"
            )
        if self.fusion not in ("vote", "prob"):
            problems.append(f"fusion must be vote or prob, got {self.fusion!r}")
        if self.downsample < 1:
            problems.append(f"downsample must be >= 1, got {self.downsample}")
        for name in ("encoder_channels", "decoder_channels"):
            if any(c < 1 for c in getattr(self, name)):
                problems.append(f"{name} must all be >= 1, got {list(getattr(self, name))}")
        deepest = self.patch >> max(len(self.encoder_channels) - 1, 0)
        if deepest <= 1 and 1 <= self.batch < 2 * max(self.micro_batches, 1):
            # BatchNorm needs two values per channel: one 1-voxel patch gives it one
            problems.append(
                f"patch {self.patch} leaves one voxel at the deepest of {len(self.encoder_channels)} "
                f"levels, and batch {self.batch} (micro_batches {self.micro_batches}) gives "
                "BatchNorm one value there: use batch >= 2 per micro-batch, or a larger patch"
            )
        if not self.lr > 0 or not math.isfinite(self.lr):
            problems.append(f"lr must be a positive number, got {self.lr}")
        for name in ("patches_per_epoch", "workers", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.bg_threshold <= 1.0:
            problems.append(f"bg_threshold must lie in (0, 1], got {self.bg_threshold}")
        if not 0.0 <= self.bg_keep <= 1.0:
            problems.append(f"bg_keep must be a probability in [0, 1], got {self.bg_keep}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            problems.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if problems:
            raise MeunetError("invalid training config: " + "; ".join(problems))

    @property
    def expanded(self) -> int:
        """Expanded patch side for meU-net (a multiple of 16), else 0."""
        if self.model != "meunet":
            return 0
        return max(16, int(self.k * self.patch / 16 + 0.5) * 16)

    @property
    def window(self) -> int:
        """Sliding-window side used at inference: ``infer_patch``, else E for meU-net, else P.

        A meU-net's deeper levels learned from E^3 expanded patches; windows of
        E give them that much data to look at, and cost far less memory at
        inference than the expanded patches did in training.
        """
        return self.infer_patch or self.expanded or self.patch

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder_channels"] = list(self.encoder_channels)
        d["decoder_channels"] = list(self.decoder_channels)
        return d


def checkpoint_window(ckpt: Mapping[str, Any]) -> int:
    """The sliding-window side a checkpoint is meant to be predicted with.

    Training records the resolved :attr:`TrainConfig.window` as the checkpoint's
    ``infer_patch``; a checkpoint from before that gets the default its
    training settings (or, lacking those, its model name) resolve to.

    Example:
        >>> checkpoint_window({"model": "meunet", "train_config": {"patch": 32, "k": 1.5}})
        48
    """
    if ckpt.get("infer_patch"):
        return int(ckpt["infer_patch"])
    known = {f.name for f in fields(TrainConfig)}
    given = {"model": ckpt.get("model", "unet"), **ckpt.get("train_config", {})}
    return TrainConfig(**{k: v for k, v in given.items() if k in known}).window


def _coerce(name: str, value: Any, kind: Any) -> Any:
    text = str(kind)
    try:
        if "tuple" in text:
            items = yaml.safe_load(value) if isinstance(value, str) else value
            return tuple(int(v) for v in items)
        if text in ("bool", "<class 'bool'>"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if text in ("int", "<class 'int'>"):
            return int(value)
        if text in ("float", "<class 'float'>"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise MeunetError(f"training config: {name}={value!r} is not a valid {text}") from None


def override(base: TrainConfig, items: list[str]) -> TrainConfig:
    """``base`` with ``key=value`` overrides applied (parsed and checked as by :func:`load_config`)."""
    if not items:
        return base
    given = load_config(None, items)
    keys = {item.split("=", 1)[0].strip() for item in items}
    return dataclasses.replace(base, **{k: getattr(given, k) for k in keys})


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MeunetError(f"{p}: training config not found (see configs/ for examples)")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise MeunetError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise MeunetError(f"{p}: expected a mapping of training settings")
    for item in overrides or []:
        if "=" not in item:
            raise MeunetError(f"--set {item!r}: write key=value, e.g. --set patch=96")
        key, value = item.split("=", 1)
        raw[key.strip()] = value.strip()
    known = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise MeunetError(f"unknown training settings {unknown}; known: {sorted(known)}")
    return TrainConfig(**{k: _coerce(k, v, known[k]) for k, v in raw.items()})
