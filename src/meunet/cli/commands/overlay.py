"""``meunet overlay``: a PNG of three orthogonal slices with labels over the image."""

from __future__ import annotations

import argparse

from meunet.cli.options import HELP_OVERWRITE, at_least

HELP = "PNG of three orthogonal slices with labels drawn over the image"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)


def run(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume
    from meunet.viz import overlay_png

    truth = open_volume(args.truth) if args.truth else None
    names, remap = None, None
    if args.data:
        from meunet.data.spec import load_spec

        spec = load_spec(args.data)
        names, remap = list(spec.classes), spec.remap_labels
    out = overlay_png(
        open_volume(args.image),
        open_volume(args.labels),
        args.out,
        truth,
        args.cls,
        names,
        remap,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0
