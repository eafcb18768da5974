"""``meunet evaluate``: Dice, HD95 and volume difference per class."""

from __future__ import annotations

import argparse

from meunet.cli.options import HELP_OVERWRITE, at_least

HELP = "Dice, HD95 and volume difference per class, streamed"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)


def run(args: argparse.Namespace) -> int:
    from meunet.api import evaluate

    result = evaluate(
        args.pred,
        args.truth,
        data=args.data,
        split=args.split,
        classes=args.classes,
        hd95=args.hd95,
        out=args.out,
        overwrite=args.overwrite,
    )
    print(result.table)
    if result.written:
        print(f"wrote {args.out}.csv and {args.out}.md")
    return 0
