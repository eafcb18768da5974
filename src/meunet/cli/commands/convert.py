"""``meunet convert``: stream a volume to another format."""

from __future__ import annotations

import argparse

from meunet.cli.options import HELP_OVERWRITE, add_chunks_option, add_spacing_option

HELP = "stream a volume to another format (e.g. .nii.gz -> chunked .zarr)"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE)
    add_chunks_option(p)
    add_spacing_option(p, "override the voxel size")
    p.add_argument(
        "--zarr-format", type=int, choices=(2, 3), default=3, help="Zarr format version (default 3)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from meunet.data.convert import convert

    convert(
        args.input,
        args.output,
        chunks=args.chunks,
        spacing=args.spacing,
        zarr_format=args.zarr_format,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.output}")
    return 0
