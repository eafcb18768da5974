"""``meunet phantom``, ``check``, ``convert``, ``info``: the data commands."""

from __future__ import annotations

import argparse
import sys

PAPER_SHAPE = (1072, 470, 470)


def cmd_check(args: argparse.Namespace) -> int:
    from meunet.data.check import check_dataset
    from meunet.data.spec import load_spec

    spec = load_spec(args.dataset, root=args.root)
    report = check_dataset(spec, progress=not args.quiet)
    print(
        f"dataset {spec.name}: {len(spec.cases)} cases, classes {list(spec.classes)}, channels {list(spec.channels)}"
    )
    print(f"root: {spec.root}")
    print(report.table())
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if report.ok:
        print("OK: no problems found")
        return 0
    print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
    for p in report.problems:
        print(f"  - {p}", file=sys.stderr)
    return 1


def cmd_convert(args: argparse.Namespace) -> int:
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


def cmd_resample(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume
    from meunet.data.resample import resample_volume

    with open_volume(args.input) as vol:
        dtype, known = vol.dtype, getattr(vol, "spacing_known", True)
    if not known and args.spacing:
        print(
            f"note: {args.input} stores no voxel size: taken as 1, 1, 1 for --spacing; "
            "meunet convert --spacing Z Y X gives it one first",
            file=sys.stderr,
        )
    if dtype.kind in "biu" and not args.labels:  # a spline would invent label values
        print(
            f"note: {args.input} holds integers ({dtype}): resampled as an image (cubic "
            "B-spline, rounded); pass --labels if it is a label volume",
            file=sys.stderr,
        )
    shape = resample_volume(
        args.input,
        args.output,
        factor=args.factor,
        spacing=args.spacing,
        labels=args.labels,
        chunks=args.chunks,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    with open_volume(args.output) as out:
        how = "nearest neighbour" if args.labels else "cubic B-spline"
        print(f"wrote {args.output}: shape {shape} (z, y, x), spacing {out.spacing} ({how})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume

    with open_volume(args.volume) as vol:
        print(f"path:    {vol.path}")
        print(
            f"format:  {vol.format}{'' if vol.lazy else ' (not lazily readable: meunet convert it to .zarr)'}"
        )
        print(f"shape:   {vol.shape} (z, y, x)")
        print(f"dtype:   {vol.dtype}")
        if vol.spacing_known:
            print(f"spacing: {vol.spacing} (z, y, x)")
        else:
            shown = ", ".join(f"{v:g}" for v in vol.spacing)
            print(f"spacing: unknown ({shown} assumed; the file stores no voxel size) (z, y, x)")
        print(f"origin:  {vol.origin} (z, y, x)")
        frame = vol.space or "none named"
        print(f"direction: {vol.direction} (columns: axes z, y, x; world frame: {frame})")
        print(f"size:    {vol.nbytes / 2**20:.1f} MiB uncompressed")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from meunet.data.phantom import make_phantom_dataset

    shape = PAPER_SHAPE if args.paper_scale else tuple(args.shape)
    cases = 1 if args.paper_scale and args.cases is None else (args.cases or 6)
    path = make_phantom_dataset(
        args.out,
        cases=cases,
        shape=shape,
        seed=args.seed,
        fmt=args.format,
        progress=not args.quiet,
        context_distance=args.context,
    )
    print(f"wrote {cases} case(s) of shape {shape} and {path}")
    return 0
