"""``meunet demo``: the whole pipeline on the phantom (:func:`meunet.demo.run_demo`)."""

from __future__ import annotations

import argparse

from meunet.cli.options import add_set_option, add_shape_option, distance, settings_epilog

HELP = "the whole pipeline on the phantom: train a cascade, predict, evaluate, report"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = settings_epilog(defaults=False)
    p.add_argument(
        "--out", default="runs/demo", help="output folder (default runs/demo); rerun to resume"
    )
    add_set_option(p, "override a training setting of the demo, e.g. --set epochs=40 (repeatable)")
    p.add_argument(
        "--cases", type=int, default=6, help="phantom cases (default 6: 4 train, 1 val, 1 test)"
    )
    add_shape_option(p, "phantom volume size (default 128 96 96)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument(
        "--context",
        type=distance,
        default=0.0,
        metavar="D",
        help="use the context phantom with its cue D voxels away (see meunet phantom --context; "
        "default 0: the classic phantom)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from meunet.demo import DEMO_CONFIG, run_demo
    from meunet.training.config import override

    config = override(DEMO_CONFIG, args.set)
    report = run_demo(
        args.out, config, args.cases, args.shape, args.seed, not args.quiet, args.context
    )
    print(f"wrote {report}")
    return 0
