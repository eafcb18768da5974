"""``meunet train``: train a network on a dataset."""

from __future__ import annotations

import argparse
import os

from meunet.cli.options import add_fold_option, add_set_option, settings_epilog

HELP = "train a network (configs/*.yaml) on a dataset.yaml"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = settings_epilog()
    p.add_argument("config", help="training config, e.g. configs/meunet.yaml")
    p.add_argument("--data", required=True, help="the dataset.yaml (train and val splits)")
    add_set_option(p, "override a config setting (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    add_fold_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meunet.api import train

    out = args.out or f"runs/{Path(args.config).stem}"
    best = train(
        args.config,
        args.data,
        out,
        overrides=args.set,
        resume=args.resume,
        fold=args.fold,
        progress=not args.quiet,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(f"best checkpoint: {best}")
    return 0
