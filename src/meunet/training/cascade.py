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
from meunet.data.io.atomic import atomic_path
from meunet.data.spec import DatasetSpec
from meunet.device import resolve_device
from meunet.errors import MeunetError
from meunet.inference.cascade import predict_branch
from meunet.models import load_checkpoint, load_model
from meunet.training import distributed as dist
from meunet.training.checkpoint import check_dataset, check_settings
from meunet.training.config import TrainConfig, resolve_patch
from meunet.training.loop import train
from meunet.training.run import CASCADE_MANIFEST, STAGE_RECORD, CascadeRun, Run

__all__ = ["CASCADE_MANIFEST", "MODES", "STAGE_RECORD", "stage1_configs", "train_cascade"]

#: How each cascade mode connects the stages: stage 2's model, and its stage-1 branches.
MODES = ("post", "pre", "lowres")
_STAGE2_MODEL = {"post": "cascade-post", "pre": "cascade-pre", "lowres": "cascade-pre"}


def stage1_configs(mode: str, base: TrainConfig) -> dict[str, TrainConfig]:
    """The stage-1 branches of a cascade, derived from ``base`` (patch, channels, budget)."""
    if mode == "lowres":  # nnU-Net's: a plain U-net on volumes downsampled by 2
        return {"lowres": dataclasses.replace(base, model="unet", downsample=2)}
    return {
        "meunet-k150": dataclasses.replace(base, model="meunet", k=1.5, downsample=1),
        "meunet-k175": dataclasses.replace(base, model="meunet", k=1.75, downsample=1),
    }


def stage2_config(mode: str, base: TrainConfig) -> TrainConfig:
    """Stage 2 of a cascade: a U-net taking the stage-1 maps as ``mode`` connects them."""
    return dataclasses.replace(base, model=_STAGE2_MODEL[mode], downsample=1)


def _check_stage(run: Run, record: Path, cfg: TrainConfig, dataset: dict[str, Any]) -> None:
    """Refuse to reuse a finished stage made with other settings or another dataset.

    A stage finished before its record was written is compared with its ``last.pt``.
    """
    try:
        stage = json.loads(record.read_text())
    except FileNotFoundError:
        if not run.last.is_file():
            return
        stage = load_checkpoint(run.last)
    except ValueError as e:
        raise MeunetError(
            f"{record}: unreadable ({e}); delete {run.folder} to train this stage again"
        ) from None
    check_settings(stage.get("train_config", {}), run.folder, cfg.to_dict())
    check_dataset(stage.get("dataset"), run.folder, dataset)


def train_cascade(
    spec: DatasetSpec,
    out_dir: str | Path,
    mode: str = "post",
    base: TrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train stage 1, predict every case with it, train stage 2; return stage 2's best checkpoint.

    The manifest that predicts with the whole cascade is ``CascadeRun(out_dir).manifest_path``.
    """
    if mode not in MODES:
        raise MeunetError(f"cascade mode must be one of {MODES}, got {mode!r}")
    base = base or TrainConfig()  # patch: auto is resolved per resolution, in _train_cascade
    run = CascadeRun(out_dir)
    # under torchrun: one process group for every stage (each `train` joins it)
    ranks, device = dist.from_env(resolve_device(base.device))
    try:
        # one writer per cascade folder (new, empty, or meunet's): the main process holds its lock
        with run.lock("train-cascade") if ranks.main else contextlib.nullcontext():
            if ranks.main:
                run.claim("train-cascade")
            dist.barrier(ranks)
            return _train_cascade(spec, run, mode, base, progress and ranks.main, ranks, device)
    finally:
        dist.finish(ranks)


def _train_cascade(
    spec: DatasetSpec,
    run: CascadeRun,
    mode: str,
    base: TrainConfig,
    progress: bool,
    ranks: dist.Ranks,
    device: torch.device,
) -> Path:
    extra: dict[str, list[Path]] = {cid: [] for cid in spec.cases}
    dataset = dataset_identity(spec)
    full = resolve_patch(base, spec)  # patch: auto, once for the full-resolution stages
    branches = {  # a low-resolution branch resolves auto for its downsampled volumes
        name: resolve_patch(cfg, spec)
        if cfg.downsample > 1
        else dataclasses.replace(cfg, patch=full.patch)
        for name, cfg in stage1_configs(mode, base).items()
    }
    for name, cfg in branches.items():
        branch = run.branch(name)
        done, record = run.branch_done(name), run.branch_record(name)
        if done.exists():
            _check_stage(branch, record, cfg, dataset)
        else:
            # resumes an interrupted run; a finished one returns at once
            train(cfg, spec, branch.folder, resume=branch.started, progress=progress)
            model = load_model(branch.best, map_location=device)
            mine = list(spec.cases)[ranks.rank :: ranks.world]  # each process predicts its share
            for cid in tqdm(mine, desc=f"predict {name}", disable=not progress, leave=False):
                # the same streaming predictor `meunet predict --model cascade.json` uses;
                # an interrupted prediction resumes, a finished one is redone
                inputs = [open_volume(p, spacing=spec.spacing) for p in spec.cases[cid].images]
                predict_branch(
                    model,
                    inputs,
                    run.prediction(name, cid),
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
                with atomic_path(record) as tmp:
                    Path(tmp).write_text(json.dumps(stage, indent=1))
                done.write_text("all cases predicted\n")
        for cid in spec.cases:
            extra[cid].append(run.prediction(name, cid))
    stage2 = stage2_config(mode, full)
    second = run.stage2
    best = train(stage2, spec, second.folder, resume=second.started, extra=extra, progress=progress)
    if ranks.main:
        run.write_manifest(mode, branches, stage2)
    return best
