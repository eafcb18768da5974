"""``meunet crop``: cut named regions of one labelled volume, written as cases."""

from __future__ import annotations

import argparse

from meunet.cli.commands.split_volume import write_cases
from meunet.cli.options import add_cut_options

HELP = "cut named regions of one labelled volume, written as cases with a dataset.yaml"
DESCRIPTION = (
    "Cut named boxes of one labelled volume (image channels and label) and "
    "write each as a case, with a dataset.yaml that check and train accept. Streamed: "
    "only the boxes are read. Without --val (or split: val in the regions file) the last "
    "region validates."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cut_options(p)
    p.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="NAME=Z0:Z1,Y0:Y1,X0:X1",
        help="a named box in voxels, stop excluded (repeatable)",
    )
    p.add_argument(
        "--regions",
        default=None,
        metavar="FILE.yaml",
        help="named boxes from YAML: regions: {NAME: [[Z0, Z1], [Y0, Y1], [X0, X1]], "
        "NAME2: {bbox: [...], split: val}}",
    )


def run(args: argparse.Namespace) -> int:
    from meunet.data.split import parse_region, read_regions
    from meunet.errors import SettingError

    regions = read_regions(args.regions) if args.regions else []  # the file's, then --region's
    regions += [parse_region(r) for r in args.region]
    if not regions:
        raise SettingError(
            "give the regions to cut: --region NAME=Z0:Z1,Y0:Y1,X0:X1, or --regions FILE.yaml"
        )
    return write_cases(args, regions, "crop")
