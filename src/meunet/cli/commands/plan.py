"""``meunet plan``: find, by measuring, the largest patch that fits a memory budget."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from meunet.cli.commands.memory import describe, gib
from meunet.cli.options import add_training_options, memory_config, training_config

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
    from meunet.data.patch_size import format_patch, thin_message
    from meunet.memory import parse_bytes, plan_patch
    from meunet.memory.plan import scaled_patch
    from meunet.models import variant

    budget = parse_bytes(args.budget)
    cfg = training_config(args)
    shape, shapes = _plan_shape(args, cfg)
    compare = variant(cfg.model).deep_head and not args.no_compare  # and a U-net of the same budget
    models = [cfg.model] + (["unet"] if compare else [])
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    for model in models:
        cfg_m = dataclasses.replace(cfg, model=model)
        start = scaled_patch(shape, 32)  # the search scales `shape`, from 32 along its largest side
        result = plan_patch(
            memory_config(args, cfg_m, shape), budget, max_patch=args.max_patch, progress=log
        )
        print(f"\n{model}: budget {gib(budget)}")
        for r in result.measured:
            mark = "fits" if r["peak_bytes"] <= budget else "over"
            print(f"  {describe(r)}: {gib(r['peak_bytes'])}  {mark}")
        if result.cfg is not None:
            exp = result.cfg.expanded
            exp_text = f" (expanded {format_patch(exp)})" if exp else ""
            print(f"  => largest patch: {format_patch(result.cfg.patch)}{exp_text}")
            for size, what in ((result.cfg.patch, "patch"), (exp, "expanded patch")):
                thin = thin_message(shapes, size, what) if size and shapes else None
                if thin:
                    print(f"  warning: {thin}")
        else:
            print(
                f"  => not even a {format_patch(start)} patch fits: lower the batch, turn on "
                "--checkpointing or --amp"
            )
    return 0


def _plan_shape(args: argparse.Namespace, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The patch shape ``plan`` scales (a cube, the config's per-axis sides, or auto), and the
    training volumes' shapes when ``--data`` is given (case id -> shape)."""
    from meunet.data.patch_size import auto_cube, dataset_patch, parse_patch

    shape = parse_patch(args.patch, "--patch", allow_auto=True) if args.patch else cfg.patch
    shapes: dict[str, Any] = {}
    if args.data:
        from meunet.data.io import open_volume
        from meunet.data.spec import load_spec

        spec = load_spec(args.data)
        for cid in spec.training_ids():
            with open_volume(spec.cases[cid].images[0], spacing=spec.spacing) as vol:
                shapes[cid] = vol.shape
        if auto_cube(shape) is not None:
            choice = dataset_patch(spec, None, auto_cube(shape) or 64, cfg.divisor)
            print(f"patch: auto -> {choice.describe()}; scaling that shape", file=sys.stderr)
            for note in choice.notes:
                print(f"warning: {note}", file=sys.stderr)
            shape = choice.patch
    if auto_cube(shape) is not None:
        from meunet.errors import SettingError

        raise SettingError("plan: patch auto is chosen from a dataset: add --data DATASET.yaml")
    return (shape if isinstance(shape, tuple) else 32), shapes
