"""``meunet``: one command, with subcommands.

Each subcommand parses its arguments and calls the library; errors caused
by the input (:class:`~meunet.errors.MeunetError`, and ``ValueError`` from
argument validation) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meunet.errors import MeunetError

PAPER_SHAPE = (1072, 470, 470)


def _cmd_check(args: argparse.Namespace) -> int:
    from meunet.data.check import check_dataset
    from meunet.data.spec import load_spec

    spec = load_spec(args.dataset, root=args.root)
    report = check_dataset(spec, progress=not args.quiet)
    print(
        f"dataset {spec.name}: {len(spec.cases)} cases, classes {list(spec.classes)}, channels {list(spec.channels)}"
    )
    print(f"root: {spec.root}")
    print(report.table())
    if report.ok:
        print("OK: no problems found")
        return 0
    print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
    for p in report.problems:
        print(f"  - {p}", file=sys.stderr)
    return 1


def _cmd_convert(args: argparse.Namespace) -> int:
    from meunet.data.convert import convert

    convert(
        args.input,
        args.output,
        chunks=args.chunks,
        spacing=args.spacing,
        zarr_format=args.zarr_format,
        progress=not args.quiet,
    )
    print(f"wrote {args.output}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume

    with open_volume(args.volume) as vol:
        print(f"path:    {vol.path}")
        print(
            f"format:  {vol.format}{'' if vol.lazy else ' (not lazily readable: meunet convert it to .zarr)'}"
        )
        print(f"shape:   {vol.shape} (z, y, x)")
        print(f"dtype:   {vol.dtype}")
        print(f"spacing: {vol.spacing} (z, y, x)")
        print(f"origin:  {vol.origin} (z, y, x)")
        print(f"size:    {vol.nbytes / 2**20:.1f} MiB uncompressed")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from meunet.data.phantom import make_phantom_dataset

    shape = PAPER_SHAPE if args.paper_scale else tuple(args.shape)
    cases = 1 if args.paper_scale and args.cases is None else (args.cases or 6)
    path = make_phantom_dataset(
        args.out, cases=cases, shape=shape, seed=args.seed, fmt=args.format, progress=not args.quiet
    )
    print(f"wrote {cases} case(s) of shape {shape} and {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meunet",
        description="Memory-efficient segmentation of very large 3D images (microCT).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "phantom", help="write the synthetic microCT phantom dataset and its dataset.yaml"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--cases", type=int, default=None, help="number of cases (default 6; 1 with --paper-scale)"
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(128, 96, 96),
        metavar=("Z", "Y", "X"),
        help="volume size (default 128 96 96)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--format", default="zarr", help="file suffix: zarr (default), nii.gz, nrrd, tif, h5, npy"
    )
    p.add_argument(
        "--paper-scale",
        action="store_true",
        help=f"cases of the paper's size {PAPER_SHAPE}, streamed to Zarr",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("check", help="validate a dataset.yaml and print its cases")
    p.add_argument("dataset", help="the dataset.yaml")
    p.add_argument(
        "--root", default=None, help="folder for relative case paths (overrides the spec's root)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "convert", help="stream a volume to another format (e.g. .nii.gz -> chunked .zarr)"
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--chunks",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="Zarr chunk shape (default 64^3)",
    )
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
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="print a volume's shape, dtype, spacing and format")
    p.add_argument("volume")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meunet`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (MeunetError, ValueError) as e:  # bad input: one line, no traceback
        print(f"meunet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
