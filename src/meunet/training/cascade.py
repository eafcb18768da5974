"""Train a whole two-stage cascade: stage-1 branches, their predictions, then stage 2.

``post`` and ``pre`` (``docs/method.md``, *The two-stage cascade*): two meU-nets (k = 1.5 and
1.75) on full-resolution patches; their predictions over every case become
one-hot maps that the stage-2 U-net takes at every decoder level (post) or
at its input (pre). ``lowres`` (nnU-Net's cascade): one U-net on volumes
downsampled by 2, its prediction upsampled (nearest) and pre-concatenated.

Each finished stage leaves its checkpoint and predictions; a rerun skips
finished stages and resumes an interrupted one, so nothing is lost on a crash.
A stage is reused only with the settings and dataset it was made with (its
``stage.json`` beside ``DONE``, and its checkpoints, record them): a rerun
with other settings or changed data is refused, naming the stage folder.
Stage-1 maps are made by :func:`meunet.inference.cascade.predict_branch`,
the same code that makes them at inference, with the same window (each
branch's ``TrainConfig.window``, recorded as ``infer_patch`` in cascade.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from meunet.data.identity import dataset_identity
from meunet.data.io import open_volume
from meunet.data.io.ownership import OutputLock, make_folder
from meunet.data.spec import DatasetSpec
from meunet.errors import MeunetError
from meunet.inference.cascade import predict_branch
from meunet.models import load_checkpoint, load_model
from meunet.training import distributed as dist
from meunet.training.checkpoint import check_dataset, check_settings
from meunet.training.config import TrainConfig
from meunet.training.loop import resolve_device, train

MODES = ("post", "pre", "lowres")
CASCADE_MANIFEST = "cascade.json"  # what `meunet predict --model` takes to run a whole cascade
STAGE_RECORD = "stage.json"  # beside a stage's DONE: the settings and dataset it was made with


def stage1_configs(mode: str, base: TrainConfig) -> dict[str, TrainConfig]:
    """The stage-1 branches of a cascade, derived from ``base`` (patch, channels, budget)."""
    if mode == "lowres":
        return {"lowres": dataclasses.replace(base, model="lowres", downsample=2)}
    return {
        "meunet-k150": dataclasses.replace(base, model="meunet", k=1.5, downsample=1),
        "meunet-k175": dataclasses.replace(base, model="meunet", k=1.75, downsample=1),
    }


def _check_stage(folder: Path, record: Path, cfg: TrainConfig, dataset: dict[str, Any]) -> None:
    """Refuse to reuse a finished stage made with other settings or another dataset.

    A stage finished before its record was written is compared with its ``last.pt``.
    """
    try:
        stage = json.loads(record.read_text())
    except FileNotFoundError:
        if not (folder / "last.pt").is_file():
            return
        stage = load_checkpoint(folder / "last.pt")
    except ValueError as e:
        raise MeunetError(
            f"{record}: unreadable ({e}); delete {folder} to train this stage again"
        ) from None
    check_settings(stage.get("train_config", {}), folder, cfg.to_dict())
    check_dataset(stage.get("dataset"), folder, dataset)


def train_cascade(
    spec: DatasetSpec,
    out_dir: str | Path,
    mode: str = "post",
    base: TrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train stage 1, predict every case with it, train stage 2; return stage 2's best checkpoint."""
    if mode not in MODES:
        raise MeunetError(f"cascade mode must be one of {MODES}, got {mode!r}")
    base = base or TrainConfig()
    out = Path(out_dir)
    # under torchrun: one process group for every stage (each `train` joins it)
    ranks, device = dist.from_env(resolve_device(base.device))
    try:
        # one writer per cascade folder (new, empty, or meunet's): the main process holds its lock
        with OutputLock(out, "train-cascade") if ranks.main else contextlib.nullcontext():
            if ranks.main:
                make_folder(out, "train-cascade")
            dist.barrier(ranks)
            return _train_cascade(spec, out, mode, base, progress and ranks.main, ranks, device)
    finally:
        dist.finish(ranks)


def _train_cascade(
    spec: DatasetSpec,
    out: Path,
    mode: str,
    base: TrainConfig,
    progress: bool,
    ranks: dist.Ranks,
    device: torch.device,
) -> Path:
    extra: dict[str, list[Path]] = {cid: [] for cid in spec.cases}
    dataset = dataset_identity(spec)
    for name, cfg in stage1_configs(mode, base).items():
        folder = out / "stage1" / name
        done = folder / "predictions" / "DONE"
        record = folder / "predictions" / STAGE_RECORD
        if done.exists():
            _check_stage(folder, record, cfg, dataset)
        else:
            # resumes an interrupted run; a finished one returns at once
            train(cfg, spec, folder, resume=(folder / "last.pt").exists(), progress=progress)
            model = load_model(folder / "best.pt", map_location=device)
            mine = list(spec.cases)[ranks.rank :: ranks.world]  # each process predicts its share
            for cid in tqdm(mine, desc=f"predict {name}", disable=not progress, leave=False):
                # the same streaming predictor `meunet predict --model cascade.json` uses;
                # an interrupted prediction resumes, a finished one is redone
                inputs = [open_volume(p, spacing=spec.spacing) for p in spec.cases[cid].images]
                target = folder / "predictions" / f"{cid}.zarr"
                predict_branch(
                    model,
                    inputs,
                    target,
                    cfg.window,
                    cfg.downsample,
                    cfg.fusion,
                    cfg.batch,
                    device,
                    False,
                )
            dist.barrier(ranks)
            if ranks.main:
                stage = {"train_config": cfg.to_dict(), "dataset": dataset}
                record.write_text(json.dumps(stage, indent=1))
                done.write_text("all cases predicted\n")
        for cid in spec.cases:
            extra[cid].append(folder / "predictions" / f"{cid}.zarr")
    stage2 = dataclasses.replace(
        base, model="cascade-pre" if mode in ("pre", "lowres") else "cascade-post", downsample=1
    )
    folder = out / "stage2"
    resume = (folder / "last.pt").exists()
    best = train(stage2, spec, folder, resume=resume, extra=extra, progress=progress)
    manifest = {
        "cascade": mode,
        "stage1": [
            {
                "checkpoint": f"stage1/{name}/best.pt",
                "patch": cfg.patch,
                "infer_patch": cfg.window,  # the window its maps were made with, for stage 2
                "downsample": cfg.downsample,
            }
            for name, cfg in stage1_configs(mode, base).items()
        ],
        "stage2": {
            "checkpoint": "stage2/best.pt",
            "patch": stage2.patch,
            "infer_patch": stage2.window,
        },
    }
    if not ranks.main:
        return best
    tmp = out / ".cascade.json.partial"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / CASCADE_MANIFEST)
    return best
