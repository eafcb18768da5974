"""``meunet memory``, ``plan``, ``train``, ``train-cascade``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _memory_config(args: argparse.Namespace, patch: int) -> Any:
    from meunet.memory import MemoryConfig

    return MemoryConfig(
        model=args.model,
        patch=patch,
        k=args.k,
        batch=args.batch,
        amp=args.amp,
        checkpointing=args.checkpointing,
        device=args.device,
        in_channels=args.in_channels,
        num_classes=args.classes,
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _describe(r: dict[str, Any]) -> str:
    c = r["config"]
    size = f"{c['patch']}^3" + (
        f" (expanded {r['expanded']}^3, k {c['k']:g})" if r["expanded"] else ""
    )
    return (
        f"{c['model']}  patch {size}  batch {c['batch']}  {r['device_name']}  "
        f"checkpointing {'on' if c['checkpointing'] else 'off'}  amp {'on' if c['amp'] else 'off'}"
    )


def cmd_memory(args: argparse.Namespace) -> int:
    from meunet.memory import measure

    r = measure(_memory_config(args, args.patch))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    counter = (
        "torch.cuda.max_memory_allocated"
        if args.device.startswith("cuda")
        else "peak of live tensor bytes"
    )
    print(_describe(r))
    print(f"  training step peak        {_gib(r['peak_bytes'])}  ({counter})")
    print(
        f"  between steps             {_gib(r['between_steps_bytes'])}  (weights, gradients, Adam state, batch)"
    )
    print(
        f"  saved for backward        {_gib(r['saved_for_backward_bytes'])}  (lower bound, for information)"
    )
    print(f"  process RSS growth        {_gib(r['rss_growth_bytes'])}  (noisy, for information)")
    print(f"  step time                 {r['step_seconds']:.2f} s")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from meunet.memory import parse_bytes, plan_patch

    budget = parse_bytes(args.budget)
    models = [args.model] + (["unet"] if args.model == "meunet" and not args.no_compare else [])
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    for model in models:
        args_m = argparse.Namespace(**{**vars(args), "model": model})
        result = plan_patch(
            _memory_config(args_m, 32), budget, max_patch=args.max_patch, progress=log
        )
        print(f"\n{model}: budget {_gib(budget)}")
        for r in result.measured:
            mark = "fits" if r["peak_bytes"] <= budget else "over"
            print(f"  {_describe(r)}: {_gib(r['peak_bytes'])}  {mark}")
        if result.cfg is not None:
            exp = f" (expanded {result.cfg.expanded}^3)" if result.cfg.expanded else ""
            print(f"  => largest patch: {result.cfg.patch}^3{exp}")
        else:
            print(
                "  => not even a 32^3 patch fits: lower the batch, turn on --checkpointing or --amp"
            )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meunet.data.spec import load_spec
    from meunet.training.config import load_config
    from meunet.training.loop import train

    cfg = load_config(args.config, args.set)
    spec = load_spec(args.data)
    out = args.out or f"runs/{Path(args.config).stem}"
    best = train(cfg, spec, out, resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(f"best checkpoint: {best}")
    return 0


def cmd_train_cascade(args: argparse.Namespace) -> int:
    from meunet.data.spec import load_spec
    from meunet.training.cascade import train_cascade
    from meunet.training.config import load_config

    base = load_config(args.config, args.set)
    spec = load_spec(args.data)
    out = args.out or f"runs/cascade-{args.mode}"
    best = train_cascade(spec, out, mode=args.mode, base=base, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        print(f"stage-2 checkpoint: {best}")
    return 0
