"""``meunet``: one command, with subcommands.

Each subcommand parses its arguments and calls the library; errors caused
by the input (:class:`~meunet.errors.MeunetError`, and ``ValueError`` from
argument validation) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

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


def _cmd_memory(args: argparse.Namespace) -> int:
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


def _cmd_plan(args: argparse.Namespace) -> int:
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


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meunet.data.spec import load_spec
    from meunet.training.config import load_config
    from meunet.training.loop import train

    cfg = load_config(args.config, args.set)
    spec = load_spec(args.data)
    out = args.out or f"runs/{Path(args.config).stem}"
    best = train(cfg, spec, out, resume=args.resume, progress=not args.quiet)
    print(f"best checkpoint: {best}")
    return 0


def _cmd_train_cascade(args: argparse.Namespace) -> int:
    from meunet.data.spec import load_spec
    from meunet.training.cascade import train_cascade
    from meunet.training.config import load_config

    base = load_config(args.config, args.set)
    spec = load_spec(args.data)
    out = args.out or f"runs/cascade-{args.mode}"
    best = train_cascade(spec, out, mode=args.mode, base=base, progress=not args.quiet)
    print(f"stage-2 checkpoint: {best}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from meunet.data.io import open_volume
    from meunet.inference.stream import estimate_memory, predict_volume
    from meunet.models import load_checkpoint, load_model
    from meunet.training.loop import resolve_device

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.model)
    model = load_model(args.model, map_location=device)
    patch = args.patch or int(ckpt.get("train_config", {}).get("patch", 64))
    inputs = [open_volume(p) for p in args.input]
    extra = [open_volume(p) for p in args.stage1]
    batch = args.batch
    if args.max_memory:
        from meunet.memory import parse_bytes

        budget = parse_bytes(args.max_memory)

        def need(b: int) -> int:
            n_in, n_extra = len(inputs), len(extra)
            return estimate_memory(model, inputs[0].shape, patch, b, args.fusion, n_in, n_extra)

        while batch > 1 and need(batch) > budget:
            batch -= 1
        if need(batch) > budget:
            raise ValueError(
                f"predicting {inputs[0].shape} with {patch}^3 windows needs about {need(batch) / 2**30:.2f} GiB "
                f"beyond the interpreter, over --max-memory {args.max_memory}; use a smaller --patch"
            )
    torch.set_grad_enabled(False)
    out = predict_volume(
        model,
        inputs,
        args.output,
        patch,
        extra,
        args.fusion,
        batch,
        device,
        progress=not args.quiet,
    )
    print(f"wrote {out}")
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

    def add_training_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default="meunet",
            help="unet, meunet, cascade-post, cascade-pre, lowres (default meunet)",
        )
        p.add_argument(
            "--k", type=float, default=1.5, help="meU-net expansion factor (default 1.5)"
        )
        p.add_argument("--batch", type=int, default=4, help="patches per step (default 4)")
        p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA)")
        p.add_argument(
            "--checkpointing", action="store_true", help="gradient checkpointing per block"
        )
        p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
        p.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
        p.add_argument(
            "--classes", type=int, default=3, help="classes, background included (default 3)"
        )

    p = sub.add_parser(
        "memory", help="measure the peak memory of real training steps (fresh subprocess)"
    )
    p.add_argument("--patch", type=int, default=64, help="standard patch side P (default 64)")
    add_training_options(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=_cmd_memory)

    p = sub.add_parser(
        "plan", help="find, by measuring, the largest patch that fits a memory budget"
    )
    p.add_argument("--budget", required=True, help="memory budget, e.g. 16GB (powers of 1024)")
    add_training_options(p)
    p.add_argument("--max-patch", type=int, default=512, help="largest patch tried (default 512)")
    p.add_argument(
        "--no-compare", action="store_true", help="for meunet, skip planning a U-net too"
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("train", help="train a network (configs/*.yaml) on a dataset.yaml")
    p.add_argument("config", help="training config, e.g. configs/meunet.yaml")
    p.add_argument("--data", required=True, help="the dataset.yaml (train and val splits)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config setting (repeatable)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "train-cascade", help="train both stage-1 branches, predict every case, train stage 2"
    )
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
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base setting (repeatable)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (default runs/cascade-MODE); rerun to resume"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train_cascade)

    p = sub.add_parser(
        "predict", help="segment a volume (any size) with a trained checkpoint, streaming"
    )
    p.add_argument("--model", required=True, help="checkpoint (best.pt)")
    p.add_argument(
        "--input", required=True, action="append", help="input volume; repeat once per channel"
    )
    p.add_argument(
        "--stage1",
        action="append",
        default=[],
        help="stage-1 label volume for a stage-2 model (repeat per branch)",
    )
    p.add_argument(
        "--output", required=True, help="output labels: .zarr (streamed), .nii.gz, .tif, .h5, ..."
    )
    p.add_argument("--patch", type=int, default=0, help="window side (default: the training patch)")
    p.add_argument(
        "--fusion",
        choices=("vote", "prob"),
        default="vote",
        help="weighted one-hot votes (the paper's) or probabilities",
    )
    p.add_argument("--batch", type=int, default=2, help="windows per forward pass (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--max-memory",
        default=None,
        help="memory budget, e.g. 2GB: lowers --batch to fit, or refuses",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

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
