"""Options and argparse types that several ``meunet`` subcommands share."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

HELP_OVERWRITE = (
    "replace an existing output that meunet did not write (never an input); "
    "meunet's own outputs are replaced without it"
)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def at_least_or_auto(low: int) -> Callable[[str], int | str]:
    """An argparse ``type``: ``auto``, or a whole number ``>= low``."""
    number = at_least(low)

    def parse(text: str) -> int | str:
        return "auto" if text == "auto" else number(text)

    return parse


def number_in(low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse ``type``: a number with ``low <= value < high``, ``what`` completing "must ..." in its message."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"must {what}, got {text}")
        return value

    return parse


fraction = number_in(0.0, 1.0, "lie in [0, 1), e.g. 0.5")  # a window overlap
distance = number_in(
    0.0, math.inf, "be a distance >= 0 in voxels, e.g. 22"
)  # the context phantom's D


def settings_epilog(defaults: bool = True) -> str:
    """The keys ``--set`` takes, by section, with :class:`TrainConfig`'s defaults (for ``--help``)."""
    from meunet.training.config import SECTIONS, TrainConfig

    def show(value: object) -> str:  # as --set takes it: a list without spaces
        return f"[{','.join(map(str, value))}]" if isinstance(value, tuple) else str(value)

    cfg = TrainConfig().to_nested()
    if not defaults:
        keys = ", ".join(f"{s}.{k}" for s, section in cfg.items() for k in section)
        return f"settings for --set SECTION.KEY=VALUE (or KEY=VALUE): {keys}"
    flat = TrainConfig()
    parts = [
        f"{s}.{k} ({show(getattr(flat, name))})"
        for s, names in SECTIONS.items()
        for k, name in zip(cfg[s], names, strict=True)
    ]
    return "settings for --set SECTION.KEY=VALUE (or KEY=VALUE), with their defaults: " + ", ".join(
        parts
    )


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_fold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fold",
        type=at_least(0),
        default=None,
        help="with a dataset of cross-validation folds: the fold validated on "
        "(the other folds train)",
    )


def add_chunks_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunks",
        type=at_least(1),
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="Zarr chunk shape (default 64^3)",
    )


def add_spacing_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"), help=help
    )


def add_shape_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--shape", type=int, nargs=3, default=(128, 96, 96), metavar=("Z", "Y", "X"), help=help
    )


def add_cut_options(p: argparse.ArgumentParser) -> None:
    """The options ``split-volume`` and ``crop`` share."""
    p.add_argument(
        "--image", required=True, action="append", help="image volume; repeat once per channel"
    )
    p.add_argument("--label", required=True, help="label volume, on the image's grid")
    p.add_argument("--out", required=True, help="output folder (cases and dataset.yaml)")
    p.add_argument(
        "--format", default="zarr", help="file suffix: zarr (default), nii.gz, nrrd, tif, h5, npy"
    )
    p.add_argument(
        "--no-copy",
        action="store_true",
        help="write only dataset.yaml, whose cases are bbox: regions of the inputs (no copy)",
    )
    p.add_argument("--val", nargs="+", default=[], metavar="CASE", help="cases that validate")
    p.add_argument("--test", nargs="+", default=[], metavar="CASE", help="cases held out to test")
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="class names for label values 0..N-1 (default: the label's segment names, "
        "else background, class1, ...)",
    )
    p.add_argument("--channels", nargs="+", default=None, metavar="NAME", help="channel names")
    add_spacing_option(
        p, "voxel size overriding the files' (written to the cases and to dataset.yaml)"
    )
    p.add_argument(
        "--min-size",
        type=at_least(1),
        default=16,
        help="smallest block side allowed, except along an axis not cut (default 16)",
    )
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The run configuration ``memory`` and ``plan`` read, as training does; the flags override it."""
    p.add_argument(
        "--config",
        default=None,
        help="training config (configs/*.yaml), as `meunet train` reads it "
        "(default: training's defaults)",
    )
    add_set_option(p, "override a config setting, e.g. --set sampler.patch=96 (repeatable)")
    p.add_argument(
        "--model",
        default=None,
        help="unet, meunet, cascade-post, cascade-pre (default: the config's, meunet)",
    )
    p.add_argument(
        "--k", type=float, default=None, help="meU-net expansion factor (default: the config's)"
    )
    p.add_argument(
        "--batch",
        type=at_least(1),
        default=None,
        help="patches per step (default: the config's, 2)",
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="float16 autocast, on CUDA only (default: the config's, on)",
    )
    p.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradient checkpointing per block (default: the config's, off)",
    )
    p.add_argument(
        "--device", default=None, help="auto, cpu or cuda[:N] (default: the config's, auto)"
    )
    p.add_argument("--in-channels", type=at_least(1), default=1, help="input channels (default 1)")
    p.add_argument(
        "--classes",
        type=at_least(2),
        default=3,
        help="classes, background included (default 3)",
    )


def training_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of :func:`add_training_options`: ``--config`` and ``--set``, then the flags."""
    from meunet.api import load_training_config

    cfg = load_training_config(args.config, args.set)
    flags = {
        "model": args.model,
        "k": args.k,
        "batch": args.batch,
        "amp": args.amp,
        "checkpointing": args.checkpointing,
        "device": args.device,
    }
    return dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})


def memory_config(args: argparse.Namespace, cfg: Any, patch: Any) -> Any:
    """The :class:`~meunet.memory.MemoryConfig` of ``cfg`` at ``patch``, with ``--in-channels`` and ``--classes``."""
    from meunet.memory import MemoryConfig

    return MemoryConfig.from_train(cfg, args.in_channels, args.classes, patch=patch)
