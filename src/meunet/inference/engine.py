"""The window engine: window geometry, fusion, and a sink that takes the labels.

The method: ``docs/method.md``, *Sliding-window inference*. Every predictor
(validation during training, ``meunet predict``, the cascade's stages, Dask
blocks) runs :func:`run_windows`.

Windows of side P lie on the training sampler's grid
(:func:`meunet.data.sampling.grid_positions`: step ``P * (1 - overlap)``, P/2
at the paper's overlap, from 0 until one reaches the end; zero padding
beyond). Each window's central half-cube votes with weight 2, the rest with
weight 1. P may be a cube's side or one side per axis, (z, y, x)
(:mod:`meunet.data.patch_size`); each axis then has its own side and step. Fusion ``"vote"`` sums weighted one-hot votes (the paper's);
``"prob"`` sums weighted softmax probabilities. On ties the lower class wins.

The volume goes one row of windows (one z-start) at a time. Only that row's
input slab and accumulator are held, on the network's device; fusion and the
argmax run there, and only uint8 labels of the slices no later window can
reach come back to the host, to a sink: an in-memory array (:class:`ArraySink`)
or the resumable Zarr writer (:mod:`meunet.inference.sinks`). With ``threads`` the next
row's input is read and normalised in a background thread (through pinned
memory on CUDA) and finished slices are written by another, while the
network works; either thread's error is raised in the caller as the original
exception, after the slices already finished are written (so that a rerun
resumes after them) and never with the output marked complete.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meunet.data.patch_size import PatchSize, compact, patch_shape
from meunet.data.sampling import grid_positions
from meunet.data.volume import Volume
from meunet.errors import SettingError
from meunet.inference.sinks import Sink

FUSIONS = ("vote", "prob")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CPU_BATCH = 2  # batch_size="auto" on a CPU: today's default, fast enough and small
MAX_AUTO_BATCH = 8  # batch_size="auto" on a GPU: beyond this the GPU is busy anyway
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


# -- window geometry and settings ---------------------------------------------------------------


def centre_weights(patch: PatchSize) -> np.ndarray:
    """(Pz, Py, Px) weights: 2 in the central half along every axis, 1 elsewhere.

    ``patch`` is a cube's side or (z, y, x) sides (:mod:`meunet.data.patch_size`).
    """
    sides = patch_shape(patch)
    w = np.ones(sides, np.float32)
    centre = tuple(slice(p // 4, p // 4 + p // 2) for p in sides)
    w[centre] = 2.0
    return w


def window_step(patch: PatchSize, overlap: float) -> PatchSize:
    """Step between windows of ``patch`` overlapping by the fraction ``overlap`` (per axis for per-axis sides)."""
    if not 0.0 <= overlap < 1.0:
        raise SettingError(f"overlap must lie in [0, 1) (0.5: the paper's), got {overlap}")
    if isinstance(patch, int | np.integer):
        return max(1, round(patch * (1.0 - overlap)))
    steps = [max(1, round(p * (1.0 - overlap))) for p in patch_shape(patch)]
    return (steps[0], steps[1], steps[2])


def check_windows(
    patch: PatchSize, fusion: str, batch_size: int | str, overlap: float
) -> PatchSize:
    """Check the sliding-window settings a user chooses; return the step between windows.

    Every predictor calls this before it reads or writes anything.

    Raises:
        SettingError: naming the setting and the values it takes.
    """
    if fusion not in FUSIONS:
        raise SettingError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    whole = isinstance(batch_size, int | np.integer) and not isinstance(batch_size, bool)
    if batch_size != "auto" and (not whole or batch_size < 1):  # type: ignore[operator]
        raise SettingError(
            "batch size (windows per forward pass, or 'auto': from free GPU memory) must be a "
            f"whole number >= 1, got {batch_size!r}"
        )
    return window_step(compact(patch), overlap)


def vote_dtype(patch: PatchSize, step: PatchSize) -> np.dtype:
    """The smallest unsigned integer type that holds any voxel's weighted vote count.

    A voxel lies in at most ceil(P / step) windows along each axis, and each
    window votes with weight at most 2: at the paper's overlap that is 16
    (uint8); at ``--overlap 0.99`` with P = 40 it is 128000 (uint32).

    Example:
        >>> vote_dtype(64, 32), vote_dtype(32, 4), vote_dtype(40, 1)
        (dtype('uint8'), dtype('uint16'), dtype('uint32'))
    """
    most = 2 * int(
        np.prod([-(-p // s) for p, s in zip(patch_shape(patch), patch_shape(step), strict=True)])
    )
    return np.min_scalar_type(most)


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(0).astype(uint8)`` for a few classes, several times faster.

    A running maximum over the class axis; on ties the lower class wins, as
    with ``argmax``. :func:`_argmax` is the same on a tensor.
    """
    best = scores[0].copy()
    winner = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        winner[better] = c
        np.maximum(best, scores[c], out=best)
    return winner


def _argmax(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """:func:`argmax_classes` on the scores' device, along ``dim``, as uint8."""
    first = scores.select(dim, 0)
    best = first.clone()
    winner = torch.zeros(first.shape, dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[dim]):
        other = scores.select(dim, c)
        winner.masked_fill_(other > best, c)
        torch.maximum(best, other, out=best)
    return winner


def _vote_tensor_dtype(patch: PatchSize, step: PatchSize) -> torch.dtype:
    """A torch type for :func:`vote_dtype`'s counts (torch's uint16/uint32 lack arithmetic)."""
    return {1: torch.uint8, 2: torch.int32}.get(vote_dtype(patch, step).itemsize, torch.int64)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"``: bf16 autocast on a CUDA GPU that has it, else fp16; fp32 elsewhere.

    Raises:
        SettingError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise SettingError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


def auto_batch(per_window: int, free: int, windows_per_row: int) -> int:
    """Windows per forward pass that use at most half of ``free`` bytes of GPU memory.

    ``per_window``: the peak memory of a forward pass of one window. No more
    than :data:`MAX_AUTO_BATCH` (beyond it the GPU is busy anyway) nor than a
    row of windows holds.

    Example:
        >>> auto_batch(1 << 30, 10 << 30, 49), auto_batch(1 << 30, 1 << 30, 49)
        (5, 1)
    """
    fits = int(free // 2 // max(per_window, 1))
    return max(1, min(fits, MAX_AUTO_BATCH, windows_per_row))


def resolve_batch(
    batch_size: int | str,
    model: torch.nn.Module,
    patch: PatchSize,
    channels: tuple[int, int],
    device: torch.device,
    precision: str,
    windows_per_row: int,
) -> int:
    """``batch_size``, or for ``"auto"`` one measured from a forward pass and free GPU memory."""
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda":
        return CPU_BATCH
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    sides = patch_shape(patch)
    x = torch.zeros(1, channels[0], *sides, device=device)
    e = torch.zeros(1, channels[1], *sides, device=device) if channels[1] else None
    with torch.no_grad(), _autocast(precision, device):
        model(x, e)
    per_window = torch.cuda.max_memory_allocated(device) - base
    del x, e
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return auto_batch(per_window, free, windows_per_row)


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channels:
    """A group of input channels, read slice range by slice range.

    ``labels``: stage-1 class maps (int16, -1 outside the volume), made
    one-hot on the device; otherwise an image (float32, 0 outside), normalised
    with ``stats`` when given.
    """

    read: tuple[Callable[[int, int], np.ndarray], ...]  # per channel: slices z0:z1
    shape: tuple[int, int, int]
    labels: bool = False
    stats: tuple[tuple[float, float], ...] | None = None

    @classmethod
    def volumes(
        cls,
        vols: Sequence[Volume],
        stats: Sequence[tuple[float, float]] | None = None,
        labels: bool = False,
    ) -> Channels:
        """Lazy volumes (one per channel, one grid)."""
        reads = tuple((lambda z0, z1, v=v: v[z0:z1]) for v in vols)
        return cls(reads, vols[0].shape, labels, None if stats is None else tuple(stats))

    @classmethod
    def array(cls, a: np.ndarray, labels: bool = False) -> Channels:
        """An in-memory (channels, z, y, x) array: a normalised image, or class maps."""
        reads = tuple((lambda z0, z1, c=c: a[c, z0:z1]) for c in range(a.shape[0]))
        return cls(reads, (a.shape[1], a.shape[2], a.shape[3]), labels)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int16 if self.labels else np.float32)

    @property
    def fill(self) -> float:
        return -1 if self.labels else 0.0

    def fill_slices(self, buf: np.ndarray, z0: int, z1: int) -> None:
        """Make ``buf[:, :z1 - z0]`` hold slices ``z0:z1`` (``fill`` outside the volume)."""
        depth, height, width = self.shape
        buf[:, : z1 - z0] = self.fill
        top = min(z1, depth)
        for c, read in enumerate(self.read):
            if top <= z0:
                break
            part = buf[c, : top - z0, :height, :width]
            part[...] = read(z0, top)
            if self.stats is not None:
                mean, std = self.stats[c]
                part -= mean
                part /= std


# -- the pipeline ------------------------------------------------------------------------------


def _pieces(rows: Sequence[int], patch: int, step: int) -> list[tuple[int, int]]:
    """Slice ranges to read, in order: each row's new slices, at most ``step`` at a time."""
    out, pos = [], rows[0]
    for z in rows:
        while pos < z + patch:
            n = min(step, z + patch - pos)
            out.append((pos, pos + n))
            pos += n
    return out


class _Reader:
    """Reads the pieces in order, in a background thread or (``threads`` off) when asked."""

    def __init__(
        self,
        groups: Sequence[Channels],
        pieces: Sequence[tuple[int, int]],
        plane: tuple[int, int],
        depth: int,
        device: torch.device,
        threads: bool,
    ) -> None:
        self.groups, self.pieces, self.device = groups, list(pieces), device
        pin = device.type == "cuda"
        self.free: queue.Queue = queue.Queue()
        for _ in range(2 if threads and pin else 1):  # on a CPU one piece ahead is enough
            shapes = [(len(g.read), depth, *plane) for g in groups]
            bufs = [torch.empty(s, dtype=_torch_dtype(g.dtype), pin_memory=pin)
                    for s, g in zip(shapes, groups, strict=True)]  # fmt: skip
            self.free.put((bufs, None))
        self.ready: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.next = 0
        if threads and self.pieces:
            self.thread = threading.Thread(target=self._loop, name="meunet-reader", daemon=True)
            self.thread.start()

    def _fill(self, index: int, bufs: list[torch.Tensor], event: Any) -> tuple:
        if event is not None:
            event.synchronize()  # the last copy out of these buffers is done
        z0, z1 = self.pieces[index]
        for g, buf in zip(self.groups, bufs, strict=True):
            g.fill_slices(buf.numpy(), z0, z1)
        return z0, z1, bufs

    def _loop(self) -> None:
        try:
            for i in range(len(self.pieces)):
                item = self.free.get()
                if self.stop.is_set():
                    return
                self.ready.put(self._fill(i, *item))
        except BaseException as e:  # handed to the caller, raised there
            self.ready.put(e)

    def get(self) -> tuple[int, int, list[torch.Tensor]]:
        """The next piece: its slice range and buffers (hand them back with :meth:`release`)."""
        if self.thread is None:
            self.next += 1
            return self._fill(self.next - 1, *self.free.get())
        item = self.ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, bufs: list[torch.Tensor]) -> None:
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self.free.put((bufs, event))

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.free.put(None)  # wakes a reader waiting for buffers
            self.thread.join()


class _Writer:
    """Hands finished labels to the sink, in order, in a background thread or at once."""

    def __init__(self, sink: Sink, threads: bool) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = None
        if threads:
            self.thread = threading.Thread(target=self._loop, name="meunet-writer", daemon=True)
            self.thread.start()

    def _write(self, lo: int, hi: int, labels: torch.Tensor, event: Any) -> None:
        if event is not None:
            event.synchronize()  # the copy to the host is done
        self.sink.write(lo, hi, labels.numpy())

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error, only drain (the caller is told)
                try:
                    self._write(*item)
                except BaseException as e:
                    self.error = e

    def put(self, lo: int, hi: int, labels: torch.Tensor, event: Any) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self._write(lo, hi, labels, event)
        else:
            self.queue.put((lo, hi, labels, event))

    def finish(self) -> None:
        """Wait for every write handed over; raise the writer's error, if any."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


#: On a CPU the slabs and the accumulator are worked on through NumPy views of their memory:
#: NumPy's single-threaded kernels beat torch's parallel elementwise ones 3x on 2 busy cores
#: (the network keeps torch's threads). Tests turn this off to run the GPU's kernels on a CPU.
NUMPY_ON_CPU = True


class _Accumulator:
    """The fused scores of one row of windows, (classes, Pz, y, x), on the device."""

    def __init__(
        self, classes: int, patch: PatchSize, plane: tuple[int, int], step: PatchSize,
        vote: bool, device: torch.device,
    ) -> None:  # fmt: skip
        self.patch, self.vote = patch_shape(patch), vote
        self.numpy = device.type == "cpu" and NUMPY_ON_CPU
        dtype = _vote_tensor_dtype(patch, step) if vote else torch.float32
        self.acc = torch.zeros((classes, self.patch[0], *plane), dtype=dtype, device=device)
        self.weights = torch.from_numpy(centre_weights(patch)).to(device, dtype)
        self.class_ids = torch.arange(classes, device=device).view(classes, 1, 1, 1)
        self.identity = np.eye(classes, dtype=self.weights.cpu().numpy().dtype)

    def add(self, logits: torch.Tensor, group: Sequence[tuple[int, int]]) -> None:
        """Add the weighted votes (or probabilities) of a batch of windows at ``group``'s (y, x)."""
        _, py, px = self.patch
        if self.vote and self.numpy:  # the winner's column of the identity, times the weights
            acc, w = self.acc.numpy(), self.weights.numpy()
            for lg, (y, x) in zip(logits.numpy(), group, strict=True):
                votes = self.identity[:, argmax_classes(lg)]
                votes *= w
                acc[:, :, y : y + py, x : x + px] += votes
            return
        if self.vote:
            winner = _argmax(logits, 1).unsqueeze(1)
            scores = torch.where(winner == self.class_ids, self.weights, 0)
        else:
            scores = torch.softmax(logits, 1) * self.weights
        if self.numpy:
            acc = self.acc.numpy()
            for v, (y, x) in zip(scores.numpy(), group, strict=True):
                acc[:, :, y : y + py, x : x + px] += v
            return
        for v, (y, x) in zip(scores, group, strict=True):
            self.acc[:, :, y : y + py, x : x + px] += v

    def labels(self, lo: int, hi: int, height: int, width: int) -> torch.Tensor:
        """uint8 labels of slices ``lo:hi`` of the row (ties: the lower class)."""
        part = self.acc[:, lo:hi, :height, :width]
        if self.numpy:
            return torch.from_numpy(argmax_classes(part.numpy()))
        return _argmax(part)

    def shift(self, step: int) -> None:
        """Drop the first ``step`` slices (finished); the last ``step`` start at zero."""
        _shift(self.acc, step, self.numpy)
        self.acc[:, self.patch[0] - step :] = 0


def _shift(t: torch.Tensor, n: int, numpy: bool) -> None:
    """Move ``t[:, n:]`` to the front along dim 1 (overlapping ranges are copied first)."""
    keep = t.shape[1] - n
    if numpy:
        a = t.numpy()
        a[:, :keep] = a[:, n:]  # NumPy copies overlapping ranges safely
        return
    src = t[:, n:]
    t[:, :keep] = src.clone() if n < keep else src


def _crops(
    slab: torch.Tensor, group: Sequence[tuple[int, int]], patch: tuple[int, int, int], numpy: bool
) -> torch.Tensor:
    """The windows at ``group``'s (y, x) of a slab, stacked: (windows, channels, Pz, Py, Px)."""
    _, py, px = patch
    if numpy:
        a = slab.numpy()
        return torch.from_numpy(np.stack([a[:, :, y : y + py, x : x + px] for y, x in group]))
    return torch.stack([slab[:, :, y : y + py, x : x + px] for y, x in group])


def _one_hot(labels: torch.Tensor, classes: int, numpy: bool) -> torch.Tensor:
    """(windows, n, P, P, P) class maps as (windows, n * classes, P, P, P) one-hot, branch-major.

    -1 (outside the volume) is all zero.
    """
    b, n, *size = labels.shape
    if numpy:
        onehot = np.eye(classes + 1, dtype=np.float32)[:, 1:]
        maps = onehot[labels.numpy() + 1].transpose(0, 1, 5, 2, 3, 4)
        return torch.from_numpy(maps.reshape(b, n * classes, *size))
    ids = torch.arange(classes, device=labels.device).view(1, 1, classes, 1, 1, 1)
    return (labels.unsqueeze(2) == ids).float().reshape(b, n * classes, *size)


@torch.no_grad()
def run_windows(
    model: torch.nn.Module,
    image: Channels,
    sink: Sink,
    patch: PatchSize,
    step: PatchSize,
    extra: Channels | None = None,
    fusion: str = "vote",
    batch_size: int | str = 2,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    threads: bool = True,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Predict every window of ``image``'s grid from ``sink.start`` on, fuse, and write labels.

    The network is called as ``model(x, e)`` (``e``: the stage-1 maps, or
    None) in whatever mode it is in, on ``device``, under ``precision``'s
    autocast. ``threads``: read ahead and write behind in background threads
    (off: the same labels, serially). ``progress`` is called with the number
    of windows of each forward pass.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    classes = model.cfg.num_classes
    depth, height, width = image.shape
    # patch and step: a cube's side or (z, y, x) sides (meunet.data.patch_size)
    sides, steps = patch_shape(patch), patch_shape(step)
    zs, ys, xs = (
        grid_positions(n, p, s) for n, p, s in zip(image.shape, sides, steps, strict=True)
    )
    plane = (ys[-1] + sides[1], xs[-1] + sides[2])
    patch, step = sides[0], steps[0]  # along z, the axis the rows advance on
    rows = [z for z in zs if z + patch > sink.start]
    windows = [(y, x) for y in ys for x in xs]
    n_extra = 0 if extra is None else len(extra.read) * (classes if extra.labels else 1)
    batch = resolve_batch(batch_size, model, sides, (len(image.read), n_extra), device,
                          precision, len(windows))  # fmt: skip
    groups = [image] if extra is None else [image, extra]
    slabs = [torch.full((len(g.read), patch, *plane), g.fill, device=device,
                        dtype=_torch_dtype(g.dtype)) for g in groups]  # fmt: skip
    acc = _Accumulator(classes, sides, plane, steps, fusion == "vote", device)
    numpy = acc.numpy
    done_until = sink.start
    reader = _Reader(groups, _pieces(rows, patch, step) if rows else [], plane, step, device,
                     threads)  # fmt: skip
    writer = _Writer(sink, threads)
    try:
        for i, z in enumerate(rows):
            filled = 0
            if i:  # consecutive rows overlap by P - step slices: keep them
                for s in slabs:
                    _shift(s, step, numpy)
                filled = patch - step
            while filled < patch:
                z0, z1, bufs = reader.get()
                for s, b in zip(slabs, bufs, strict=True):
                    if numpy:
                        s.numpy()[:, filled : filled + z1 - z0] = b.numpy()[:, : z1 - z0]
                    else:
                        s[:, filled : filled + z1 - z0].copy_(b[:, : z1 - z0], non_blocking=True)
                reader.release(bufs)
                filled += z1 - z0
            for j in range(0, len(windows), batch):
                group = windows[j : j + batch]
                x = _crops(slabs[0], group, sides, numpy)
                e = None
                if extra is not None:
                    e = _crops(slabs[1], group, sides, numpy)
                    if extra.labels:
                        e = _one_hot(e, classes, numpy)
                with _autocast(precision, device):
                    logits = model(x, e)
                acc.add(logits.float(), group)
                if progress is not None:
                    progress(len(group))
            last = i == len(rows) - 1
            end = min(depth, z + patch) if last else min(depth, z + step)
            if end > done_until:
                lo = max(z, done_until)
                labels = acc.labels(lo - z, end - z, height, width)
                event = None
                if device.type == "cuda":  # through pinned memory; the writer waits for it
                    host = torch.empty(labels.shape, dtype=torch.uint8, pin_memory=True)
                    host.copy_(labels, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    labels = host
                writer.put(lo, end, labels, event)
                done_until = end
            acc.shift(step)
    except BaseException:
        reader.close()
        with contextlib.suppress(BaseException):
            writer.finish()  # the rows finished before the error are kept: a rerun resumes
        raise
    reader.close()
    writer.finish()
    sink.close()
