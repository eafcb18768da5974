"""``meunet check``: validate a dataset.yaml and print its cases."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meunet.cli.options import add_set_option

HELP = "validate a dataset.yaml and print its cases"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="the dataset.yaml")
    p.add_argument(
        "--root", default=None, help="folder for relative case paths (overrides the spec's root)"
    )
    p.add_argument(
        "--config",
        default=None,
        help="training config whose patch, expanded patch and window each case is compared "
        "with (default: the defaults, patch 64, a meU-net's expanded 96); patch: auto is "
        "resolved from this dataset",
    )
    add_set_option(p, "override a config setting, e.g. --set sampler.patch=[16,64,64]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from meunet.data.check import check_dataset
    from meunet.data.spec import load_spec

    spec = load_spec(args.dataset, root=args.root)
    report = check_dataset(spec, progress=not args.quiet, sizes=_sizes(args, spec))
    print(
        f"dataset {spec.name}: {len(spec.cases)} cases, classes {list(spec.classes)}, channels {list(spec.channels)}"
    )
    print(f"root: {spec.root}")
    print(report.table())
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if (
        args.config is None
        and not args.set
        and any("thinner than" in str(w) for w in report.warnings)
    ):
        print(
            "note: those sizes are the defaults' (patch 64, a meU-net's expanded 96); give "
            "--config (and --set) to check the sizes you will train with",
            file=sys.stderr,
        )
    if report.ok:
        print("OK: no problems found")
        return 0
    print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
    for p in report.problems:
        print(f"  - {p}", file=sys.stderr)
    return 1


def _sizes(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The patch sizes the cases are compared with: the config's, ``patch: auto`` resolved."""
    from meunet.api import load_training_config
    from meunet.data.check import training_sizes
    from meunet.training.config import resolve_patch

    cfg = load_training_config(getattr(args, "config", None), getattr(args, "set", []))
    if cfg.patch_is_auto and spec.cases:
        cfg = resolve_patch(cfg, spec)
    return training_sizes(cfg) if not cfg.patch_is_auto else {}
