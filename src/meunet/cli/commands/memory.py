"""``meunet memory``: measure the peak memory of real training steps."""

from __future__ import annotations

import argparse
import json
from typing import Any

from meunet.cli.options import add_training_options, memory_config, training_config

HELP = "measure the peak memory of real training steps (fresh subprocess)"
DESCRIPTION = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--patch",
        nargs="+",
        default=None,
        metavar="SIDE",
        help="standard patch P: one side, or three (z y x), e.g. --patch 16 64 64 "
        "(default: the config's, 64)",
    )
    add_training_options(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


def run(args: argparse.Namespace) -> int:
    from meunet.data.patch_size import parse_patch
    from meunet.memory import measure

    cfg = training_config(args)
    patch = parse_patch(args.patch, "--patch") if args.patch else cfg.patch
    r = measure(memory_config(args, cfg, patch))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    counter = (
        "torch.cuda.max_memory_allocated"
        if r["config"]["device"].startswith("cuda")
        else "peak of live tensor bytes"
    )
    print(describe(r))
    print(f"  training step peak        {gib(r['peak_bytes'])}  ({counter})")
    print(
        f"  between steps             {gib(r['between_steps_bytes'])}  (weights, gradients, Adam state, batch)"
    )
    print(
        f"  saved for backward        {gib(r['saved_for_backward_bytes'])}  (lower bound, for information)"
    )
    print(f"  process RSS growth        {gib(r['rss_growth_bytes'])}  (noisy, for information)")
    print(f"  step time                 {r['step_seconds']:.2f} s")
    return 0


def gib(n: float) -> str:
    """A byte count in GiB, or MiB under 1 GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def describe(r: dict[str, Any]) -> str:
    """One line naming what a :func:`~meunet.memory.measure` result measured."""
    from meunet.data.patch_size import format_patch, parse_patch

    c = r["config"]
    size = format_patch(parse_patch(c["patch"])) + (  # type: ignore[arg-type]
        f" (expanded {format_patch(parse_patch(r['expanded']))}, k {c['k']:g})"  # type: ignore[arg-type]
        if r["expanded"]
        else ""
    )
    return (
        f"{c['model']}  patch {size}  batch {c['batch']}  {r['device_name']}  "
        f"checkpointing {'on' if c['checkpointing'] else 'off'}  amp {'on' if c['amp'] else 'off'}"
    )
