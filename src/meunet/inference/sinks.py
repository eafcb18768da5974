"""Where the window engine's labels go: an in-memory array, or the resumable Zarr writer.

The engine (:func:`meunet.inference.engine.run_windows`) hands a sink the
uint8 labels of finished slices in order, from the sink's ``start``, and
closes it once every slice is in. The Zarr writer records how far it got
(``meunet.done_until``) with each write and marks the output complete only
when closed; :func:`open_output` resumes an unfinished output of the same
prediction (:func:`signature`) and starts any other again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import zarr

from meunet.data.identity import volume_identity
from meunet.data.io.ownership import is_owned, make_folder, remove_owned
from meunet.data.io.zarr_io import WRITE_EVERY_CHUNK, geometry_attributes
from meunet.data.volume import Volume


class Sink(Protocol):
    """Where the labels go: slices in order from ``start``, then :meth:`close` when all are in."""

    start: int  # the first slice still to write (a resumed output's)

    def write(self, lo: int, hi: int, labels: np.ndarray) -> None: ...

    def close(self) -> None: ...


class ArraySink:
    """Labels held in memory, in ``array``."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.array = np.zeros(shape, np.uint8)
        self.start = 0

    def write(self, lo: int, hi: int, labels: np.ndarray) -> None:
        self.array[lo:hi] = labels

    def close(self) -> None:
        pass


class ZarrSink:
    """The resumable Zarr writer: each write records how far it got (``meunet.done_until``).

    The output is marked complete by :meth:`close` alone; its reader refuses
    an incomplete one.
    """

    def __init__(self, array: Any, signature: str, start: int = 0) -> None:
        self.array, self.signature, self.start = array, signature, start

    def _state(self, done_until: int, complete: bool = False) -> None:
        state = {"complete": complete, "done_until": done_until, "signature": self.signature}
        self.array.attrs["meunet"] = {**state, "every_chunk": True} if complete else state

    def write(self, lo: int, hi: int, labels: np.ndarray) -> None:
        self.array[lo:hi] = labels
        self._state(hi)

    def close(self) -> None:
        self._state(self.array.shape[0], complete=True)


def model_digest(model: torch.nn.Module) -> str:
    """A hash of the network's weights."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def signature(
    weights: str, inputs: Sequence[Volume], extra: Sequence[Volume], settings: dict[str, Any]
) -> str:
    """What makes two runs the same prediction (for resuming).

    The network's weights (a hash), the settings, and each input's path,
    shape, type and content identity
    (:func:`~meunet.data.identity.volume_identity`): an input replaced by
    another of the same name and shape is another prediction.
    """
    meta = {
        "weights": weights,
        "inputs": [(v.path, v.shape, str(v.dtype), volume_identity(v)) for v in inputs],
        "extra": [(v.path, v.shape, volume_identity(v)) for v in extra],
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def open_output(
    path: str,
    shape: tuple[int, int, int],
    z_chunk: int,
    like: Volume,
    sig: str,
    work: str | Path | None = None,
) -> tuple[Any, int]:
    """The output array and the first slice still to write.

    An unfinished output of meunet's with the same signature and shape is
    resumed; anything else of meunet's there is replaced (callers refuse
    other paths first). The new array takes the geometry (spacing, origin,
    direction) of the input ``like`` and z-chunks of ``z_chunk`` slices.
    ``work``: a folder that belongs to this output (Dask's block markers),
    kept with it and removed with it.
    """
    if os.path.isdir(path) and is_owned(path):
        try:
            arr = zarr.open_array(path, mode="r+").with_config(WRITE_EVERY_CHUNK)
            state = dict(arr.attrs).get("meunet", {})
            if state.get("signature") == sig and tuple(arr.shape) == shape:
                if work is not None:
                    make_folder(work, "predict")
                if state.get("complete"):  # the same prediction again, from the start
                    arr.attrs["meunet"] = {"complete": False, "done_until": 0, "signature": sig}
                    return arr, 0
                return arr, int(state.get("done_until", 0))
        except Exception:  # another prediction's, or damaged: start again
            pass
    remove_owned(path)
    if work is not None:
        remove_owned(work)
        make_folder(work, "predict")
    make_folder(path, "predict")  # marked before any chunk: an interrupted run stays ours
    chunks = (min(z_chunk, shape[0]), min(128, shape[1]), min(128, shape[2]))
    arr = zarr.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        attributes={
            **geometry_attributes(**like.geometry()),
            **({} if like.spacing_known else {"spacing_known": False}),  # assumed stays assumed
            "meunet": {"complete": False, "done_until": 0, "signature": sig},
        },
        dimension_names=("z", "y", "x"),
        config=WRITE_EVERY_CHUNK,
    )
    return arr, 0
