"""Train a whole two-stage cascade: stage-1 branches, their predictions, then stage 2.

``post`` and ``pre`` (``../shared/DESIGN.md`` 1.3): two meU-nets (k = 1.5 and
1.75) on full-resolution patches; their predictions over every case become
one-hot maps that the stage-2 U-net takes at every decoder level (post) or
at its input (pre). ``lowres`` (nnU-Net's cascade): one U-net on volumes
downsampled by 2, its prediction upsampled (nearest) and pre-concatenated.

Each finished stage leaves its checkpoint and predictions; a rerun skips
finished stages and resumes an interrupted one, so nothing is lost on a crash.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from meunet.data.io import open_volume, write_volume
from meunet.data.resample import downsample_image, upsample_labels
from meunet.data.spec import DatasetSpec
from meunet.errors import MeunetError
from meunet.inference.sliding import predict_array
from meunet.models import load_model
from meunet.training.config import TrainConfig
from meunet.training.loop import resolve_device, train

MODES = ("post", "pre", "lowres")
CASCADE_MANIFEST = "cascade.json"  # what `meunet predict --model` takes to run a whole cascade


def stage1_configs(mode: str, base: TrainConfig) -> dict[str, TrainConfig]:
    """The stage-1 branches of a cascade, derived from ``base`` (patch, channels, budget)."""
    if mode == "lowres":
        return {"lowres": dataclasses.replace(base, model="lowres", downsample=2)}
    return {
        "meunet-k150": dataclasses.replace(base, model="meunet", k=1.5, downsample=1),
        "meunet-k175": dataclasses.replace(base, model="meunet", k=1.75, downsample=1),
    }


def predict_case(
    checkpoint: Path, spec: DatasetSpec, case_id: str, cfg: TrainConfig, device: torch.device
) -> np.ndarray:
    """Stage-1 labels of one whole case (in memory), at the case's own resolution."""
    model = load_model(checkpoint, map_location=device)
    case = spec.cases[case_id]
    chans = []
    for path in case.images:
        vol = open_volume(path, spacing=spec.spacing)
        image = vol[...].astype(np.float32)
        if cfg.downsample > 1:
            image = downsample_image(image, cfg.downsample)
        # z-score over the whole (resampled) volume, as the training sampler normalises
        mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
        chans.append(((image - mean) / (std if std > 1e-8 else 1.0)).astype(np.float32))
    pred = predict_array(model, np.stack(chans), cfg.patch, None, cfg.fusion, cfg.batch, device)
    if cfg.downsample > 1:
        pred = upsample_labels(pred, cfg.downsample, vol.shape)
    return pred


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
    device = resolve_device(base.device)
    extra: dict[str, list[Path]] = {cid: [] for cid in spec.cases}
    for name, cfg in stage1_configs(mode, base).items():
        folder = out / "stage1" / name
        done = folder / "predictions" / "DONE"
        if not done.exists():
            # resumes an interrupted run; a finished one returns at once
            train(cfg, spec, folder, resume=(folder / "last.pt").exists(), progress=progress)
            for cid in tqdm(spec.cases, desc=f"predict {name}", disable=not progress, leave=False):
                target = folder / "predictions" / f"{cid}.zarr"
                if not target.exists():
                    pred = predict_case(folder / "best.pt", spec, cid, cfg, device)
                    write_volume(
                        target,
                        pred,
                        spacing=open_volume(
                            spec.cases[cid].images[0], spacing=spec.spacing
                        ).spacing,
                    )
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
                "downsample": cfg.downsample,
            }
            for name, cfg in stage1_configs(mode, base).items()
        ],
        "stage2": {"checkpoint": "stage2/best.pt", "patch": stage2.patch},
    }
    tmp = out / ".cascade.json.partial"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / CASCADE_MANIFEST)
    return best
