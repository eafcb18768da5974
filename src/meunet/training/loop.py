"""The training loop, readable top to bottom.

``train`` samples patches (the paper's roulette), runs U-net or meU-net
steps with the paper's loss, validates by sliding-window prediction of the
whole validation volumes every epoch (with the inference window
``cfg.window``, so that the best epoch is the best one as the network will
be used), stops early, and writes ``best.pt``,
``last.pt`` (atomically, self-describing, resumable exactly), ``log.csv``
and ``curves.png`` into the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import math
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from meunet.data.identity import dataset_identity, training_spacing
from meunet.data.io import open_volume
from meunet.data.io.atomic import atomic_path
from meunet.data.patch_size import as_json, thin_message
from meunet.data.resample import downsampled_dataset
from meunet.data.sampling import PatchSampler
from meunet.data.spec import DatasetSpec
from meunet.device import resolve_device
from meunet.errors import MeunetError
from meunet.inference.sliding import predict_array
from meunet.metrics import DiceCounter
from meunet.models import create_model, variant
from meunet.training import distributed as dist
from meunet.training.checkpoint import load_training_state, save_training_state
from meunet.training.config import TrainConfig, resolve_patch
from meunet.training.loss import SegLoss, class_weights
from meunet.training.run import Run
from meunet.training.step import Batch, train_step

__all__ = ["resolve_device", "train"]  # resolve_device lives in meunet.device


def train(
    cfg: TrainConfig,
    spec: DatasetSpec,
    out_dir: str | Path,
    resume: bool = False,
    extra: Mapping[str, Sequence[str | Path]] | None = None,
    progress: bool = True,
) -> Path:
    """Train one network on ``spec``'s train split, validating on its val split.

    Args:
        cfg: Training configuration.
        spec: Dataset (already checked with ``meunet check``).
        out_dir: Folder for checkpoints, log and curves (its layout: :class:`~meunet.training.run.Run`).
        resume: Continue exactly from ``out_dir/last.pt``.
        extra: Stage 2 of a cascade: case id -> stage-1 label volumes (one per branch).
        progress: Show progress bars.

    Returns:
        Path of the best checkpoint.
    """
    run = Run(out_dir)
    ranks, device = dist.from_env(resolve_device(cfg.device))
    try:
        # one writer per run folder: the main process holds its lock
        with run.lock("train") if ranks.main else contextlib.nullcontext():
            return _train(cfg, spec, run, resume, extra, progress and ranks.main, ranks, device)
    finally:
        dist.finish(ranks)


@dataclass
class _Session:
    """What one training run works with, built once before the first epoch."""

    cfg: TrainConfig
    spec: DatasetSpec
    run: Run
    ranks: dist.Ranks
    device: torch.device
    progress: bool
    dataset: dict[str, Any]  # what this run learns from, recorded in every checkpoint
    spacing: list[float] | None  # the training cases' voxel size (None: unknown)
    net: Any  # the network itself
    model: Any  # `net`, DDP-wrapped when distributed
    sampler: PatchSampler
    weights: torch.Tensor
    loss_fn: SegLoss
    optimizer: torch.optim.Optimizer
    scaler: Any
    validation: _ValidationSet


@dataclass
class _Standing:
    """Where early stopping stands after ``epoch`` finished epochs."""

    epoch: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    since_best: int = 0

    def update(self, epoch: int, score: float) -> None:
        self.epoch = epoch
        if score > self.best:
            self.best, self.best_epoch, self.since_best = score, epoch, 0
        else:
            self.since_best += 1


def _train(
    cfg: TrainConfig,
    spec: DatasetSpec,
    run: Run,
    resume: bool,
    extra: Mapping[str, Sequence[str | Path]] | None,
    progress: bool,
    ranks: dist.Ranks,
    device: torch.device,
) -> Path:
    s = _build(cfg, spec, run, extra, progress, ranks, device)
    cfg = s.cfg  # with patch: auto resolved
    standing = _resume(s) if resume else _start(s)
    dist.barrier(ranks)  # every rank has read last.pt before rank 0 writes it again
    s.model = dist.wrap(s.net, ranks, device)
    for epoch in range(standing.epoch, cfg.epochs):
        if standing.since_best >= cfg.patience:
            break
        t0 = time.perf_counter()
        losses, patches = _epoch(s, epoch)
        dice = _validate(s)
        standing.update(
            epoch + 1, float(np.nanmean(dice[1:])) if np.isfinite(dice[1:]).any() else 0.0
        )
        if ranks.main:
            _save(s, standing, dice)
            _log(s, standing, losses, dice, patches, t0)
    dist.barrier(ranks)  # rank 0's last checkpoint is on disk before anyone reads it
    return run.best


def _build(
    cfg: TrainConfig,
    spec: DatasetSpec,
    run: Run,
    extra: Mapping[str, Sequence[str | Path]] | None,
    progress: bool,
    ranks: dist.Ranks,
    device: torch.device,
) -> _Session:
    """Check the setting, then build the network, sampler, loss, optimizer and validation set."""
    if ranks.main:
        run.claim("train")  # new, empty, or a run folder of meunet's
        for stale in run.stale_partials():  # left by a process killed while writing
            stale.unlink()
    dist.barrier(ranks)
    if cfg.batch % (ranks.world * cfg.micro_batches):
        raise MeunetError(
            f"batch {cfg.batch} must be a multiple of processes x micro_batches "
            f"({ranks.world} x {cfg.micro_batches})"
        )
    dataset = dataset_identity(spec, extra)  # compared on resume
    # patch: auto, from the full-resolution cases (scaled for a low-resolution stage)
    cfg = resolve_patch(cfg, spec, spec.split.get("train", ()) or None)
    if cfg.downsample > 1:  # the low-resolution cascade's stage 1 trains on a downsampled copy
        if ranks.main:
            downsampled_dataset(spec, cfg.downsample, run.data_copy(cfg.downsample), progress)
        dist.barrier(ranks)
        spec = downsampled_dataset(spec, cfg.downsample, run.data_copy(cfg.downsample), False)
    train_ids, val_ids = spec.split.get("train", ()), spec.split.get("val", ())
    if not train_ids or not val_ids:
        raise MeunetError(f"{spec.path}: training needs cases in both split.train and split.val")
    branches = len(next(iter(extra.values()))) if extra else 0
    if variant(cfg.model).takes_extra and not branches:
        raise MeunetError(
            f"model {cfg.model!r} is a cascade's stage 2: run `meunet train-cascade`, which supplies stage-1 maps"
        )
    # the run is a function of the seed: model init, sampling, order
    torch.manual_seed(cfg.seed)
    net = create_model(
        cfg.model,
        in_channels=len(spec.channels),
        num_classes=spec.num_classes,
        extra_channels=branches * spec.num_classes,
        encoder_channels=cfg.encoder_channels,
        decoder_channels=cfg.decoder_channels,
        checkpointing=cfg.checkpointing,
    ).to(device)
    sampler = PatchSampler(
        spec, train_ids, cfg.sampler_config(), extra=extra, seed=cfg.seed, progress=progress
    )
    if ranks.main:
        _warn_thin(sampler.shapes, cfg)
    weights = class_weights(sampler.first_epoch_class_counts())
    return _Session(
        cfg=cfg,
        spec=spec,
        run=run,
        ranks=ranks,
        device=device,
        progress=progress,
        dataset=dataset,
        spacing=training_spacing(spec, train_ids),
        net=net,
        model=net,
        sampler=sampler,
        weights=weights,
        loss_fn=SegLoss(weights).to(device),
        optimizer=torch.optim.Adam(net.parameters(), lr=cfg.lr),
        scaler=torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp else None,
        validation=_ValidationSet(spec, val_ids, extra),
    )


def _warn_thin(shapes: Mapping[str, Sequence[int]], cfg: TrainConfig) -> None:
    """Say once, on stderr, which training volumes the patch (or expanded patch) overhangs."""
    for size, what in ((cfg.patch, "patch"), (cfg.expanded, "expanded patch")):
        message = thin_message(shapes, size, what, cfg.divisor) if size else None  # type: ignore[arg-type]
        if message:
            tqdm.write(f"warning: training: {message}", file=sys.stderr)


def _start(s: _Session) -> _Standing:
    """A new run: refuse a folder holding another run's epochs, start a new log."""
    if s.run.last.exists():
        raise MeunetError(
            f"{s.run.folder}: holds a previous run (last.pt); pass --resume to continue it, or choose a new --out"
        )
    if s.ranks.main:
        s.run.log.unlink(missing_ok=True)
    return _Standing()


def _resume(s: _Session) -> _Standing:
    """Restore weights, optimizer, scaler, RNG and early-stopping state from ``last.pt``."""
    last = s.run.last
    if not last.is_file():
        raise MeunetError(f"{last}: nothing to resume from; drop --resume to start a new run")
    ckpt = load_training_state(last, s.net, s.cfg.to_dict(), s.device, s.dataset)
    s.optimizer.load_state_dict(ckpt["optimizer"])
    if s.scaler is not None and ckpt.get("scaler"):
        s.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"].cpu())
    standing = _Standing(ckpt["epoch"], ckpt["best"], ckpt["best_epoch"], ckpt["since_best"])
    if s.ranks.main:
        done = standing.epoch >= s.cfg.epochs or standing.since_best >= s.cfg.patience
        print(
            f"{last}: finished after epoch {standing.epoch} (best: epoch {standing.best_epoch}); nothing to do"
            if done
            else f"resuming from epoch {standing.epoch + 1} of {s.cfg.epochs} ({last}: "
            f"{standing.epoch} done, best so far: epoch {standing.best_epoch})",
            file=sys.stderr,
            flush=True,
        )
    return standing


def _epoch(s: _Session, epoch: int) -> tuple[dict[str, float], int]:
    """One epoch of training steps; return the mean losses (over processes) and the patch count."""
    cfg, device, ranks = s.cfg, s.device, s.ranks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    refs = s.sampler.epoch(epoch)
    loader = torch.utils.data.DataLoader(
        s.sampler.dataset(dist.shard(refs, cfg.batch, ranks)),
        batch_size=cfg.batch // ranks.world,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    s.model.train()
    sums: dict[str, float] = {}
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=not s.progress,
        leave=False,
    )
    for item in bar:
        batch = Batch(**{k: item.get(k) for k in Batch.__dataclass_fields__}).to(device)
        losses = train_step(s.model, s.optimizer, batch, s.loss_fn, s.scaler, cfg.micro_batches)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix(loss=f"{losses['total']:.3f}")
    n_batches = max(len(loader), 1)
    if not refs:
        tqdm.write(
            f"epoch {epoch + 1}: the roulette kept no patches (all candidates are background "
            f"at bg_threshold {cfg.bg_threshold}); raise bg_keep or lower the patch size"
        )
        sums = {"total": math.nan}
    sums = dist.mean(sums, ranks, device)
    dist.average_buffers(s.net, ranks)
    return {k: v / n_batches for k, v in sums.items()}, len(refs)


def _validate(s: _Session) -> np.ndarray:
    """Validation Dice per class; rank 0 computes it, every rank takes it (all stop together)."""
    mine = s.validation.dice(s.net, s.cfg, s.device) if s.ranks.main else None
    return dist.broadcast(mine, s.ranks)


def _save(s: _Session, standing: _Standing, dice: np.ndarray) -> None:
    """``last.pt`` after every epoch, ``best.pt`` when this epoch is the best."""
    state = {
        "epoch": standing.epoch,
        "best": standing.best,
        "best_epoch": standing.best_epoch,
        "since_best": standing.since_best,
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler is not None else {},
        "rng": torch.get_rng_state(),
        "train_config": s.cfg.to_dict(),
        "dataset": s.dataset,
        "infer_patch": as_json(s.cfg.window),  # the window validation used and predict defaults to
        "spacing": s.spacing,  # what `predict --resample-back` resamples inputs to
        "classes": list(s.spec.classes),
        "channels": list(s.spec.channels),
        "class_weights": s.weights.tolist(),
        "val_dice": dice.tolist(),
        "normalisation": "z-score per volume and channel",
    }
    if standing.best_epoch == standing.epoch:
        save_training_state(s.run.best, s.net, **state)
    save_training_state(s.run.last, s.net, **state)


def _log(
    s: _Session,
    standing: _Standing,
    losses: dict[str, float],
    dice: np.ndarray,
    patches: int,
    t0: float,
) -> None:
    """A row of ``log.csv``, the redrawn ``curves.png``, and a line on the terminal."""
    device, classes = s.device, s.spec.classes
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    row = {
        "epoch": standing.epoch,
        **{f"loss_{k}": v for k, v in losses.items()},
        **{f"dice_{name}": d for name, d in zip(classes, dice.tolist(), strict=True)},
        "lr": s.optimizer.param_groups[0]["lr"],
        "patches": patches,
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_memory_bytes": int(peak),
        "processes": s.ranks.world,
    }
    _append_csv(s.run.log, row)
    _plot(s.run.log, s.run.curves, classes)
    if s.progress:
        shown = ", ".join(
            f"{name} {d:.3f}" for name, d in zip(classes[1:], dice[1:].tolist(), strict=True)
        )
        tqdm.write(
            f"epoch {standing.epoch}: loss {row.get('loss_total', float('nan')):.4f}, val Dice {shown}, "
            f"best {standing.best:.3f} (epoch {standing.best_epoch})"
        )


class _ValidationSet:
    """Validation volumes, normalised like training patches, held in memory."""

    def __init__(
        self,
        spec: DatasetSpec,
        ids: Sequence[str],
        extra: Mapping[str, Sequence[str | Path]] | None,
    ) -> None:
        self.spec, self.ids, self.extra = spec, list(ids), extra
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def load(self, cid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if cid not in self._cache:
            from meunet.data.normalise import channel_stats

            case = self.spec.cases[cid]
            chans = []
            for path in case.images:
                vol = open_volume(path, spacing=self.spec.spacing)
                mean, std = channel_stats(vol)
                chans.append(((vol[...].astype(np.float32) - mean) / std).astype(np.float32))
            assert case.label is not None
            label = self.spec.remap_labels(open_volume(case.label)[...], str(case.label))
            extra = None
            if self.extra:
                c = self.spec.num_classes
                maps = [open_volume(p)[...] for p in self.extra[cid]]
                extra = np.concatenate(
                    [np.eye(c, dtype=np.float32)[m].transpose(3, 0, 1, 2) for m in maps]
                )
            self._cache[cid] = (np.stack(chans), label, extra)
        return self._cache[cid]

    def dice(self, model: Any, cfg: TrainConfig, device: torch.device) -> np.ndarray:
        counter = DiceCounter(self.spec.num_classes)
        for cid in self.ids:
            image, label, extra = self.load(cid)
            pred = predict_array(
                model, image, cfg.window, extra, cfg.fusion, batch_size=cfg.batch, device=device
            )
            counter.update(pred, label)
        return counter.dice()


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` under the file's header; a value the row lacks is written as nan."""
    header = None
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=header or list(row), restval="nan", extrasaction="ignore"
        )
        if header is None:
            writer.writeheader()
        writer.writerow(row)


def _plot(log: Path, png: Path, classes: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log.open() as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss_total", "loss_standard", "loss_expanded"):
        if key in rows[0]:
            ax1.plot(epochs, [float(r[key]) for r in rows], label=key.removeprefix("loss_"))
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss (CE + soft Dice)")
    ax1.legend()
    for name in classes[1:]:
        ax2.plot(epochs, [float(r[f"dice_{name}"]) for r in rows], label=name)
    ax2.set(xlabel="epoch", ylabel="Dice", title="validation Dice", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
