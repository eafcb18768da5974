"""Data-parallel training across processes with PyTorch DDP, launched by ``torchrun``.

``torchrun --nproc-per-node N -m meunet train ...`` starts N processes that
each hold the whole network. Every global batch of ``batch`` patches is cut
into N equal parts, one per process; DDP all-reduces (averages) the
gradients, so each optimizer step sees the same patches and the same
averaged gradient as one process stepping on ``batch`` patches split into N
micro-batches (``micro_batches=N``). Only rank 0 validates, logs, plots and
writes checkpoints; it tells the others the validation result, so that all
stop at the same epoch.

BatchNorm normalises each process's part with that part's statistics (as
micro-batches do); the running statistics used for validation are the
ranks' average (as micro-batches average theirs).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from meunet.errors import MeunetError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group and ends it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns this process's ranks and its device (``cuda:LOCAL_RANK`` on GPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise MeunetError(
                f"rank {rank}: local rank {local} but only {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:  # long timeout: rank 0 validates while the others wait
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(hours=6))
    return Ranks(rank, world, local, owns), device


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model DDP-wrapped when distributed (every parameter need not take part in each pass)."""
    if not ranks.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    # each rank keeps its own BatchNorm running statistics; `average_buffers` merges them
    keep_buffers = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    # a meU-net's two passes each leave some parameters out (level 1, one of the heads)
    meunet = getattr(model, "head_level2", None) is not None
    return ddp(model, device_ids=ids, find_unused_parameters=meunet, **keep_buffers)


def average_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Average the ranks' BatchNorm running statistics (before validating or saving).

    Each rank's running mean follows its own parts of the batches; their
    average is what averaging the parts' statistics at every step gives (the
    running mean's update is linear), which is what ``micro_batches`` does.
    """
    if not ranks.active:
        return
    for name, buf in unwrap(model).named_buffers():
        if buf.is_floating_point() and name.endswith(("running_mean", "running_var")):
            dist.all_reduce(buf)
            buf /= ranks.world


def unwrap(model: torch.nn.Module) -> Any:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def no_sync(model: torch.nn.Module) -> AbstractContextManager[Any]:
    """Accumulate gradients locally (a backward that is not the step's last)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def shard(refs: Sequence[T], batch: int, ranks: Ranks) -> list[T]:
    """This rank's share of an epoch: its ``batch / world`` patches of every global batch.

    With several processes the last, incomplete global batch is dropped, so
    that every process runs the same number of steps.
    """
    if not ranks.active:
        return list(refs)
    if batch % ranks.world:
        raise MeunetError(
            f"batch {batch} cannot be shared by {ranks.world} processes: make batch a multiple of --nproc-per-node"
        )
    part = batch // ranks.world
    full = len(refs) // batch * batch
    return [refs[i] for i in range(full) if (i % batch) // part == ranks.rank]


def broadcast(value: T, ranks: Ranks) -> T:
    """Rank 0's ``value`` on every rank."""
    if not ranks.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(values: dict[str, float], ranks: Ranks, device: torch.device) -> dict[str, float]:
    """The mean of each value over the ranks (for logging the global loss)."""
    if not ranks.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ranks.world for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(ranks: Ranks) -> None:
    if ranks.active:
        dist.barrier()


def finish(ranks: Ranks) -> None:
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()
