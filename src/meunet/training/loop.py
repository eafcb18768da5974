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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from meunet.data.identity import dataset_identity
from meunet.data.io import open_volume
from meunet.data.io.ownership import OutputLock, make_folder
from meunet.data.resample import downsampled_dataset
from meunet.data.sampling import PatchSampler, SamplerConfig
from meunet.data.spec import DatasetSpec
from meunet.errors import MeunetError
from meunet.inference.sliding import predict_array
from meunet.metrics import DiceCounter
from meunet.models import create_model
from meunet.training import distributed as dist
from meunet.training.checkpoint import load_training_state, save_training_state
from meunet.training.config import TrainConfig
from meunet.training.loss import SegLoss, class_weights
from meunet.training.step import Batch, train_step


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting: auto, cpu, cuda, cuda:N (or mps).

    Raises:
        MeunetError: for a name torch does not know, or a GPU this machine lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise MeunetError(
            f"device {name!r} is not one meunet runs on: use auto, cpu, cuda or cuda:N"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeunetError(
            f"device {name!r} asked for, but this PyTorch sees no CUDA GPU; "
            "use device cpu (--device cpu, or --set device=cpu in training)"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise MeunetError(
            f"device {name!r}: this machine has {n} CUDA GPU(s), cuda:0 .. cuda:{n - 1}"
        )
    return device


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
        out_dir: Folder for checkpoints, log and curves.
        resume: Continue exactly from ``out_dir/last.pt``.
        extra: Stage 2 of a cascade: case id -> stage-1 label volumes (one per branch).
        progress: Show progress bars.

    Returns:
        Path of the best checkpoint.
    """
    ranks, device = dist.from_env(resolve_device(cfg.device))
    try:
        # one writer per run folder: the main process holds its lock
        with OutputLock(out_dir, "train") if ranks.main else contextlib.nullcontext():
            return _train(cfg, spec, Path(out_dir), resume, extra, progress, ranks, device)
    finally:
        dist.finish(ranks)


def _train(
    cfg: TrainConfig,
    spec: DatasetSpec,
    out: Path,
    resume: bool,
    extra: Mapping[str, Sequence[str | Path]] | None,
    progress: bool,
    ranks: dist.Ranks,
    device: torch.device,
) -> Path:
    progress = progress and ranks.main
    if ranks.main:
        make_folder(out, "train")  # new, empty, or a run folder of meunet's
        for stale in out.glob(".*.partial*"):  # left by a process killed while writing
            stale.unlink()
    dist.barrier(ranks)
    if cfg.batch % (ranks.world * cfg.micro_batches):
        raise MeunetError(
            f"batch {cfg.batch} must be a multiple of processes x micro_batches "
            f"({ranks.world} x {cfg.micro_batches})"
        )
    # what this run learns from, recorded in every checkpoint and compared on resume
    dataset = dataset_identity(spec, extra)
    if cfg.downsample > 1:  # the low-resolution cascade's stage 1 trains on a downsampled copy
        if ranks.main:
            downsampled_dataset(spec, cfg.downsample, out / f"data_x{cfg.downsample}", progress)
        dist.barrier(ranks)
        spec = downsampled_dataset(spec, cfg.downsample, out / f"data_x{cfg.downsample}", False)
    train_ids, val_ids = spec.split.get("train", ()), spec.split.get("val", ())
    if not train_ids or not val_ids:
        raise MeunetError(f"{spec.path}: training needs cases in both split.train and split.val")
    branches = len(next(iter(extra.values()))) if extra else 0
    if cfg.model.startswith("cascade") and not branches:
        raise MeunetError(
            f"model {cfg.model!r} is a cascade's stage 2: run `meunet train-cascade`, which supplies stage-1 maps"
        )

    # the run is a function of the seed: model init, sampling, order
    torch.manual_seed(cfg.seed)
    model = create_model(
        cfg.model,
        in_channels=len(spec.channels),
        num_classes=spec.num_classes,
        extra_channels=branches * spec.num_classes,
        encoder_channels=cfg.encoder_channels,
        decoder_channels=cfg.decoder_channels,
        checkpointing=cfg.checkpointing,
    ).to(device)
    net = model  # the network itself; `model` is DDP-wrapped when distributed
    sampler = PatchSampler(
        spec,
        train_ids,
        SamplerConfig(
            cfg.patch, cfg.expanded, cfg.bg_threshold, cfg.bg_keep, cfg.patches_per_epoch
        ),
        extra=extra,
        seed=cfg.seed,
        progress=progress,
    )
    weights = class_weights(sampler.first_epoch_class_counts())
    loss_fn = SegLoss(weights).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp else None
    validation = _ValidationSet(spec, val_ids, extra)

    start, best, best_epoch, since_best = 0, -math.inf, -1, 0
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise MeunetError(f"{last}: nothing to resume from; drop --resume to start a new run")
        ckpt = load_training_state(last, net, cfg.to_dict(), device, dataset)
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"].cpu())
        start, best, best_epoch, since_best = (
            ckpt["epoch"],
            ckpt["best"],
            ckpt["best_epoch"],
            ckpt["since_best"],
        )
        if ranks.main:
            finished = start >= cfg.epochs or since_best >= cfg.patience
            print(
                f"{last}: finished after epoch {start} (best: epoch {best_epoch}); nothing to do"
                if finished
                else f"resuming from epoch {start + 1} of {cfg.epochs} ({last}: "
                f"{start} done, best so far: epoch {best_epoch})",
                file=sys.stderr,
                flush=True,
            )
    elif (out / "last.pt").exists():
        raise MeunetError(
            f"{out}: holds a previous run (last.pt); pass --resume to continue it, or choose a new --out"
        )

    dist.barrier(ranks)  # every rank has read last.pt before rank 0 writes it again
    model = dist.wrap(net, ranks, device)
    log_path = out / "log.csv"
    if not resume and ranks.main:
        log_path.unlink(missing_ok=True)
    for epoch in range(start, cfg.epochs):
        if since_best >= cfg.patience:
            break
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        refs = sampler.epoch(epoch)
        loader = torch.utils.data.DataLoader(
            sampler.dataset(dist.shard(refs, cfg.batch, ranks)),
            batch_size=cfg.batch // ranks.world,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
        )
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for item in bar:
            batch = Batch(**{k: item.get(k) for k in Batch.__dataclass_fields__}).to(device)
            losses = train_step(model, optimizer, batch, loss_fn, scaler, cfg.micro_batches)
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
        dist.average_buffers(net, ranks)
        # rank 0 validates; every rank takes its result, so all stop at the same epoch
        dice = dist.broadcast(validation.dice(net, cfg, device) if ranks.main else None, ranks)
        score = float(np.nanmean(dice[1:])) if np.isfinite(dice[1:]).any() else 0.0
        if score > best:
            best, best_epoch, since_best = score, epoch + 1, 0
        else:
            since_best += 1
        state = {
            "epoch": epoch + 1,
            "best": best,
            "best_epoch": best_epoch,
            "since_best": since_best,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": torch.get_rng_state(),
            "train_config": cfg.to_dict(),
            "dataset": dataset,
            "infer_patch": cfg.window,  # the window validation used and predict defaults to
            "classes": list(spec.classes),
            "channels": list(spec.channels),
            "class_weights": weights.tolist(),
            "val_dice": dice.tolist(),
            "normalisation": "z-score per volume and channel",
        }
        if not ranks.main:
            continue
        if best_epoch == epoch + 1:
            save_training_state(out / "best.pt", net, **state)
        save_training_state(out / "last.pt", net, **state)
        peak = (
            torch.cuda.max_memory_allocated(device)
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        row = {
            "epoch": epoch + 1,
            **{f"loss_{k}": v / n_batches for k, v in sums.items()},
            **{f"dice_{name}": d for name, d in zip(spec.classes, dice.tolist(), strict=True)},
            "lr": optimizer.param_groups[0]["lr"],
            "patches": len(refs),
            "seconds": round(time.perf_counter() - t0, 2),
            "peak_memory_bytes": int(peak),
            "processes": ranks.world,
        }
        _append_csv(log_path, row)
        _plot(log_path, out / "curves.png", spec.classes)
        if progress:
            shown = ", ".join(
                f"{name} {d:.3f}"
                for name, d in zip(spec.classes[1:], dice[1:].tolist(), strict=True)
            )
            tqdm.write(
                f"epoch {epoch + 1}: loss {row.get('loss_total', float('nan')):.4f}, val Dice {shown}, best {best:.3f} (epoch {best_epoch})"
            )
    dist.barrier(ranks)  # rank 0's last checkpoint is on disk before anyone reads it
    return out / "best.pt"


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
            from meunet.data.sampling import channel_stats

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
    tmp = png.with_name(f".{png.name}.partial.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(png)
