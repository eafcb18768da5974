"""The 3D U-net of the paper, and its variants as configuration.

One network serves every model of ``docs/method.md`` (*The U-net*, *meU-net: a wider
view through the deeper levels*, *The two-stage cascade*):

- ``UNet3D(cfg)`` with ``deep_head=False``: the plain 3D U-net.
- ``deep_head=True``: meU-net. A second 1x1x1 head on the decoder's level-2
  features serves the expanded patch (:meth:`UNet3D.forward_expanded`);
  inference uses the plain path on any patch size.
- ``extra_channels > 0``: the stage-2 U-net of a cascade, taking stage-1
  one-hot maps either at the start of every decoder level, nearest-downsampled
  to its resolution (``extra_mode="post"``, full-level post-concatenation), or
  with the image at the input (``extra_mode="pre"``).
- The low-resolution cascade's stage 1 is a plain U-net on a downsampled
  volume: a data setting, not a network one.

Levels count from 1 (full resolution) to ``len(encoder_channels)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from meunet.errors import SettingError

ExtraMode = Literal["post", "pre"]


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a :class:`UNet3D`; the defaults are the paper's network."""

    in_channels: int = 1  # image channels (modalities)
    num_classes: int = 3  # output classes, background included
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128, 128)  # levels 1 .. L
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16)  # levels L-1 .. 1
    deep_head: bool = False  # meU-net: a level-2 head for the expanded patch
    extra_channels: int = 0  # stage-1 one-hot maps given to a stage-2 network
    extra_mode: ExtraMode = "post"  # where they enter: every decoder level, or the input
    checkpointing: bool = False  # recompute each block in backward instead of storing it

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(self.encoder_channels))
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        if len(self.encoder_channels) < 2:
            raise SettingError("a U-net needs at least 2 levels (encoder_channels)")
        if len(self.decoder_channels) != len(self.encoder_channels) - 1:
            raise SettingError(
                f"decoder_channels needs {len(self.encoder_channels) - 1} entries (levels "
                f"{len(self.encoder_channels) - 1} .. 1), got {len(self.decoder_channels)}"
            )
        for name in ("encoder_channels", "decoder_channels"):
            if any(c < 1 for c in getattr(self, name)):
                raise SettingError(f"{name} must all be >= 1, got {list(getattr(self, name))}")
        if self.in_channels < 1 or self.num_classes < 2 or self.extra_channels < 0:
            raise SettingError("need in_channels >= 1, num_classes >= 2 and extra_channels >= 0")
        if self.extra_mode not in ("post", "pre"):
            raise SettingError(f"extra_mode must be 'post' or 'pre', got {self.extra_mode!r}")

    @property
    def levels(self) -> int:
        return len(self.encoder_channels)

    @property
    def divisor(self) -> int:
        """Input sizes are padded up to a multiple of this (2^(levels-1))."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder_channels"] = list(self.encoder_channels)
        d["decoder_channels"] = list(self.decoder_channels)
        return d


class ConvBlock(nn.Sequential):
    """Two (3x3x3 convolution, BatchNorm, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    @torch.no_grad()
    def forward_pooled_by_sample(self, x: Tensor) -> Tensor:
        """``max_pool3d(self(x), 2)`` without gradients, holding one sample's full maps at a time.

        meU-net's expanded patch goes through level 1 without gradients, but a
        plain forward still holds the whole batch's full-resolution maps (two
        of them at once inside the block), which at large k becomes the peak of
        the whole training step. Here each sample passes alone; training-mode
        BatchNorm still normalises with the statistics of the whole batch,
        gathered (in float64) by extra passes over the samples, and updates its
        running statistics once, as a batched forward would. The price is
        recomputing the first convolution twice and the second once.
        """
        conv1, bn1, relu1, conv2, bn2, relu2 = self
        if not (self.training and x.shape[0] > 1):
            return F.max_pool3d(self(x), 2)
        samples = x.split(1)

        def first(xi: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
            return relu1(_normalise(bn1, conv1(xi), *stats))

        stats1 = _batch_stats(bn1, samples, conv1)
        stats2 = _batch_stats(bn2, samples, lambda xi: conv2(first(xi, stats1)))
        return torch.cat(
            [
                F.max_pool3d(relu2(_normalise(bn2, conv2(first(xi, stats1)), *stats2)), 2)
                for xi in samples
            ]
        )


def _batch_stats(
    bn: nn.BatchNorm3d, samples: tuple[Tensor, ...], fn: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Batch mean and biased variance of ``fn`` over the samples; updates ``bn``'s running stats."""
    total = sq = None
    count = 0
    dims = (0, 2, 3, 4)
    for xi in samples:
        y = fn(xi)
        s, q = y.sum(dims, dtype=torch.float64), y.square().sum(dims, dtype=torch.float64)
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += y.numel() // y.shape[1]
        del y
    assert total is not None and sq is not None
    mean = total / count
    var = (sq / count - mean.square()).clamp_min(0)
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        m = bn.momentum if bn.momentum is not None else 1.0 / (int(bn.num_batches_tracked) + 1)
        bn.running_mean.mul_(1 - m).add_(m * mean.to(bn.running_mean.dtype))
        unbiased = var * count / max(count - 1, 1)
        bn.running_var.mul_(1 - m).add_(m * unbiased.to(bn.running_var.dtype))
        bn.num_batches_tracked.add_(1)
    return mean.float(), var.float()


def _normalise(bn: nn.BatchNorm3d, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    return F.batch_norm(y, mean, var, bn.weight, bn.bias, training=False, eps=bn.eps)


def pad_to_multiple(x: Tensor, divisor: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Zero-pad the three spatial axes at their end up to a multiple of ``divisor``."""
    size = tuple(int(n) for n in x.shape[2:])
    target = tuple(-(-n // divisor) * divisor for n in size)
    if target == size:
        return x, size
    pad = []
    for n, t in zip(reversed(size), reversed(target), strict=True):
        pad += [0, t - n]
    return F.pad(x, pad), size


class UNet3D(nn.Module):
    """3D U-net: ``len(encoder_channels)`` levels, max-pool down, nearest up, skip concatenation.

    Any spatial size works: inputs are zero-padded up to a multiple of
    ``2^(levels-1)`` and outputs cropped back.

    Example:
        >>> net = UNet3D(UNetConfig(in_channels=2, num_classes=3))
        >>> net(torch.zeros(1, 2, 40, 36, 52)).shape
        torch.Size([1, 3, 40, 36, 52])
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc, dec = cfg.encoder_channels, cfg.decoder_channels
        pre = cfg.extra_channels if cfg.extra_mode == "pre" else 0
        post = cfg.extra_channels if cfg.extra_mode == "post" else 0
        self.encoders = nn.ModuleList()
        for i, c in enumerate(enc):
            self.encoders.append(ConvBlock(cfg.in_channels + pre if i == 0 else enc[i - 1], c))
        self.decoders = nn.ModuleList()
        below = enc[-1]
        for k, c in enumerate(dec):  # k = 0 is level L-1
            skip = enc[len(dec) - 1 - k]
            self.decoders.append(ConvBlock(below + skip + post, c))
            below = c
        self.head = nn.Conv3d(dec[-1], cfg.num_classes, 1)
        self.head_level2 = nn.Conv3d(dec[-2], cfg.num_classes, 1) if cfg.deep_head else None

    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _check(self, x: Tensor, extra: Tensor | None) -> None:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected input (batch, {self.cfg.in_channels}, z, y, x), got {tuple(x.shape)}"
            )
        if self.cfg.extra_channels:
            if extra is None:
                raise ValueError(
                    f"this stage-2 network needs {self.cfg.extra_channels} stage-1 channels (extra=)"
                )
            if extra.shape[1] != self.cfg.extra_channels or extra.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"extra maps have shape {tuple(extra.shape)}; expected "
                    f"(batch, {self.cfg.extra_channels}, {', '.join(map(str, x.shape[2:]))})"
                )
        elif extra is not None:
            raise ValueError("extra maps given to a network built without extra_channels")

    def _encode(self, x: Tensor, extra: Tensor | None, level1: bool) -> list[Tensor | None]:
        """Encoder features per level; ``level1=False`` runs level 1 without grad, keeps none of it."""
        if extra is not None and self.cfg.extra_mode == "pre":
            x = torch.cat([x, extra], dim=1)
        if level1:
            h = self._run(self.encoders[0], x)
            skips: list[Tensor | None] = [h]
            h = F.max_pool3d(h, 2)
        else:
            h = self.encoders[0].forward_pooled_by_sample(x)
            skips = [None]
        for i, block in enumerate(self.encoders[1:]):
            if i:
                h = F.max_pool3d(h, 2)
            h = self._run(block, h)
            skips.append(h)
        return skips

    def _decode(self, skips: list[Tensor | None], extra: Tensor | None, stop_level: int) -> Tensor:
        h = skips[-1]
        assert h is not None
        post = extra is not None and self.cfg.extra_mode == "post"
        for k, block in enumerate(self.decoders):
            level = self.cfg.levels - 1 - k
            if level < stop_level:
                break
            skip = skips[level - 1]
            assert skip is not None
            parts = [F.interpolate(h, size=skip.shape[2:], mode="nearest"), skip]
            if post:
                parts.append(F.interpolate(extra, size=skip.shape[2:], mode="nearest"))
            h = self._run(block, torch.cat(parts, dim=1))
        return h

    def forward(self, x: Tensor, extra: Tensor | None = None, expanded: bool = False) -> Tensor:
        """Full-resolution logits (batch, classes, z, y, x): the standard path.

        ``expanded=True`` runs :meth:`forward_expanded` instead (one entry point,
        so that a DDP-wrapped meU-net runs both passes through the wrapper).
        """
        if expanded:
            return self.forward_expanded(x, extra)
        self._check(x, extra)
        x, size = pad_to_multiple(x, self.cfg.divisor)
        if extra is not None:
            extra, _ = pad_to_multiple(extra, self.cfg.divisor)
        logits = self.head(self._decode(self._encode(x, extra, level1=True), extra, stop_level=1))
        return logits[:, :, : size[0], : size[1], : size[2]]

    def forward_expanded(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        """Half-resolution logits of an expanded patch: meU-net's memory-saving path.

        Level 1 of the encoder runs without gradients (its activations are never
        stored); levels 2..L and the decoder down to level 2 run with them, and
        the level-2 head predicts at half resolution (``ceil(size / 2)``).
        """
        if self.head_level2 is None:
            raise ValueError("forward_expanded needs a network built with deep_head=True (meU-net)")
        self._check(x, extra)
        x, size = pad_to_multiple(x, self.cfg.divisor)
        if extra is not None:
            extra, _ = pad_to_multiple(extra, self.cfg.divisor)
        skips = self._encode(x, extra, level1=False)
        logits = self.head_level2(self._decode(skips, extra, stop_level=2))
        return logits[:, :, : -(-size[0] // 2), : -(-size[1] // 2), : -(-size[2] // 2)]
