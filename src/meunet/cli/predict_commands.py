"""``meunet predict``, ``evaluate``, ``overlay``."""

from __future__ import annotations

import argparse

from meunet.errors import MeunetError


def cmd_predict(args: argparse.Namespace) -> int:

    from meunet.data.io import open_volume
    from meunet.inference.stream import estimate_memory, predict_volume
    from meunet.models import load_checkpoint, load_model
    from meunet.training.config import checkpoint_window
    from meunet.training.loop import resolve_device

    if args.dask:
        return _predict_dask(args)
    device = resolve_device(args.device)
    if str(args.model).endswith(".json"):  # a whole cascade from meunet train-cascade
        from meunet.inference.cascade import predict_cascade

        inputs = [open_volume(p) for p in args.input]
        out = predict_cascade(
            args.model,
            inputs,
            args.output,
            args.fusion,
            args.batch,
            device,
            not args.quiet,
            overlap=args.overlap,
            overwrite=args.overwrite,
        )
        print(f"wrote {out}")
        return 0
    ckpt = load_checkpoint(args.model)
    model = load_model(args.model, map_location=device)
    patch = args.patch or checkpoint_window(ckpt)  # the window it was validated with
    inputs = [open_volume(p) for p in args.input]
    extra = [open_volume(p) for p in args.stage1]
    batch = args.batch
    if args.max_memory:
        from meunet.memory import format_bytes, parse_bytes

        budget = parse_bytes(args.max_memory)

        def need(b: int) -> int:
            n_in, n_extra = len(inputs), len(extra)
            return estimate_memory(model, inputs[0].shape, patch, b, args.fusion, n_in, n_extra)

        while batch > 1 and need(batch) > budget:
            batch -= 1
        if need(batch) > budget:
            raise MeunetError(
                f"predicting {inputs[0].shape} with {patch}^3 windows needs about {format_bytes(need(batch))} "
                f"beyond the interpreter, over --max-memory {args.max_memory}; use a smaller --patch"
            )
    out = predict_volume(
        model,
        inputs,
        args.output,
        patch,
        extra,
        args.fusion,
        batch,
        device,
        not args.quiet,
        args.overlap,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def _predict_dask(args: argparse.Namespace) -> int:
    from meunet.inference.blocks import connect, predict_cascade_dask, predict_dask

    if args.max_memory:
        raise MeunetError(
            "--max-memory applies to a single process; with --dask size the workers instead"
        )
    kw = dict(fusion=args.fusion, batch_size=args.batch, device=args.device, overlap=args.overlap,
              block_depth=args.block_depth, progress=not args.quiet,
              overwrite=args.overwrite)  # fmt: skip
    with connect(args.dask) as client:
        if str(args.model).endswith(".json"):
            out = predict_cascade_dask(args.model, args.input, args.output, client, **kw)
        else:
            out = predict_dask(
                args.model, args.input, args.output, client, args.patch, args.stage1, **kw
            )
    print(f"wrote {out}")
    return 0


def _find_prediction(folder: str, case: str) -> str | None:
    from pathlib import Path

    for suffix in (".zarr", ".nii.gz", ".nii", ".nrrd", ".tif", ".h5", ".npy"):
        if (Path(folder) / f"{case}{suffix}").exists():
            return str(Path(folder) / f"{case}{suffix}")
    return None


def cmd_evaluate(args: argparse.Namespace) -> int:
    import csv
    import io
    import os
    from pathlib import Path

    from meunet.data.io import open_volume
    from meunet.data.io.ownership import prepare_output, write_text
    from meunet.metrics.evaluate import evaluate_case, summary_table

    spec = None
    if args.data:
        from meunet.data.spec import load_spec

        spec = load_spec(args.data)
    if spec is None and not args.classes:
        raise MeunetError("give --data DATASET.yaml (classes and label remapping) or --classes N")
    classes = (
        list(spec.classes)
        if spec
        else ["background", *(f"class {c}" for c in range(1, args.classes))]
    )
    remap = (lambda a: spec.remap_labels(a, "truth")) if spec else None
    pairs: list[tuple[str, str, str]] = []
    if os.path.isdir(args.pred) and not args.pred.rstrip("/").endswith(".zarr"):
        if spec is None:
            raise MeunetError(
                f"{args.pred} is a folder of predictions: give --data DATASET.yaml to match them to cases"
            )
        ids = spec.split.get(args.split, ()) if args.split != "all" else tuple(spec.cases)
        for cid in ids:
            found = _find_prediction(args.pred, cid)
            if found and spec.cases[cid].label is not None:
                pairs.append((cid, found, str(spec.cases[cid].label)))
        if not pairs:
            raise MeunetError(
                f"{args.pred}: no CASE.zarr / CASE.nii.gz predictions for the {args.split} cases of {spec.path}"
            )
    else:
        if not args.truth:
            raise MeunetError("give --truth for a single prediction")
        pairs.append((Path(args.pred).name.split(".")[0], args.pred, args.truth))
    if args.out:  # refuse before the (long) evaluation
        sources = [p for pair in pairs for p in pair[1:]] + ([args.data] if args.data else [])
        for suffix in (".csv", ".md"):
            prepare_output(f"{args.out}{suffix}", sources, args.overwrite, folder=False)
    # a spec's spacing overrides the files' (which may have none, giving voxels)
    spacing = spec.spacing if spec else None
    results = {
        cid: evaluate_case(
            open_volume(p), open_volume(t, spacing=spacing), len(classes), remap, hd95=args.hd95
        )
        for cid, p, t in pairs
    }
    rows, table = summary_table(results, classes, hd95=args.hd95)
    if spacing is not None:
        table += f"\nSpacing (z, y, x) {list(spacing)} from {spec.path}, not the files'."
    else:
        table += "\nSpacing: each truth file's own."
    print(table)
    if args.out:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_text(f"{args.out}.csv", buffer.getvalue(), sources, args.overwrite, "evaluate")
        write_text(f"{args.out}.md", table + "\n", sources, args.overwrite, "evaluate")
        print(f"wrote {args.out}.csv and {args.out}.md")
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from meunet.data.io import open_volume
    from meunet.viz import overlay_png

    truth = open_volume(args.truth) if args.truth else None
    names, remap = None, None
    if args.data:
        from meunet.data.spec import load_spec

        spec = load_spec(args.data)
        names, remap = list(spec.classes), spec.remap_labels
    out = overlay_png(
        open_volume(args.image),
        open_volume(args.labels),
        args.out,
        truth,
        args.cls,
        names,
        remap,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from meunet.demo import DEMO_CONFIG, run_demo
    from meunet.training.config import override

    config = override(DEMO_CONFIG, args.set)
    report = run_demo(args.out, config, args.cases, args.shape, args.seed, not args.quiet)
    print(f"wrote {report}")
    return 0
