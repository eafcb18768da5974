"""Prediction: :func:`predict` with :class:`PredictOptions`, here or on a Dask cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meunet.api.types import VolumeLike
from meunet.data.patch_size import PatchSize, format_patch, parse_patch
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.training.config import TrainConfig
from meunet.training.run import CascadeRun, Run


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict` runs; every field has the command line's default.

    ``batch_size`` and ``precision`` are handed to the predictor only when
    set (``batch_size="auto"`` and ``precision`` need a predictor that takes
    them).
    """

    patch: PatchSize = 0  # window, a side or (z, y, x); 0: the checkpoint's
    fusion: str | None = None  # vote (the paper's) or prob; None: the checkpoint's
    batch_size: int | str | None = None  # windows per forward pass; None: the predictor's (2)
    precision: str | None = None  # auto | bf16 | fp16 | fp32; None: the predictor's default
    overlap: float = 0.5  # fraction of a window its neighbour overlaps
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    stage1: tuple[str | Path, ...] = ()  # stage-1 label volumes for a stage-2 checkpoint
    max_memory: str | int | None = None  # budget ("2GB"): lowers batch_size to fit, or refuses
    executor: Any = (
        "local"  # "local" (this process), "dask", "dask:local:N", "dask:tcp://...", or a Client
    )
    block_depth: int = 0  # Dask: z-slices per block core (0: about 4 blocks per worker)
    overwrite: bool = False  # replace an output meunet did not write (never an input)
    spacing: tuple[float, float, float] | None = None  # the inputs' voxel size, over their files'
    resample_back: bool = False  # predict at the training voxel size, write at the input's
    progress: bool = True

    def with_(self, **changes: Any) -> PredictOptions:
        return dataclasses.replace(self, **changes)


def predict(
    model_or_manifest: str | Path | Run | CascadeRun,
    inputs: VolumeLike | Sequence[VolumeLike],
    output: str | Path,
    *,
    options: PredictOptions | None = None,
    **changes: Any,
) -> Path:
    """Segment one volume (any size, streamed) into ``output``; return the output path.

    Args:
        model_or_manifest: A checkpoint (``best.pt``), a cascade's ``cascade.json``
            (or the :class:`Run` / :class:`CascadeRun` that holds them).
        inputs: The volume, or one volume per input channel (paths or volumes).
        output: ``.zarr`` (written as it goes, resumable), ``.ome.zarr``, or any
            other format meunet writes.
        options: :class:`PredictOptions`; ``changes`` override its fields,
            e.g. ``predict(m, x, y, executor="dask:local:4", batch_size=4)``.

    Example:
        >>> meunet.predict("runs/c/cascade.json", "scan.zarr", "labels.zarr",
        ...                executor="dask:local:4")  # doctest: +SKIP
    """
    opts = (options or PredictOptions()).with_(**changes)
    if isinstance(model_or_manifest, CascadeRun):
        model_or_manifest = model_or_manifest.manifest_path
    elif isinstance(model_or_manifest, Run):
        model_or_manifest = model_or_manifest.best
    model = Path(model_or_manifest)
    cascade = model.suffix == ".json"
    paths = [inputs] if isinstance(inputs, str | Path | Volume) else list(inputs)
    if not paths:
        raise MeunetError("predict: give at least one input volume")
    if cascade and opts.stage1:
        raise MeunetError(f"{model}: a cascade.json makes its own stage-1 maps; drop stage1")
    if cascade and opts.patch:
        raise MeunetError(f"{model}: a cascade.json uses each stage's own window; drop patch")
    if opts.patch:  # a side, or (z, y, x) sides, as a list or "16,64,64" too
        opts = opts.with_(patch=parse_patch(opts.patch, "patch"))
    if opts.fusion is None:
        opts = opts.with_(fusion=trained_fusion(model))
    if opts.spacing is not None:  # e.g. a dataset spec's `spacing:`: the output takes it too
        if _dask_address(opts.executor) is not None:
            raise MeunetError(
                "spacing with a Dask executor: the workers read each file's own voxel size; "
                "write the scan with the right one first (`meunet convert --spacing Z Y X`)"
            )
        from meunet.data.io import open_volume

        paths = [
            open_volume(p.path if isinstance(p, Volume) else p, spacing=tuple(opts.spacing))
            for p in paths
        ]
    if opts.resample_back:
        from meunet.inference.resampled import predict_resampled

        return predict_resampled(model, _open_inputs(paths), output, opts, predict)
    if str(output).rstrip("/").endswith(".ome.zarr"):
        return _predict_ome(model, paths, output, opts)
    dask = _dask_address(opts.executor)
    if dask is not None:
        return _predict_dask(model, cascade, paths, output, opts, dask)
    return _predict_here(model, cascade, paths, output, opts)


def trained_fusion(model: str | Path) -> str:
    """The fusion a checkpoint was trained to be predicted with: its config's ``inference.fusion``.

    A cascade.json gives its stage 2's; a checkpoint or manifest from before
    the setting was recorded gives ``vote``, the paper's.
    """
    model = Path(model)
    if model.suffix == ".json":
        from meunet.training.run import CascadeManifest

        cfg = CascadeManifest.read(model).stage2.config
        return cfg.fusion if cfg is not None else "vote"
    from meunet.models import load_checkpoint

    return TrainConfig.from_checkpoint(load_checkpoint(model)).fusion


def _predict_ome(
    model: Path, paths: Sequence[VolumeLike], output: str | Path, opts: PredictOptions
) -> Path:
    """An OME-Zarr output: predicted into a plain Zarr beside it, then written as NGFF.

    The group carries the inputs' spacing as its scale and their origin as
    its translation (:class:`~meunet.data.io.ZarrSlabWriter`), so viewers
    place the labels on the scan. The work store resumes like any prediction.
    """
    from meunet.data.io import open_volume, write_volume
    from meunet.data.io.ownership import prepare_output, remove_owned

    vols = _open_inputs(paths)
    target = str(output).rstrip("/")
    prepare_output(target, vols, opts.overwrite, folder=True)  # refuse before predicting
    store = f"{target}.partial.zarr"
    predict(model, vols, store, options=opts)
    write_volume(
        target, open_volume(store), overwrite=opts.overwrite, inputs=vols, **vols[0].geometry()
    )
    remove_owned(store)
    return Path(target)


def _dask_address(executor: Any) -> Any:
    """None for this process; else a Dask address (``local:N``, ``tcp://...``) or a Client."""
    if not isinstance(executor, str):
        return executor  # a distributed.Client
    if executor in ("local", "process"):
        return None
    if executor == "dask":
        return f"local:{max(1, os.cpu_count() or 1)}"
    if executor.startswith("dask:"):
        return executor.removeprefix("dask:")
    raise MeunetError(
        f"executor {executor!r}: use local, dask, dask:local:N or dask:tcp://SCHEDULER:PORT"
    )


def _engine_kwargs(fn: Callable[..., Any], opts: PredictOptions) -> dict[str, Any]:
    """``batch_size`` and ``precision``, passed only when set and only to a predictor that takes them."""
    given = {"batch_size": opts.batch_size, "precision": opts.precision}
    given = {k: v for k, v in given.items() if v is not None}
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in given.items():
        if key not in params and not takes_any:
            raise MeunetError(f"{key}={value!r}: this version of meunet's predictor has no {key}")
    if given.get("batch_size") == "auto":
        default = params.get("batch_size")
        if default is not None and default.annotation in ("int", int):
            raise MeunetError("batch_size='auto' needs a newer predictor; give a number")
    return given


def _open_inputs(paths: Sequence[VolumeLike]) -> list[Volume]:
    from meunet.data.io import open_volume

    return [p if isinstance(p, Volume) else open_volume(p) for p in paths]


def _predict_here(
    model_path: Path,
    cascade: bool,
    paths: Sequence[VolumeLike],
    output: str | Path,
    opts: PredictOptions,
) -> Path:
    from meunet.device import resolve_device

    device = resolve_device(opts.device)
    inputs = _open_inputs(paths)
    if cascade:
        from meunet.inference.cascade import predict_cascade
        from meunet.training.run import CascadeManifest

        with contextlib.suppress(MeunetError, OSError):  # a bad manifest: predict_cascade says why
            manifest = CascadeManifest.read(model_path)
            stages = [(f"stage-1 branch {i + 1}", e) for i, e in enumerate(manifest.stage1)]
            for what, entry in [*stages, ("stage 2", manifest.stage2)]:
                shape = tuple(-(-n // entry.downsample) for n in inputs[0].shape)
                _warn_thin(shape, {f"{what}'s window": entry.infer_patch})

        if opts.max_memory:
            raise MeunetError("max_memory applies to a single network; give batch_size instead")
        return predict_cascade(
            model_path, inputs, output, fusion=opts.fusion, device=device,
            progress=opts.progress, overlap=opts.overlap, overwrite=opts.overwrite,
            **_engine_kwargs(predict_cascade, opts),
        )  # fmt: skip
    from meunet.inference.stream import predict_volume
    from meunet.models import load_checkpoint, load_model
    from meunet.training.config import checkpoint_window

    net = load_model(model_path, map_location=device)
    patch = opts.patch or checkpoint_window(load_checkpoint(model_path))  # validated window
    _warn_thin(inputs[0].shape, {"window": patch})
    extra = _open_inputs(opts.stage1)
    if opts.max_memory:
        opts = opts.with_(batch_size=_fit_batch(net, inputs, extra, patch, opts))
    return predict_volume(
        net, inputs, output, patch, extra, fusion=opts.fusion, device=device,
        progress=opts.progress, overlap=opts.overlap, overwrite=opts.overwrite,
        **_engine_kwargs(predict_volume, opts),
    )  # fmt: skip


def _warn_thin(shape: Sequence[int], sizes: Mapping[str, PatchSize]) -> None:
    """Say on stderr when a prediction window is thicker than the volume along an axis."""
    import sys

    from meunet.data.patch_size import fitting_patch, patch_shape, thin_axes

    for what, size in sizes.items():
        thin = thin_axes(shape, size)
        if thin:
            axes = ", ".join(f"{axis} {n} < {p}" for axis, n, p in thin)
            print(
                f"warning: predict: the {what} {format_patch(size)} is larger than the volume "
                f"{'x'.join(map(str, shape))} along {axes}; the rest of each window is zero "
                f"padding. A per-axis window that fits: --patch "
                + " ".join(map(str, patch_shape(fitting_patch([shape], size)))),
                file=sys.stderr,
                flush=True,
            )


def _fit_batch(
    net: Any,
    inputs: Sequence[Volume],
    extra: Sequence[Volume],
    patch: PatchSize,
    opts: PredictOptions,
) -> int:
    """The largest batch size up to ``opts.batch_size`` (default 2) whose estimate fits ``max_memory``."""
    from meunet.inference.stream import estimate_memory
    from meunet.memory import format_bytes, parse_bytes

    if opts.batch_size == "auto":
        raise MeunetError("give max_memory or batch_size='auto', not both")
    budget = opts.max_memory if isinstance(opts.max_memory, int) else parse_bytes(opts.max_memory)  # type: ignore[arg-type]
    shape = inputs[0].shape

    def need(b: int) -> int:
        return estimate_memory(net, shape, patch, b, opts.fusion, len(inputs), len(extra))

    batch = int(opts.batch_size or 2)
    while batch > 1 and need(batch) > budget:
        batch -= 1
    if need(batch) > budget:
        raise MeunetError(
            f"predicting {shape} with {format_patch(patch)} windows needs about {format_bytes(need(batch))} "
            f"beyond the interpreter, over --max-memory {opts.max_memory}; use a smaller --patch"
        )
    return batch


@contextmanager
def _client(address: Any) -> Iterator[Any]:
    if not isinstance(address, str):
        yield address
        return
    from meunet.inference.blocks import connect

    with connect(address) as client:
        yield client


def _predict_dask(
    model_path: Path,
    cascade: bool,
    paths: Sequence[VolumeLike],
    output: str | Path,
    opts: PredictOptions,
    address: Any,
) -> Path:
    from meunet.inference.blocks import predict_cascade_dask, predict_dask

    if opts.max_memory:
        raise MeunetError(
            "--max-memory applies to a single process; with --dask size the workers instead"
        )
    files = [p.path if isinstance(p, Volume) else p for p in paths]
    if not cascade:
        from meunet.data.io import open_volume
        from meunet.models import load_checkpoint
        from meunet.training.config import checkpoint_window

        with open_volume(files[0]) as first:
            window = opts.patch or checkpoint_window(load_checkpoint(model_path))
            _warn_thin(first.shape, {"window": window})
    kw = dict(fusion=opts.fusion, device=opts.device, overlap=opts.overlap,
              block_depth=opts.block_depth, progress=opts.progress)  # fmt: skip
    with _client(address) as client:
        if cascade:
            kw.update(_engine_kwargs(predict_dask, opts))  # forwarded to predict_dask
            return predict_cascade_dask(
                model_path, files, output, client, overwrite=opts.overwrite, **kw
            )
        return predict_dask(
            model_path, files, output, client, opts.patch, list(opts.stage1),
            overwrite=opts.overwrite, **kw, **_engine_kwargs(predict_dask, opts),
        )  # fmt: skip
