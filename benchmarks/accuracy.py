"""Accuracy of U-net, meU-net and three cascades under one training budget.

The paper's accuracy claim (``../shared/DESIGN.md`` 1.6): more context
(meU-net) and the post-concatenation cascade segment the small class better
than a U-net and than nnU-Net's low-resolution cascade. Every configuration
here trains with the same sampler, loss, optimizer, number of epochs and
patches per epoch (so the same number of optimizer steps per network), and
is tested on cases it never saw:

- ``unet``: U-net at the largest patch whose measured training step fits the
  memory budget, the budget being meU-net k = 1.75's measured peak;
- ``meunet-k150``, ``meunet-k175``: meU-nets at the standard patch P;
- ``cascade-post``, ``cascade-pre``: stage 2 on both meU-nets' maps
  (stage 1 shared: the same two trained meU-nets);
- ``cascade-lowres``: U-net on volumes downsampled by 2, then stage 2 with
  its upsampled map pre-concatenated.

Datasets: (a) the phantom, one fresh dataset per seed (8 cases: 5 train,
1 val, 2 test); (b) ``../shared/data/brats4`` as the 3-class task, 2 train /
2 test both ways (validation on the training cases: four volumes leave none
to spare).

    .venv/bin/python benchmarks/accuracy.py                     # CPU sizes, ~2 h on 2 cores
    .venv/bin/python benchmarks/accuracy.py --sizes gpu         # paper-like sizes on a GPU

Writes ``benchmarks/results/accuracy{,-gpu}.md`` and ``.json``. Each finished
(dataset, seed or fold) run is kept in ``--work`` and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meunet.data.io import open_volume
from meunet.data.phantom import make_phantom_dataset
from meunet.data.resample import downsampled_dataset
from meunet.data.spec import DatasetSpec, load_spec
from meunet.inference.stream import predict_volume
from meunet.memory import MemoryConfig, measure
from meunet.memory.plan import plan_patch
from meunet.metrics.evaluate import evaluate_case
from meunet.models import load_model
from meunet.training.cascade import train_cascade
from meunet.training.config import TrainConfig, override
from meunet.training.loop import resolve_device, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BRATS = ROOT / "examples" / "brats4.yaml"
CONFIGS = ("unet", "meunet-k150", "meunet-k175", "cascade-post", "cascade-pre", "cascade-lowres")
GIB = 2**30

SIZES: dict[str, dict[str, Any]] = {
    # what two CPU cores allow: ~3 minutes per network
    "cpu": {
        "train": TrainConfig(
            encoder_channels=(8, 16, 16, 32, 32), decoder_channels=(16, 16, 8, 8), patch=32,
            batch=4, lr=3e-3, epochs=22, patience=22, patches_per_epoch=32, bg_keep=0.1,
            device="cpu", amp=False,
        ),
        "phantom_shape": (128, 96, 96), "seeds": (0, 1, 2), "brats_factor": 2,
    },
    # paper-like: the paper's channels, 96^3 standard patches (k = 1.75: 176^3), AMP
    "gpu": {
        "train": TrainConfig(
            patch=96, batch=4, lr=9e-4, epochs=60, patience=30, patches_per_epoch=64,
            bg_keep=0.1, device="cuda", amp=True, checkpointing=True,
        ),
        "phantom_shape": (256, 192, 192), "seeds": (0, 1, 2), "brats_factor": 1,
    },
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def memory_plan(base: TrainConfig, in_ch: int, classes: int) -> dict[str, Any]:
    """Measured step peaks; U-net's patch is the largest that fits meU-net k = 1.75's peak."""
    mem = MemoryConfig(
        patch=base.patch, batch=base.batch, amp=base.amp, checkpointing=base.checkpointing,
        device=base.device, in_channels=in_ch, num_classes=classes,
        encoder_channels=base.encoder_channels, decoder_channels=base.decoder_channels,
    )  # fmt: skip

    def peak(**kw: Any) -> int:
        return int(measure(dataclasses.replace(mem, **kw))["peak_bytes"])

    budget = peak(model="meunet", k=1.75)
    found = plan_patch(dataclasses.replace(mem, model="unet"), budget, max_patch=4 * base.patch)
    unet_patch = found.cfg.patch if found.cfg else base.patch
    return {
        "budget": budget,
        "unet_patch": unet_patch,
        "bytes": {
            "unet": peak(model="unet", patch=unet_patch),
            "meunet-k150": peak(model="meunet", k=1.5),
            "meunet-k175": budget,
            "stage2-post": peak(model="cascade-post", extra_channels=2 * classes),
            "stage2-pre": peak(model="cascade-pre", extra_channels=2 * classes),
            "lowres-stage1": peak(model="unet"),
            "stage2-lowres": peak(model="cascade-pre", extra_channels=classes),
        },
    }


def _seconds(folder: Path) -> float:
    import csv

    with (folder / "log.csv").open() as f:
        return float(sum(float(r["seconds"]) for r in csv.DictReader(f)))


def run_one(
    spec: DatasetSpec, work: Path, base: TrainConfig, plan: dict[str, Any]
) -> dict[str, Any]:
    """Train the six configurations on ``spec``'s train/val split, score them on its test split."""
    device = resolve_device(base.device)
    test = list(spec.split["test"])
    n = spec.num_classes
    inputs = {cid: [open_volume(p) for p in spec.cases[cid].images] for cid in test}

    def score(pred_of: dict[str, Path]) -> dict[str, Any]:
        out = {}
        for cid in test:
            s = evaluate_case(open_volume(pred_of[cid]), open_volume(spec.cases[cid].label), n,
                              spec.remap_labels)  # fmt: skip
            out[cid] = {"dice": [c.dice for c in s], "hd95": [c.hd95 for c in s]}
        return out

    def predict(
        model_path: Path, patch: int, name: str, maps: list[str] | None = None
    ) -> dict[str, Path]:
        model = load_model(model_path, map_location=device)
        preds = {}
        for cid in test:
            target = work / "test" / name / f"{cid}.zarr"
            if not target.exists():
                extra = [open_volume(m.format(cid=cid)) for m in maps or []]
                predict_volume(
                    model, inputs[cid], target, patch, extra, "vote", base.batch, device, False
                )
            preds[cid] = target
        return preds

    res: dict[str, Any] = {}
    mem = plan["bytes"]
    # U-net at the largest patch that fits the budget
    cfg = dataclasses.replace(base, model="unet", patch=plan["unet_patch"])
    folder = work / "unet"
    if not (folder / "DONE").exists():
        train(cfg, spec, folder, resume=(folder / "last.pt").exists(), progress=False)
        (folder / "DONE").touch()
    res["unet"] = {"cases": score(predict(folder / "best.pt", cfg.patch, "unet")),
                   "seconds": _seconds(folder), "memory": mem["unet"], "patch": cfg.patch}  # fmt: skip
    log(f"  unet (P {cfg.patch}) done")
    # both meU-nets and the post-concatenation stage 2
    t0 = time.perf_counter()
    train_cascade(spec, work / "post", "post", base, progress=False)
    (work / "pre" / "stage1").parent.mkdir(parents=True, exist_ok=True)
    if not (work / "pre" / "stage1").exists():  # the pre cascade shares stage 1
        (work / "pre" / "stage1").symlink_to((work / "post" / "stage1").resolve())
    train_cascade(spec, work / "pre", "pre", base, progress=False)
    log(f"  meU-nets, post and pre stage 2 done ({time.perf_counter() - t0:.0f} s)")
    stage1 = work / "post" / "stage1"
    for name, memory_key in (("meunet-k150", "meunet-k150"), ("meunet-k175", "meunet-k175")):
        preds = {cid: stage1 / name / "predictions" / f"{cid}.zarr" for cid in test}
        res[name] = {"cases": score(preds), "seconds": _seconds(stage1 / name),
                     "memory": mem[memory_key], "patch": base.patch}  # fmt: skip
    s1_seconds = _seconds(stage1 / "meunet-k150") + _seconds(stage1 / "meunet-k175")
    maps = [str(stage1 / b / "predictions" / "{cid}.zarr") for b in ("meunet-k150", "meunet-k175")]
    for mode in ("post", "pre"):
        folder = work / mode / "stage2"
        res[f"cascade-{mode}"] = {
            "cases": score(predict(folder / "best.pt", base.patch, f"cascade-{mode}", maps)),
            "seconds": s1_seconds + _seconds(folder),
            "memory": max(mem["meunet-k150"], mem["meunet-k175"], mem[f"stage2-{mode}"]),
            "patch": base.patch,
        }
    # nnU-Net's low-resolution cascade
    train_cascade(spec, work / "lowres", "lowres", base, progress=False)
    low = work / "lowres" / "stage1" / "lowres"
    maps = [str(low / "predictions" / "{cid}.zarr")]
    res["cascade-lowres"] = {
        "cases": score(
            predict(work / "lowres" / "stage2" / "best.pt", base.patch, "cascade-lowres", maps)
        ),
        "seconds": _seconds(low) + _seconds(work / "lowres" / "stage2"),
        "memory": max(mem["lowres-stage1"], mem["stage2-lowres"]),
        "patch": base.patch,
    }
    log("  low-res cascade done")
    return res


def phantom_runs(
    size: dict[str, Any], work: Path, seeds: list[int]
) -> list[tuple[str, DatasetSpec]]:
    runs = []
    for seed in seeds:
        folder = work / f"phantom-seed{seed}" / "data"
        yaml_path = folder / "dataset.yaml"
        if not yaml_path.is_file():
            make_phantom_dataset(folder, 8, size["phantom_shape"], seed, progress=False)
        spec = load_spec(yaml_path)
        ids = list(spec.cases)
        spec = dataclasses.replace(
            spec, split={"train": tuple(ids[:5]), "val": (ids[5],), "test": tuple(ids[6:])}
        )
        runs.append((f"phantom-seed{seed}", spec))
    return runs


def brats_runs(size: dict[str, Any], work: Path) -> list[tuple[str, DatasetSpec]]:
    spec = load_spec(BRATS)
    factor = size["brats_factor"]
    if factor > 1:  # CPU: halve each axis (2 mm voxels), written once to Zarr
        spec = downsampled_dataset(spec, factor, work / f"brats4-x{factor}", progress=False)
    else:  # gzip NIfTI has no random access: convert once
        spec = downsampled_dataset(spec, 1, work / "brats4-zarr", progress=False)
    a, b = ("pat0005", "pat0006"), ("pat0003", "pat0004")
    runs = []
    for name, (train_ids, test_ids) in {"brats4-foldA": (a, b), "brats4-foldB": (b, a)}.items():
        runs.append(
            (
                name,
                dataclasses.replace(
                    spec, split={"train": train_ids, "val": train_ids, "test": test_ids}
                ),
            )
        )
    return runs


def _fmt(values: list[float]) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return "-"
    return f"{v.mean():.3f} +- {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# Accuracy: U-net, meU-net and cascades under one budget ({meta['sizes']} sizes)",
        "",
    ]
    lines += [f"Made by `{meta['command']}` on {meta['machine']}, torch {meta['torch']}.", ""]
    lines += meta["setup"] + [""]
    for dataset in ("phantom", "brats4"):
        runs = {k: v for k, v in results.items() if k.startswith(dataset)}
        if not runs:
            continue
        classes = next(iter(runs.values()))["classes"]
        lines += [f"## {dataset}: {', '.join(runs)}", ""]
        head = (
            " | ".join(f"{c} Dice" for c in classes[1:])
            + " | "
            + " | ".join(f"{c} HD95" for c in classes[1:])
        )
        lines += [
            f"| configuration | patch | {head} | train s | memory GiB |",
            "|---" * (4 + 2 * (len(classes) - 1)) + "|",
        ]
        for cfg in CONFIGS:
            entries = [r["configs"][cfg] for r in runs.values() if cfg in r["configs"]]
            cases = [c for e in entries for c in e["cases"].values()]
            dice = [_fmt([c["dice"][k] for c in cases]) for k in range(1, len(classes))]
            hd = [_fmt([c["hd95"][k] for c in cases]) for k in range(1, len(classes))]
            secs = np.mean([e["seconds"] for e in entries])
            mem = max(e["memory"] for e in entries) / GIB
            patches = sorted({e["patch"] for e in entries})
            lines.append(
                f"| {cfg} | {'/'.join(map(str, patches))} | {' | '.join(dice)} | {' | '.join(hd)} | {secs:.0f} | {mem:.3f} |"
            )
        lines += ["", "Per case (Dice " + ", ".join(classes[1:]) + "):", ""]
        lines += [
            "| run | case | " + " | ".join(CONFIGS) + " |",
            "|---|---|" + "---|" * len(CONFIGS),
        ]
        for run, r in runs.items():
            for cid in next(iter(r["configs"].values()))["cases"]:
                cells = [
                    " / ".join(f"{d:.3f}" for d in r["configs"][c]["cases"][cid]["dice"][1:])
                    for c in CONFIGS
                ]
                lines.append(f"| {run} | {cid} | " + " | ".join(cells) + " |")
        lines += ["", *versus_paper(runs, classes), ""]
    return "\n".join(lines)  # fmt: skip


# the paper's claims on its small class (hind-gut): (better, worse, the paper's two Dice values)
CLAIMS = [
    ("meunet-k150", "unet", "0.741 vs 0.672 (meU-net 240 vs U-net 160, Table 1)"),
    ("meunet-k175", "unet", "0.748 vs 0.666 (k = 1.75 vs 1, Table 2)"),
    ("cascade-post", "meunet-k175", "0.768 vs 0.748 (cascade vs its best stage 1)"),
    ("cascade-post", "cascade-pre", "0.768 vs 0.756 (Table 5)"),
    ("cascade-post", "cascade-lowres", "0.768 vs 0.659 (Table 3)"),
]


def versus_paper(runs: dict[str, Any], classes: list[str]) -> list[str]:
    """Each of the paper's small-class claims, checked on paired test cases."""
    small = len(classes) - 1
    lines = [f"Versus the paper ({classes[small]} Dice, paired over the test cases):", ""]
    lines += [
        "| claim | paper | here: mean difference +- sd | cases where it holds | verdict |",
        "|---|---|---|---|---|",
    ]
    for better, worse, paper in CLAIMS:
        diffs = np.array(
            [
                r["configs"][better]["cases"][cid]["dice"][small]
                - r["configs"][worse]["cases"][cid]["dice"][small]
                for r in runs.values()
                for cid in r["configs"][better]["cases"]
            ]
        )
        wins = int((diffs > 0).sum())
        spread = "" if abs(diffs.mean()) >= diffs.std() else ", within the case-to-case spread"
        if abs(diffs.mean()) < 0.01:
            verdict = "no difference (< 0.01)"
        elif diffs.mean() > 0 and wins > len(diffs) / 2:
            verdict = "agrees"
        elif diffs.mean() < 0 and wins < len(diffs) / 2:
            verdict = "disagrees"
        else:
            verdict = "inconclusive"
        lines.append(
            f"| {better} > {worse} | {paper} | {diffs.mean():+.3f} +- {diffs.std():.3f} | {wins} of {len(diffs)} | {verdict}{spread if verdict in ('agrees', 'disagrees') else ''} |"
        )
    return lines  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", choices=tuple(SIZES), default="cpu")
    p.add_argument(
        "--datasets", nargs="+", choices=("phantom", "brats4"), default=["phantom", "brats4"]
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="phantom seeds (default 0 1 2)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting",
    )
    p.add_argument("--phantom-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--work", default=None, help="folder for runs (default runs/accuracy-SIZES)")
    p.add_argument(
        "--out", default=None, help="results prefix (default benchmarks/results/accuracy[-gpu])"
    )
    args = p.parse_args(argv)
    size = dict(SIZES[args.sizes])
    if args.phantom_shape:
        size["phantom_shape"] = tuple(args.phantom_shape)
    base = override(size["train"], args.set)
    work = Path(args.work or ROOT / "runs" / f"accuracy-{args.sizes}")
    prefix = Path(
        args.out or RESULTS / ("accuracy" if args.sizes == "cpu" else f"accuracy-{args.sizes}")
    )
    runs: list[tuple[str, DatasetSpec]] = []
    if "phantom" in args.datasets:
        runs += phantom_runs(size, work, list(args.seeds or size["seeds"]))
    if "brats4" in args.datasets:
        runs += brats_runs(size, work)
    results: dict[str, Any] = {}
    store = prefix.with_suffix(".json")
    if store.is_file():  # keep runs of an earlier invocation (another dataset, say)
        results = json.loads(store.read_text()).get("runs", {})
    for name, spec in runs:
        done = work / name / "result.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
            log(f"{name}: already done, kept")
            continue
        key = work / f"memory-{len(spec.channels)}ch-{spec.num_classes}cl.json"
        if not key.is_file():  # depends on the channels and classes only
            log(f"{name}: measuring memory")
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_text(json.dumps(memory_plan(base, len(spec.channels), spec.num_classes)))
        plan = json.loads(key.read_text())
        log(
            f"{name}: budget {plan['budget'] / GIB:.3f} GiB -> U-net patch {plan['unet_patch']}; training"
        )
        configs = run_one(spec, work / name, base, plan)
        results[name] = {"classes": list(spec.classes), "shape": list(open_volume(spec.cases[spec.split['test'][0]].images[0]).shape),
                         "plan": plan, "configs": configs}  # fmt: skip
        done.write_text(json.dumps(results[name], indent=1))
    setup = [
        f"- Training (every network): {json.dumps(base.to_dict())}.",
        "- Training seconds were measured while other work shared the 2 cores at times: compare them within a table only.",
        "- Same sampler (half-overlap grid, roulette), loss (weighted CE + soft Dice), optimizer, epochs and patches per epoch for every network; the best validation epoch is kept. Cascades' training time adds their stages.",
        "- Memory: measured peak of one training step (`meunet.memory.measure`: live tensor bytes on CPU, `torch.cuda.max_memory_allocated` on CUDA); a cascade's is its largest stage's. The budget is meU-net k = 1.75's peak; U-net gets the largest patch (multiple of 16) that fits it.",
        f"- Phantom: 8 cases of {size['phantom_shape']} voxels per seed (5 train, 1 val, 2 test), a fresh dataset and training seed per seed; HD95 in micrometres.",
        f"- brats4: 3-class task (0 background, 1 edema, 2 tumour core), downsampled by {size['brats_factor']} per axis; fold A trains on pat0005/6 and tests on pat0003/4, fold B the reverse; validation on the training cases; HD95 in mm.",
    ]
    meta = {"sizes": args.sizes, "command": " ".join(["python benchmarks/accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": torch.cuda.get_device_name() if base.device.startswith("cuda") else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "setup": setup}  # fmt: skip
    text = report(results, meta)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    prefix.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
