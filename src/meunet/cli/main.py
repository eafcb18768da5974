"""``meunet``: one command, with subcommands.

Each subcommand parses its arguments and calls the library. Errors caused by
the input (:class:`~meunet.errors.MeunetError`, and argparse's own) print one
line and exit with status 2; any other exception is a bug in meunet: it keeps
its traceback, asks to be reported, and exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Callable, Sequence

from meunet.cli.data_commands import (
    PAPER_SHAPE,
    cmd_check,
    cmd_convert,
    cmd_info,
    cmd_phantom,
    cmd_resample,
)
from meunet.cli.predict_commands import cmd_demo, cmd_evaluate, cmd_overlay, cmd_predict
from meunet.cli.train_commands import cmd_memory, cmd_plan, cmd_train, cmd_train_cascade
from meunet.errors import MeunetError

HELP_OVERWRITE = (
    "replace an existing output that meunet did not write (never an input); "
    "meunet's own outputs are replaced without it"
)
REPORT = "this is a bug in meunet; please report it with the command and this traceback"


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
    """The keys ``--set`` takes, with :class:`TrainConfig`'s defaults (for ``--help``)."""
    import dataclasses

    from meunet.training.config import TrainConfig

    def show(value: object) -> str:  # as --set takes it: a list without spaces
        return f"[{','.join(map(str, value))}]" if isinstance(value, tuple) else str(value)

    if not defaults:
        return "settings for --set KEY=VALUE: " + ", ".join(
            f.name for f in dataclasses.fields(TrainConfig)
        )
    keys = ", ".join(f"{f.name} ({show(f.default)})" for f in dataclasses.fields(TrainConfig))
    return f"settings for --set KEY=VALUE, with their defaults: {keys}"


def add_set_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_chunks_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunks",
        type=at_least(1),
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="Zarr chunk shape (default 64^3)",
    )


def add_shape_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument(
        "--shape", type=int, nargs=3, default=(128, 96, 96), metavar=("Z", "Y", "X"), help=help
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meunet",
        description="Memory-efficient segmentation of very large 3D images (microCT).",
    )
    from meunet import __version__

    parser.add_argument("--version", action="version", version=f"meunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "phantom", help="write the synthetic microCT phantom dataset and its dataset.yaml"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--cases",
        type=at_least(1),
        default=None,
        help="number of cases (default 6; 1 with --paper-scale)",
    )
    add_shape_option(p, "volume size (default 128 96 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--format", default="zarr", help="file suffix: zarr (default), nii.gz, nrrd, tif, h5, npy"
    )
    p.add_argument(
        "--paper-scale",
        action="store_true",
        help=f"cases of the paper's size {PAPER_SHAPE}, streamed to Zarr",
    )
    p.add_argument(
        "--context",
        type=distance,
        default=0.0,
        metavar="D",
        help="context phantom: a thin-tube voxel is hind-gut iff a bright marker's centre lies "
        "within D voxels, else background (default 0: the classic phantom)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("check", help="validate a dataset.yaml and print its cases")
    p.add_argument("dataset", help="the dataset.yaml")
    p.add_argument(
        "--root", default=None, help="folder for relative case paths (overrides the spec's root)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "convert", help="stream a volume to another format (e.g. .nii.gz -> chunked .zarr)"
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=HELP_OVERWRITE,
    )
    add_chunks_option(p)
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="override the voxel size",
    )
    p.add_argument(
        "--zarr-format", type=int, choices=(2, 3), default=3, help="Zarr format version (default 3)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "resample",
        help="resample a volume by a factor or to a spacing (streamed, any format)",
        description="Resample a volume by a factor or to a target spacing: cubic B-spline for "
        "images, nearest neighbour for labels (--labels). Streamed slab by slab, so any size "
        "fits in bounded memory; the output keeps the input's dtype, direction and extent, "
        "with the new spacing.",
    )
    p.add_argument("input")
    p.add_argument("output")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--factor",
        type=float,
        nargs="+",
        metavar="F",
        help="voxel-size multiplier, one number or Z Y X: 2 halves the voxels per axis, "
        "0.5 doubles them",
    )
    how.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="target voxel size, in the input's unit",
    )
    p.add_argument(
        "--labels",
        action="store_true",
        help="a label volume: nearest neighbour, no new values (default: an image, cubic B-spline)",
    )
    add_chunks_option(p)
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_resample)

    def add_training_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default="meunet",
            help="unet, meunet, cascade-post, cascade-pre, lowres (default meunet)",
        )
        p.add_argument(
            "--k", type=float, default=1.5, help="meU-net expansion factor (default 1.5)"
        )
        p.add_argument("--batch", type=at_least(1), default=4, help="patches per step (default 4)")
        p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA)")
        p.add_argument(
            "--checkpointing", action="store_true", help="gradient checkpointing per block"
        )
        p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
        p.add_argument(
            "--in-channels", type=at_least(1), default=1, help="input channels (default 1)"
        )
        p.add_argument(
            "--classes",
            type=at_least(2),
            default=3,
            help="classes, background included (default 3)",
        )

    p = sub.add_parser(
        "memory", help="measure the peak memory of real training steps (fresh subprocess)"
    )
    p.add_argument(
        "--patch", type=at_least(1), default=64, help="standard patch side P (default 64)"
    )
    add_training_options(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser(
        "plan", help="find, by measuring, the largest patch that fits a memory budget"
    )
    p.add_argument("--budget", required=True, help="memory budget, e.g. 16GB (powers of 1024)")
    add_training_options(p)
    p.add_argument("--max-patch", type=int, default=512, help="largest patch tried (default 512)")
    p.add_argument(
        "--no-compare", action="store_true", help="for meunet, skip planning a U-net too"
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "train",
        help="train a network (configs/*.yaml) on a dataset.yaml",
        epilog=settings_epilog(),
    )
    p.add_argument("config", help="training config, e.g. configs/meunet.yaml")
    p.add_argument("--data", required=True, help="the dataset.yaml (train and val splits)")
    add_set_option(p, "override a config setting (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "train-cascade",
        help="train both stage-1 branches, predict every case, train stage 2",
        epilog=settings_epilog(),
    )
    p.add_argument("--data", required=True, help="the dataset.yaml")
    p.add_argument(
        "--config", default=None, help="base training config (patch, channels, epochs...)"
    )
    p.add_argument(
        "--mode",
        choices=("post", "pre", "lowres"),
        default="post",
        help="stage connection (default post, the paper's)",
    )
    add_set_option(p, "override a base setting (repeatable)")
    p.add_argument(
        "--out", default=None, help="output folder (default runs/cascade-MODE); rerun to resume"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_cascade)

    p = sub.add_parser(
        "predict",
        help="segment a volume (any size) with a trained checkpoint, streaming",
        description="Segment a volume (any size) with a trained checkpoint, streaming. "
        "An unfinished output of the same prediction (same model, inputs and settings), "
        "left by a run that was interrupted, is resumed where it stopped. Any other output "
        "meunet wrote is replaced; a path meunet did not write is refused unless --overwrite, "
        "and an input is never replaced, even with --overwrite. The output is locked while "
        "the prediction runs.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint (best.pt), or the cascade.json that train-cascade writes",
    )
    p.add_argument(
        "--input", required=True, action="append", help="input volume; repeat once per channel"
    )
    p.add_argument(
        "--stage1",
        action="append",
        default=[],
        help="stage-1 label volume for a stage-2 model (repeat per branch)",
    )
    p.add_argument(
        "--output", required=True, help="output labels: .zarr (streamed), .nii.gz, .tif, .h5, ..."
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=HELP_OVERWRITE,
    )
    p.add_argument(
        "--patch",
        type=int,
        default=0,
        help="window side (default: the checkpoint's infer_patch, E for a meU-net, else P; "
        "a cascade.json uses each stage's own)",
    )
    p.add_argument(
        "--fusion",
        choices=("vote", "prob"),
        default="vote",
        help="weighted one-hot votes (the paper's) or probabilities",
    )
    p.add_argument(
        "--batch", type=at_least(1), default=2, help="windows per forward pass (default 2)"
    )
    p.add_argument(
        "--overlap",
        type=fraction,
        default=0.5,
        help="fraction of a window its neighbour overlaps (default 0.5, the paper's)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--max-memory",
        default=None,
        help="memory budget, e.g. 2GB: lowers --batch to fit, or refuses",
    )
    p.add_argument(
        "--dask",
        default=None,
        metavar="CLUSTER",
        help="predict blockwise on Dask workers: local:N (N local processes) or tcp://SCHEDULER:PORT",
    )
    p.add_argument(
        "--block-depth",
        type=at_least(0),
        default=0,
        help="with --dask: z-slices per block core (default: about 4 blocks per worker)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Dice, HD95 and volume difference per class, streamed")
    p.add_argument(
        "--pred",
        required=True,
        help="predicted labels, or a folder of CASE.zarr predictions (with --data)",
    )
    p.add_argument("--truth", default=None, help="reference labels (single-prediction mode)")
    p.add_argument(
        "--data",
        default=None,
        help="dataset.yaml: classes, label remapping, the cases of a folder, and its spacing "
        "(a spec's spacing: overrides the truth files' for HD95)",
    )
    p.add_argument(
        "--split",
        default="test",
        help="split whose cases a folder is evaluated on: train, val, test, all",
    )
    p.add_argument(
        "--classes",
        type=at_least(2),
        default=0,
        help="number of classes when no --data is given",
    )
    p.add_argument(
        "--hd95",
        choices=("max", "pooled"),
        default="max",
        help="HD95 definition: max, the larger of the two directed 95th percentiles (default, "
        "MONAI's), or pooled, the 95th percentile of both directed distance sets together",
    )
    p.add_argument("--out", default=None, help="write OUT.csv and OUT.md")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=HELP_OVERWRITE,
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "overlay", help="PNG of three orthogonal slices with labels drawn over the image"
    )
    p.add_argument("image")
    p.add_argument("labels")
    p.add_argument("--truth", default=None, help="reference labels, drawn in a second row")
    p.add_argument(
        "--class",
        dest="cls",
        type=at_least(1),
        default=None,
        help="structure to centre on (default: the smallest class)",
    )
    p.add_argument(
        "--data", default=None, help="dataset.yaml: class names, and remapping of the truth values"
    )
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=HELP_OVERWRITE,
    )
    p.set_defaults(func=cmd_overlay)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the phantom: train a cascade, predict, evaluate, report",
        epilog=settings_epilog(defaults=False),
    )
    p.add_argument(
        "--out", default="runs/demo", help="output folder (default runs/demo); rerun to resume"
    )
    add_set_option(p, "override a training setting of the demo, e.g. --set epochs=40 (repeatable)")
    p.add_argument(
        "--cases", type=int, default=6, help="phantom cases (default 6: 4 train, 1 val, 1 test)"
    )
    add_shape_option(p, "phantom volume size (default 128 96 96)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="print a volume's shape, dtype, spacing and format")
    p.add_argument("volume")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meunet`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MeunetError as e:  # bad input: one line, no traceback
        print(f"meunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meunet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # not the input's fault: keep what a developer needs to fix it
        traceback.print_exc()
        print(f"meunet {args.command}: {REPORT}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
