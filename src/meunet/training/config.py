"""The one run configuration: a nested YAML file plus typed ``--set a.b=value`` overrides.

A run's settings fall into five sections, read by training, ``meunet plan``
and ``meunet memory`` alike::

    model:        {name: meunet, encoder_channels: [...], decoder_channels: [...], checkpointing: false}
    sampler:      {patch: 64, k: 1.5, bg_threshold: 0.99, bg_keep: 0.1, patches_per_epoch: 0, downsample: 1}
    optimisation: {batch: 2, micro_batches: 1, lr: 0.0009, epochs: 200, patience: 30}
    runtime:      {device: auto, amp: true, workers: 0, seed: 0}
    inference:    {infer_patch: 0, fusion: vote}

``patch`` (and ``infer_patch``) is one side (a cube) or three, ``[z, y, x]``;
``patch: auto`` (or ``auto:N``, within N^3 voxels) picks per-axis sides from
the dataset's spacing (:func:`resolve_patch`).

A flat file (every key at the top, as configs were written before sections)
is read the same way. :class:`TrainConfig` holds the values, one attribute per
key; :data:`SECTIONS` says where each key lives.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from meunet.data.patch_size import (
    PatchSize,
    as_json,
    auto_cube,
    compact,
    parse_patch,
    patch_shape,
)
from meunet.errors import MeunetError
from meunet.models import canonical_name, variant

#: The sections of a run configuration and the keys each holds.
SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("model", "encoder_channels", "decoder_channels", "checkpointing"),
    "sampler": ("patch", "k", "bg_threshold", "bg_keep", "patches_per_epoch", "downsample"),
    "optimisation": ("batch", "micro_batches", "lr", "epochs", "patience"),
    "runtime": ("device", "amp", "workers", "seed"),
    "inference": ("infer_patch", "fusion"),
}
_SECTION_OF = {key: section for section, keys in SECTIONS.items() for key in keys}
#: Keys named otherwise inside their section (``model: {name: meunet}``).
_NESTED_NAME = {"model": "name"}
_FLAT_NAME = {(_SECTION_OF[k], v): k for k, v in _NESTED_NAME.items()}
EXPANDED_MULTIPLE = 16  # the paper's 5-level network pads to multiples of 2^4


def expanded_patch(patch: PatchSize, k: float, multiple: int = EXPANDED_MULTIPLE) -> PatchSize:
    """meU-net's expanded patch: ``k * patch`` per axis, each side rounded to a multiple of 16 (at least 16).

    The one place this is computed (training, sampling, ``meunet plan`` and
    ``meunet memory`` all call it). A cube's side gives a side, per-axis
    sides give per-axis sides (:mod:`meunet.data.patch_size`).

    Example:
        >>> expanded_patch(64, 1.5), expanded_patch(32, 1.75), expanded_patch((16, 64, 64), 1.5)
        (96, 64, (32, 96, 96))
    """
    m = multiple
    return compact([max(m, int(k * p / m + 0.5) * m) for p in patch_shape(patch)])


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on besides the data (``configs/*.yaml``)."""

    model: str = "meunet"  # unet | meunet | cascade-post | cascade-pre (lowres: read as unet)
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16)
    patch: PatchSize | str = 64  # standard patch P: a side, [z, y, x] sides, or auto (auto:N)
    k: float = 1.5  # meU-net: expanded patch k * P per axis (rounded to multiples of 16)
    infer_patch: PatchSize = 0  # inference/validation window, like patch (0: E for meU-net, else P)
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
        object.__setattr__(self, "model", canonical_name(str(self.model)))
        problems = []
        try:
            object.__setattr__(self, "patch", parse_patch(self.patch, "patch", allow_auto=True))
            object.__setattr__(self, "infer_patch", parse_patch(self.infer_patch, "infer_patch"))
        except MeunetError as e:
            raise MeunetError(f"invalid training config: {e}") from None
        try:
            variant(self.model)
        except MeunetError as e:
            problems.append(str(e))
        sides = () if self.patch_is_auto else patch_shape(self.patch)  # type: ignore[arg-type]
        if any(p < 16 or p % 2 for p in sides):
            what = (
                "must be an even number"
                if isinstance(self.patch, int)
                else "sides must be even numbers"
            )
            problems.append(f"patch {what} >= 16, got {_written(self.patch)}")
        if self.infer_patch and any(p < 16 or p % 2 for p in patch_shape(self.infer_patch)):
            what = "an even number" if isinstance(self.infer_patch, int) else "even numbers"
            problems.append(
                f"infer_patch must be 0 (the default window) or {what} >= 16, "
                f"got {_written(self.infer_patch)}"
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
        deepest = math.prod(-(-p >> max(len(self.encoder_channels) - 1, 0)) for p in sides)
        if sides and deepest <= 1 and 1 <= self.batch < 2 * max(self.micro_batches, 1):
            # BatchNorm needs two values per channel: one 1-voxel patch gives it one
            problems.append(
                f"patch {_written(self.patch)} leaves one voxel at the deepest of {len(self.encoder_channels)} "
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
    def patch_is_auto(self) -> bool:
        """True while ``patch`` is ``auto`` (:func:`resolve_patch` picks it from the dataset)."""
        return isinstance(self.patch, str)

    @property
    def divisor(self) -> int:
        """The network pads every input side to a multiple of this (2^(levels-1))."""
        return 2 ** max(len(self.encoder_channels) - 1, 0)

    def _sized(self) -> PatchSize:
        if isinstance(self.patch, str):
            raise MeunetError(
                "patch: auto is chosen from the dataset's spacing and shapes; resolve it first "
                "(meunet.training.config.resolve_patch(cfg, spec); training does)"
            )
        return self.patch

    @property
    def expanded(self) -> PatchSize:
        """Expanded patch for a network with a deep head (:func:`expanded_patch`), else 0."""
        if not variant(self.model).deep_head:
            return 0
        return expanded_patch(self._sized(), self.k)

    @property
    def window(self) -> PatchSize:
        """Sliding-window size used at inference: ``infer_patch``, else E for meU-net, else P.

        A meU-net's deeper levels learned from expanded patches; windows of
        E give them that much data to look at, and cost far less memory at
        inference than the expanded patches did in training.
        """
        return self.infer_patch or self.expanded or self._sized()

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{key: value}`` (JSON types): what checkpoints record as ``train_config``.

        A cube's side is recorded as an int and other sizes as ``[z, y, x]``.
        """
        d = dataclasses.asdict(self)
        d["encoder_channels"] = list(self.encoder_channels)
        d["decoder_channels"] = list(self.decoder_channels)
        for key in ("patch", "infer_patch"):
            if isinstance(d[key], tuple):
                d[key] = as_json(d[key])
        return d

    def to_nested(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}``, as a YAML config is written (:data:`SECTIONS`)."""
        flat = self.to_dict()
        return {
            section: {_NESTED_NAME.get(k, k): flat[k] for k in keys}
            for section, keys in SECTIONS.items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = True) -> TrainConfig:
        """Build from a flat or nested mapping (a checkpoint's ``train_config``, a manifest's).

        ``strict=False`` drops keys this version does not know (a record
        written by another version of meunet) instead of refusing them.
        """
        flat = _flatten(data, "config")
        known = {f.name: f.type for f in fields(cls)}
        if not strict:
            flat = {k: v for k, v in flat.items() if k in known}
        unknown = sorted(set(flat) - set(known))
        if unknown:
            raise MeunetError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**{k: _coerce(k, v, known[k]) for k, v in flat.items()})

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> TrainConfig:
        """The settings a checkpoint records (``train_config``, flat or nested).

        A checkpoint from before they were recorded gets the defaults of its model.
        """
        given = {"model": ckpt.get("model", "unet"), **_flatten(ckpt.get("train_config") or {}, "")}
        return cls.from_dict(given, strict=False)

    def sampler_config(self) -> Any:
        """The :class:`~meunet.data.sampling.SamplerConfig` this run samples patches with."""
        from meunet.data.sampling import SamplerConfig

        return SamplerConfig(
            patch=self._sized(),
            expanded=self.expanded,
            bg_threshold=self.bg_threshold,
            bg_keep=self.bg_keep,
            max_patches=self.patches_per_epoch,
        )


def checkpoint_window(ckpt: Mapping[str, Any]) -> PatchSize:
    """The sliding window a checkpoint is meant to be predicted with (an int: a cube's side).

    Training records the resolved :attr:`TrainConfig.window` as the checkpoint's
    ``infer_patch``; a checkpoint from before that gets the default its
    training settings (or, lacking those, its model name) resolve to.

    Example:
        >>> checkpoint_window({"model": "meunet", "train_config": {"patch": 32, "k": 1.5}})
        48
    """
    if ckpt.get("infer_patch"):
        return parse_patch(ckpt["infer_patch"], "checkpoint infer_patch")  # type: ignore[return-value]
    return TrainConfig.from_checkpoint(ckpt).window


def resolve_patch(
    cfg: TrainConfig, spec: Any, case_ids: Sequence[str] | None = None
) -> TrainConfig:
    """``cfg`` with ``patch: auto`` replaced by :func:`~meunet.data.patch_size.auto_patch`'s choice.

    The spacing is the dataset spec's, else the median of the cases' own; the
    volumes are the training cases (``case_ids``, default the train split).
    A config whose patch is given is returned as it is. A low-resolution
    stage (``downsample`` > 1) gets the choice for the downsampled volumes it
    trains on. The choice and any thin axis are printed on stderr.
    """
    cube = auto_cube(cfg.patch)
    if cube is None:
        return cfg
    from meunet.data.patch_size import dataset_patch

    choice = dataset_patch(spec, case_ids, cube, cfg.divisor, cfg.downsample)
    scale = f" (volumes downsampled by {cfg.downsample})" if cfg.downsample > 1 else ""
    print(f"patch: auto{scale} -> {choice.describe()}", file=sys.stderr, flush=True)
    for note in choice.notes:
        print(f"warning: patch: auto: {note}", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, patch=choice.patch)


def _written(size: Any) -> str:
    """A size as a config writes it (``64``, ``[16, 64, 64]``)."""
    return str(list(size)) if isinstance(size, tuple) else str(size)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    text = str(kind)
    if name in ("patch", "infer_patch"):  # one side or three; checked by TrainConfig
        try:
            return parse_patch(value, name, allow_auto=name == "patch")
        except MeunetError:
            auto = ", nor auto" if name == "patch" else ""
            raise MeunetError(
                f"training config: {name}={value!r} is not a valid int, nor three sides "
                f"[z, y, x]{auto}"
            ) from None
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


def _flatten(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{section: {key: v}}`` and/or ``{key: v}`` -> ``{key: v}``, refusing a key in the wrong section."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, v in value.items():
                sub = _FLAT_NAME.get((key, sub), sub)
                home = _SECTION_OF.get(sub)
                if home is not None and home != key:
                    raise MeunetError(f"{where}: {key}.{sub}: {sub} belongs in section {home}")
                if home is None:
                    raise MeunetError(
                        f"{where}: unknown setting {key}.{sub}; section {key} holds "
                        f"{[_NESTED_NAME.get(k, k) for k in SECTIONS[key]]}"
                    )
                flat[sub] = v
        else:
            flat[key] = value
    return flat


def _parse_overrides(items: list[str]) -> dict[str, str]:
    """``["sampler.patch=96", "lr=1e-3"]`` -> ``{"patch": "96", "lr": "1e-3"}`` (checked)."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise MeunetError(f"--set {item!r}: write key=value, e.g. --set sampler.patch=96")
        key, value = (x.strip() for x in item.split("=", 1))
        if "." in key:
            section, sub = key.split(".", 1)
            if section not in SECTIONS:
                raise MeunetError(
                    f"--set {item!r}: no section {section!r}; sections: {list(SECTIONS)}"
                )
            out.update(_flatten({section: {sub: value}}, f"--set {item!r}"))
        else:
            out[key] = value
    return out


def override(base: TrainConfig, items: list[str]) -> TrainConfig:
    """``base`` with ``key=value`` / ``section.key=value`` overrides (parsed and checked as by :func:`load_config`)."""
    if not items:
        return base
    given = load_config(None, items)
    keys = set(_parse_overrides(items))
    return dataclasses.replace(base, **{k: getattr(given, k) for k in keys})


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, nested or flat (or the defaults), and apply ``--set`` overrides.

    Example:
        >>> load_config(None, ["sampler.patch=32", "model.name=unet"]).window
        32
    """
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise MeunetError(f"{p}: training config not found (see configs/ for examples)")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise MeunetError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise MeunetError(f"{p}: expected a mapping of training settings")
    flat = _flatten(raw, where)
    flat.update(_parse_overrides(overrides or []))
    return TrainConfig.from_dict(flat)
