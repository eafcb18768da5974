"""``meunet plan``: find, by measuring, the largest patch that fits a memory budget."""

from __future__ import annotations

import argparse
import sys

from meunet.cli.commands.memory import describe, gib
from meunet.cli.options import add_training_options, training_config

HELP = "find, by measuring, the largest patch that fits a memory budget"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", required=True, help="memory budget, e.g. 16GB (powers of 1024)")
    add_training_options(p)
    p.add_argument(
        "--max-patch", type=int, default=512, help="largest patch side tried (default 512)"
    )
    p.add_argument(
        "--patch",
        nargs="+",
        default=None,
        metavar="SIDE",
        help="shape to scale: three sides (z y x), e.g. --patch 16 128 128 for a thin "
        "anisotropic stack, or auto (with --data); default: the config's if per-axis, else cubes",
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset.yaml: with patch auto, scale the spacing-aware shape (patch: auto) "
        "of its training cases, and warn of a patch thicker than a volume",
    )
    p.add_argument(
        "--no-compare", action="store_true", help="for meunet, skip planning a U-net too"
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    from meunet.data.patch_size import format_patch, parse_patch, thin_message
    from meunet.memory import parse_bytes
    from meunet.memory.plan import plan_models, plan_shape, scaled_patch

    budget = parse_bytes(args.budget)
    cfg = training_config(args)
    patch = parse_patch(args.patch, "--patch", allow_auto=True) if args.patch else cfg.patch
    planned = plan_shape(patch, cfg.divisor, args.data)
    for i, note in enumerate(planned.notes):
        print(note if i == 0 else f"warning: {note}", file=sys.stderr)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    plans = plan_models(
        cfg, budget, planned.shape, args.in_channels, args.classes,
        compare=not args.no_compare, max_patch=args.max_patch, progress=log,
    )  # fmt: skip
    for model, result in plans:
        print(f"\n{model}: budget {gib(budget)}")
        for r in result.measured:
            mark = "fits" if r["peak_bytes"] <= budget else "over"
            print(f"  {describe(r)}: {gib(r['peak_bytes'])}  {mark}")
        if result.cfg is not None:
            exp = result.cfg.expanded
            exp_text = f" (expanded {format_patch(exp)})" if exp else ""
            print(f"  => largest patch: {format_patch(result.cfg.patch)}{exp_text}")
            for size, what in ((result.cfg.patch, "patch"), (exp, "expanded patch")):
                thin = (
                    thin_message(planned.volumes, size, what) if size and planned.volumes else None
                )
                if thin:
                    print(f"  warning: {thin}")
        else:
            start = scaled_patch(
                planned.shape, 32
            )  # the search starts at 32 along its largest side
            print(
                f"  => not even a {format_patch(start)} patch fits: lower the batch, turn on "
                "--checkpointing or --amp"
            )
    return 0
