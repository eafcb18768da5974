"""The workflow: train, train a cascade, predict, evaluate.

The command line, ``meunet demo`` and the benchmarks call these four
functions and nothing else of the workflow, so a script does exactly what a
command does::

    import meunet

    best = meunet.train("configs/cpu/meunet.yaml", "data/dataset.yaml", "runs/meunet")
    meunet.predict(best, "scan.zarr", "labels.zarr")
    print(meunet.evaluate("labels.zarr", "truth.zarr", data="data/dataset.yaml").table)

A configuration is a :class:`~meunet.training.config.TrainConfig`, a YAML
file (nested or flat) or a mapping; ``overrides`` are ``--set`` items
(``"sampler.patch=96"``). A dataset is a :class:`~meunet.data.spec.DatasetSpec`
or its ``dataset.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meunet.data.patch_size import PatchSize, format_patch, parse_patch
from meunet.data.spec import DatasetSpec
from meunet.data.volume import Volume
from meunet.errors import MeunetError
from meunet.training.config import TrainConfig
from meunet.training.run import CascadeRun, Run

__all__ = [
    "Evaluation",
    "PredictOptions",
    "evaluate",
    "predict",
    "train",
    "train_cascade",
]

ConfigLike = TrainConfig | str | Path | Mapping[str, Any] | None
DataLike = DatasetSpec | str | Path
VolumeLike = Volume | str | Path
PREDICTION_SUFFIXES = (".zarr", ".nii.gz", ".nii", ".nrrd", ".tif", ".h5", ".npy")


def load_training_config(config: ConfigLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a config object, YAML path or mapping, with ``--set`` items applied."""
    from meunet.training.config import load_config, override

    if isinstance(config, TrainConfig):
        return override(config, list(overrides))
    if isinstance(config, Mapping):
        return override(TrainConfig.from_dict(config), list(overrides))
    return load_config(config, list(overrides))


def _spec(data: DataLike) -> DatasetSpec:
    if isinstance(data, DatasetSpec):
        return data
    from meunet.data.spec import load_spec

    return load_spec(data)


def train(
    config: ConfigLike,
    data: DataLike,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    fold: int | None = None,
    progress: bool = True,
) -> Path:
    """Train one network; return its best checkpoint (``OUT/best.pt``).

    Args:
        config: Training settings (``configs/*.yaml``, a mapping, or a TrainConfig).
        data: The dataset: train and val splits, or ``folds`` with ``fold``.
        out: Run folder (:class:`~meunet.training.run.Run`): new, empty or meunet's.
        overrides: ``--set`` items, e.g. ``["optimisation.epochs=5"]``.
        resume: Continue exactly from ``OUT/last.pt``.
        fold: With a dataset of cross-validation folds: the fold validated on.
        progress: Show progress bars.
    """
    from meunet.training.folds import select_fold
    from meunet.training.loop import train as train_loop

    cfg = load_training_config(config, overrides)
    spec = select_fold(_spec(data), fold)
    return train_loop(cfg, spec, Run(out).folder, resume=resume, progress=progress)


def train_cascade(
    config: ConfigLike,
    data: DataLike,
    out: str | Path,
    *,
    mode: str = "post",
    overrides: Sequence[str] = (),
    fold: int | None = None,
    progress: bool = True,
) -> Path:
    """Train a whole cascade (stage-1 branches, their maps, stage 2); return its ``cascade.json``.

    Rerunning resumes: finished stages are reused (if made with the same
    settings and data), an interrupted one continues. ``mode``: ``post``
    (the paper's), ``pre`` or ``lowres``. The manifest is what
    :func:`predict` takes to run the whole cascade.
    """
    from meunet.training.cascade import train_cascade as train_stages
    from meunet.training.folds import select_fold

    base = load_training_config(config, overrides)
    spec = select_fold(_spec(data), fold)
    run = CascadeRun(out)
    train_stages(spec, run.folder, mode=mode, base=base, progress=progress)
    return run.manifest_path


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


@dataclasses.dataclass
class Evaluation:
    """Scores per case and class, and the summary table :func:`evaluate` made of them."""

    results: dict[str, Any]  # case id -> [ClassScores per class]
    classes: list[str]
    rows: list[dict[str, Any]]  # one per case and class (the CSV)
    table: str  # Markdown summary
    written: tuple[Path, ...] = ()  # OUT.csv and OUT.md, when asked for

    def dice(self, case: str) -> list[float]:
        return [s.dice for s in self.results[case]]


def find_prediction(folder: str | Path, case: str) -> Path | None:
    """``folder/CASE.zarr`` (or another format's file) if it exists."""
    for suffix in PREDICTION_SUFFIXES:
        path = Path(folder) / f"{case}{suffix}"
        if path.exists():
            return path
    return None


def _pairs(
    predictions: str | Path, truth: str | Path | None, spec: DatasetSpec | None, split: str
) -> list[tuple[str, str, str]]:
    """(case, prediction, truth) to score: one pair, or a folder's files matched to the split's cases."""
    pred = str(predictions)
    if os.path.isdir(pred) and not pred.rstrip("/").endswith(".zarr"):
        if spec is None:
            raise MeunetError(
                f"{pred} is a folder of predictions: give --data DATASET.yaml to match them to cases"
            )
        ids = spec.split.get(split, ()) if split != "all" else tuple(spec.cases)
        pairs = []
        for cid in ids:
            found = find_prediction(pred, cid)
            if found and spec.cases[cid].label is not None:
                pairs.append((cid, str(found), str(spec.cases[cid].label)))
        if not pairs:
            raise MeunetError(
                f"{pred}: no CASE.zarr / CASE.nii.gz predictions for the {split} cases of {spec.path}"
            )
        return pairs
    if truth is None:
        raise MeunetError("give --truth for a single prediction")
    return [(Path(pred).name.split(".")[0], pred, str(truth))]


def evaluate(
    predictions: str | Path,
    truth: str | Path | None = None,
    *,
    data: DataLike | None = None,
    split: str = "test",
    classes: int = 0,
    hd95: str = "max",
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Evaluation:
    """Dice, HD95 and volume difference per class, streamed.

    Args:
        predictions: A label volume (with ``truth``), or a folder of ``CASE.zarr``
            predictions matched to the ``split`` cases of ``data``.
        truth: Reference labels of a single prediction.
        data: The dataset: class names, label remapping, its spacing (which
            overrides the truth files'), and the cases of a folder.
        split: train, val, test or all (a folder of predictions).
        classes: Number of classes when no ``data`` is given.
        hd95: ``max`` (MONAI's) or ``pooled``.
        out: Also write ``OUT.csv`` and ``OUT.md``.
        overwrite: Replace an ``OUT.*`` meunet did not write.
    """
    import csv
    import io

    from meunet.data.io import open_volume
    from meunet.data.io.ownership import prepare_output, write_text
    from meunet.metrics.evaluate import evaluate_case, summary_table

    spec = _spec(data) if data is not None else None
    if spec is None and not classes:
        raise MeunetError("give --data DATASET.yaml (classes and label remapping) or --classes N")
    names = (
        list(spec.classes) if spec else ["background", *(f"class {c}" for c in range(1, classes))]
    )
    remap = (lambda a: spec.remap_labels(a, "truth")) if spec else None
    pairs = _pairs(predictions, truth, spec, split)
    sources = [p for pair in pairs for p in pair[1:]] + (
        [str(spec.path)] if spec is not None and spec.path else []
    )
    if out:  # refuse before the (long) evaluation
        for suffix in (".csv", ".md"):
            prepare_output(f"{out}{suffix}", sources, overwrite, folder=False)
    # a spec's spacing overrides the files' (which may have none, giving voxels)
    spacing = spec.spacing if spec else None
    results = {
        cid: evaluate_case(
            open_volume(p), open_volume(t, spacing=spacing), len(names), remap, hd95=hd95
        )
        for cid, p, t in pairs
    }
    rows, table = summary_table(results, names, hd95=hd95)
    if spec is not None and spacing is not None:
        table += f"\nSpacing (z, y, x) {list(spacing)} from {spec.path}, not the files'."
    else:
        table += "\nSpacing: each truth file's own."
    written: tuple[Path, ...] = ()
    if out:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        written = (
            write_text(f"{out}.csv", buffer.getvalue(), sources, overwrite, "evaluate"),
            write_text(f"{out}.md", table + "\n", sources, overwrite, "evaluate"),
        )
    return Evaluation(results, names, rows, table, written)
