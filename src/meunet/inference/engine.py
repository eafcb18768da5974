"""The window engine: windows run through the network, fused, and handed to a sink.

The method: ``docs/method.md``, *Sliding-window inference*. Every predictor
(validation during training, ``meunet predict``, the cascade's stages, Dask
blocks) runs :func:`run_windows`. The windows' geometry (the sampler's grid,
centre weights, per-axis sides) and the settings (fusion, precision, batch)
are :mod:`meunet.inference.windows`'. Fusion ``"vote"`` sums weighted one-hot votes (the paper's);
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

from meunet.data.patch_size import PatchSize, patch_shape
from meunet.data.sampling import grid_positions
from meunet.data.volume import Volume
from meunet.inference.sinks import Sink
from meunet.inference.windows import (
    _argmax,
    _autocast,
    _vote_tensor_dtype,
    argmax_classes,
    centre_weights,
    resolve_batch,
    resolve_precision,
)

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


def phase(name: str) -> contextlib.AbstractContextManager:
    """A named range for ``torch.profiler`` (``benchmarks/profile_predict.py``); free otherwise."""
    return torch.profiler.record_function(f"meunet.{name}")


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
    with phase("batch-size"):
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
                with phase("read-wait"):
                    z0, z1, bufs = reader.get()
                with phase("slab"):
                    for s, b in zip(slabs, bufs, strict=True):
                        if numpy:
                            s.numpy()[:, filled : filled + z1 - z0] = b.numpy()[:, : z1 - z0]
                        else:
                            s[:, filled : filled + z1 - z0].copy_(
                                b[:, : z1 - z0], non_blocking=True
                            )
                    reader.release(bufs)
                filled += z1 - z0
            for j in range(0, len(windows), batch):
                group = windows[j : j + batch]
                with phase("crops"):
                    x = _crops(slabs[0], group, sides, numpy)
                    e = None
                    if extra is not None:
                        e = _crops(slabs[1], group, sides, numpy)
                        if extra.labels:
                            e = _one_hot(e, classes, numpy)
                # the first pass apart: it loads the device's kernels and picks their algorithms
                with phase("forward" if i or j else "first-forward"), _autocast(precision, device):
                    logits = model(x, e)
                with phase("fuse"):
                    acc.add(logits.float(), group)
                if progress is not None:
                    progress(len(group))
            last = i == len(rows) - 1
            end = min(depth, z + patch) if last else min(depth, z + step)
            if end > done_until:
                lo = max(z, done_until)
                with phase("labels"):
                    labels = acc.labels(lo - z, end - z, height, width)
                    event = None
                    if device.type == "cuda":  # through pinned memory; the writer waits for it
                        host = torch.empty(labels.shape, dtype=torch.uint8, pin_memory=True)
                        host.copy_(labels, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record()
                        labels = host
                with phase("write-handoff"):
                    writer.put(lo, end, labels, event)
                done_until = end
            with phase("shift"):
                acc.shift(step)
    except BaseException:
        reader.close()
        with contextlib.suppress(BaseException):
            writer.finish()  # the rows finished before the error are kept: a rerun resumes
        raise
    with phase("finish"):
        reader.close()
        writer.finish()
        sink.close()
