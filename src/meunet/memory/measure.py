"""Measure the peak memory of real training steps, in a fresh subprocess.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` over one training
step. On CPU it is its counterpart, the peak of live tensor bytes during the
step: the bytes of every tensor alive when the step starts (weights,
optimizer state, the batch) plus the highest point reached by the running
sum of the allocations and frees that ``torch.profiler`` records with
``profile_memory=True``. It repeats exactly from run to run.

Reported beside it, for information:

- the bytes saved for backward (``saved_tensors_hooks``, each storage counted
  once): a lower bound that overstates what checkpointing saves, since
  checkpointed blocks are recomputed in backward;
- the subprocess's peak RSS (noisy with the default allocator; run with
  ``MALLOC_MMAP_THRESHOLD_=65536``, as :func:`measure` does, it tracks the
  tensor peak within a few tens of MiB).

The step measured is the second one: the first creates the optimizer state.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from meunet.data.patch_size import PatchSize, format_patch, parse_patch, patch_shape
from meunet.errors import MeunetError, SettingError

DIVISOR = 16  # 2^(levels-1) for the paper's 5-level network


@dataclass(frozen=True)
class MemoryConfig:
    """One training configuration to measure.

    ``patch`` is the standard patch P, a cube's side or (z, y, x) sides; a
    meU-net also takes the expanded patch ``expanded`` (k * P per axis rounded
    to a multiple of 16, which the network would pad to anyway).
    """

    model: str = "meunet"  # unet | meunet | cascade-post | cascade-pre
    patch: PatchSize = 64  # standard patch P: a side, or (z, y, x) sides
    k: float = 1.5  # expansion factor (meunet only)
    expanded_patch: PatchSize = 0  # explicit expanded patch, overriding k (0: from k)
    batch: int = 2  # training's default (TrainConfig.batch)
    amp: bool = False  # CUDA only
    checkpointing: bool = False
    device: str = "cpu"
    in_channels: int = 1
    num_classes: int = 3
    extra_channels: int = 0  # stage-2 only; default 2 branches x classes
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16)
    steps: int = 2  # the last one is measured
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", parse_patch(self.patch))
        object.__setattr__(self, "expanded_patch", parse_patch(self.expanded_patch, "expanded"))
        if min(patch_shape(self.patch)) < 1 or self.batch < 1 or self.steps < 2:
            raise SettingError("need patch >= 1, batch >= 1 and steps >= 2")
        if self._variant().deep_head and not 1.0 <= self.k <= 4.0:
            raise SettingError(f"k must lie in [1, 4], got {self.k}")
        if self.amp and not self.device.startswith("cuda"):
            raise SettingError("AMP (float16 autocast) is measured on CUDA only; drop --amp on CPU")

    def _variant(self) -> Any:
        from meunet.models import ModelVariant, variant

        try:
            return variant(self.model)
        except SettingError:  # reported where the network is built, with the measurement
            return ModelVariant(deep_head=False, takes_extra=False)

    @property
    def expanded(self) -> PatchSize | None:
        """The expanded patch (a network with a deep head): sides that are multiples of 16."""
        from meunet.training.config import expanded_patch

        if not self._variant().deep_head:
            return None
        if self.expanded_patch:
            return self.expanded_patch
        return expanded_patch(self.patch, self.k)

    @property
    def extra(self) -> int:
        """Stage-1 map channels a stage-2 network is measured with (default 2 branches x classes)."""
        if self.extra_channels:
            return self.extra_channels
        return 2 * self.num_classes if self._variant().takes_extra else 0

    @classmethod
    def from_train(
        cls, cfg: Any, in_channels: int = 1, num_classes: int = 3, **changes: Any
    ) -> MemoryConfig:
        """The training step a :class:`~meunet.training.config.TrainConfig` runs.

        ``device: auto`` is resolved here, and AMP counts on CUDA only, as in
        training; ``changes`` override fields (e.g. ``patch`` while planning).
        """
        from meunet.device import resolve_device

        device = str(resolve_device(cfg.device))
        patch = changes.pop("patch", cfg.patch)
        if isinstance(patch, str):
            raise SettingError(
                f"patch: {patch} is chosen from a dataset: give a patch to measure "
                "(--patch 16 64 64), or the dataset (meunet plan --data DATASET.yaml)"
            )
        base = cls(
            model=cfg.model,
            patch=patch,
            k=cfg.k,
            batch=cfg.batch,
            amp=cfg.amp and device.startswith("cuda"),
            checkpointing=cfg.checkpointing,
            device=device,
            in_channels=in_channels,
            num_classes=num_classes,
            encoder_channels=tuple(cfg.encoder_channels),
            decoder_channels=tuple(cfg.decoder_channels),
            seed=cfg.seed,
        )
        return replace(base, **changes) if changes else base

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("notes")
        return json.dumps(d)

    @staticmethod
    def from_json(text: str) -> MemoryConfig:
        d = json.loads(text)
        for key in ("patch", "expanded_patch"):
            d[key] = parse_patch(d[key], key)
        d["encoder_channels"] = tuple(d["encoder_channels"])
        d["decoder_channels"] = tuple(d["decoder_channels"])
        return MemoryConfig(**d)


def _build(cfg: MemoryConfig) -> tuple[Any, Any, Any, Any]:
    import torch
    import torch.nn.functional as F

    from meunet.models import create_model
    from meunet.training.loss import SegLoss
    from meunet.training.step import Batch

    torch.manual_seed(cfg.seed)
    extra = cfg.extra
    model = create_model(
        cfg.model,
        in_channels=cfg.in_channels,
        num_classes=cfg.num_classes,
        extra_channels=extra,
        encoder_channels=cfg.encoder_channels,
        decoder_channels=cfg.decoder_channels,
        checkpointing=cfg.checkpointing,
    ).to(cfg.device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=9e-4)

    def patches(size: PatchSize, halve_label: bool) -> tuple[Any, Any, Any]:
        side = patch_shape(size)
        label_side = tuple(n // 2 for n in side) if halve_label else side
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(cfg.batch, cfg.in_channels, *side, generator=g)
        y = torch.randint(0, cfg.num_classes, (cfg.batch, *label_side), generator=g)
        e = None
        if extra:
            maps = torch.randint(
                0, cfg.num_classes, (cfg.batch, extra // cfg.num_classes, *side), generator=g
            )
            e = (
                F.one_hot(maps, cfg.num_classes)
                .movedim(-1, 2)
                .reshape(cfg.batch, extra, *side)
                .float()
            )
        return x, y, e

    x, y, e = patches(cfg.patch, False)
    batch = Batch(image=x, label=y, extra=e)
    if cfg.expanded:
        xe, ye, ee = patches(cfg.expanded, True)
        batch = Batch(x, y, xe, ye, e, ee)
    batch = batch.to(cfg.device)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp else None
    return model, optimizer, batch, (SegLoss(), scaler)


def _live_bytes(model: Any, optimizer: Any, batch: Any) -> int:
    """Bytes of the distinct storages alive between steps: weights, grads, optimizer state, batch."""
    import torch

    seen: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()

    for t in model.state_dict(keep_vars=True).values():
        add(t)
        add(t.grad)
    for state in optimizer.state.values():
        for t in state.values():
            add(t)
    for t in batch.__dict__.values():
        add(t)
    return sum(seen.values())


def _profiled_peak(step: Any) -> int:
    """Highest running sum of CPU allocations minus frees during ``step()``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        (ev.start_ns(), ev.nbytes())
        for ev in prof.profiler.kineto_results.events()
        if ev.name() == "[memory]" and ev.device_type() == torch.autograd.DeviceType.CPU
    ]
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    return peak


def measure_here(cfg: MemoryConfig) -> dict[str, Any]:
    """Measure in this process (use :func:`measure` for a clean, comparable figure)."""
    import torch

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model, optimizer, batch, (loss_fn, scaler) = _build(cfg)
    from meunet.training.step import train_step

    def step() -> None:
        train_step(model, optimizer, batch, loss_fn, scaler)

    cuda = cfg.device.startswith("cuda")
    for _ in range(cfg.steps - 1):
        step()
    saved = _saved_for_backward(model, batch, cfg.amp)  # before the CUDA peak is reset
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _live_bytes(model, optimizer, batch) if not cuda else torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    if cuda:
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = base + _profiled_peak(step)
    seconds = time.perf_counter() - t0
    # a separate unprofiled step times the step without the profiler's overhead
    t1 = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    step_seconds = time.perf_counter() - t1
    return {
        "config": json.loads(cfg.to_json()),
        "expanded": cfg.expanded,
        "peak_bytes": int(peak),
        "between_steps_bytes": int(base),
        "saved_for_backward_bytes": int(saved),
        "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_start,
        "step_seconds": step_seconds,
        "profiled_step_seconds": seconds,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
    }


def _saved_for_backward(model: Any, batch: Any, amp: bool) -> int:
    """Bytes of the distinct storages autograd saves in the forward passes of a step."""
    import torch

    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        sizes[s.data_ptr()] = s.nbytes()
        return t

    total = 0
    autocast = torch.autocast(batch.image.device.type, dtype=torch.float16, enabled=amp)
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if batch.expanded_image is not None:
            out = model.forward_expanded(batch.expanded_image, batch.expanded_extra)
            total += sum(sizes.values())
            sizes.clear()
            del out
        out = model(batch.image, batch.extra)
        total = max(total, sum(sizes.values()))  # the two passes never hold their graphs at once
        del out
    model.zero_grad(set_to_none=True)
    return total


def measure(cfg: MemoryConfig, timeout: float | None = None) -> dict[str, Any]:
    """Measure one configuration in a fresh Python process; return the result dict.

    Raises:
        MeunetError: the step ran out of memory or failed (the message says which).
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, "-m", "meunet.memory.probe", cfg.to_json()],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        oom = "out of memory" in proc.stderr.lower() or proc.returncode in (-9, 137)
        what = "ran out of memory" if oom else f"failed (exit {proc.returncode})"
        size = cfg.patch if isinstance(cfg.patch, int) else format_patch(cfg.patch)
        raise MeunetError(
            f"measuring {cfg.model} patch {size} batch {cfg.batch} on {cfg.device} {what}: {tail}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
