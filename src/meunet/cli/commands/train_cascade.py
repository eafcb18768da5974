"""``meunet train-cascade``: train both stage-1 branches, their maps, and stage 2."""

from __future__ import annotations

import argparse
import os

from meunet.cli.options import add_fold_option, add_set_option, settings_epilog

HELP = "train both stage-1 branches, predict every case, train stage 2"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = settings_epilog()
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
    add_fold_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from meunet.api import train_cascade
    from meunet.training.run import CascadeRun

    out = args.out or f"runs/cascade-{args.mode}"
    manifest = train_cascade(
        args.config,
        args.data,
        out,
        mode=args.mode,
        overrides=args.set,
        fold=args.fold,
        progress=not args.quiet,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(f"stage-2 checkpoint: {CascadeRun(out).stage2.best}")
        print(f"cascade manifest: {manifest} (meunet predict --model {manifest})")
    return 0
