"""The layout of a run folder, and of a cascade's, in one place.

A training run (``meunet train``, :func:`meunet.train`) writes::

    OUT/best.pt  last.pt  log.csv  curves.png  [DONE]  [data_xN/]

A cascade (``meunet train-cascade``, :func:`meunet.train_cascade`) writes::

    OUT/stage1/<branch>/                  one training run per stage-1 branch
    OUT/stage1/<branch>/predictions/<case>.zarr
    OUT/stage1/<branch>/predictions/stage.json, DONE
    OUT/stage2/                           the stage-2 training run
    OUT/cascade.json                      the manifest :func:`meunet.predict` takes

Code that reads or writes these paths asks :class:`Run` and
:class:`CascadeRun` for them; nothing else builds them from strings.
Ownership (the marker that lets meunet replace its own outputs) and the
writer's lock are taken through :meth:`Run.lock` and :meth:`Run.claim`,
which call :mod:`meunet.data.io.ownership` and :mod:`meunet.data.io.locks`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meunet.data.io.atomic import atomic_path
from meunet.data.io.ownership import OutputLock, make_folder
from meunet.data.patch_size import PatchSize, as_json, parse_patch
from meunet.errors import MeunetError
from meunet.training.config import TrainConfig

CASCADE_MANIFEST = "cascade.json"  # what `meunet predict --model` takes to run a whole cascade
STAGE_RECORD = "stage.json"  # beside a stage's DONE: the settings and dataset it was made with


@dataclass(frozen=True)
class Run:
    """One training run's folder.

    Example:
        >>> Run("runs/meunet").best
        PosixPath('runs/meunet/best.pt')
    """

    folder: Path

    def __init__(self, folder: str | Path) -> None:
        object.__setattr__(self, "folder", Path(folder))

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation epoch (what prediction uses)."""
        return self.folder / "best.pt"

    @property
    def last(self) -> Path:
        """The checkpoint of the last finished epoch (what ``resume`` continues)."""
        return self.folder / "last.pt"

    @property
    def log(self) -> Path:
        return self.folder / "log.csv"

    @property
    def curves(self) -> Path:
        return self.folder / "curves.png"

    @property
    def done(self) -> Path:
        """Marker of a run finished by a caller that trains to the end (benchmarks)."""
        return self.folder / "DONE"

    def data_copy(self, factor: int) -> Path:
        """Where a run with ``downsample: factor`` keeps its downsampled dataset."""
        return self.folder / f"data_x{factor}"

    @property
    def started(self) -> bool:
        """True once an epoch has finished (``last.pt`` exists): train with ``resume``."""
        return self.last.exists()

    @property
    def finished(self) -> bool:
        return self.done.exists()

    def mark_done(self, note: str = "trained") -> None:
        self.done.write_text(f"{note}\n")

    def lock(self, command: str) -> OutputLock:
        """The writer's lock on this folder (one process writes a run at a time)."""
        return OutputLock(self.folder, command)

    def claim(self, command: str) -> Path:
        """Make the folder, or take over one meunet made (refuses a stranger's)."""
        return make_folder(self.folder, command)

    def stale_partials(self) -> list[Path]:
        """Files left by a process killed while writing (``.NAME.partial*``)."""
        return sorted(self.folder.glob(".*.partial*"))


@dataclass(frozen=True)
class StageEntry:
    """One network of a cascade, as ``cascade.json`` records it."""

    checkpoint: str  # relative to the manifest's folder
    patch: PatchSize  # training patch P (a cube's side, or (z, y, x) sides)
    infer_patch: PatchSize  # the window it is predicted with (and stage-1 maps were made with)
    downsample: int = 1  # a low-resolution branch predicts on inputs downsampled by this
    config: TrainConfig | None = None  # the settings it was trained with (None: older manifest)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "patch": as_json(self.patch),
            "infer_patch": as_json(self.infer_patch),
            "downsample": self.downsample,
        }
        if self.config is not None:
            d["train_config"] = self.config.to_nested()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StageEntry:
        cfg = d.get("train_config")
        return cls(
            checkpoint=str(d["checkpoint"]),
            patch=parse_patch(d["patch"]),  # type: ignore[arg-type]
            infer_patch=parse_patch(d.get("infer_patch", d["patch"]), "infer_patch"),  # type: ignore[arg-type]
            downsample=int(d.get("downsample", 1)),
            config=TrainConfig.from_dict(cfg, strict=False) if cfg else None,
        )


@dataclass(frozen=True)
class CascadeManifest:
    """Typed ``cascade.json``: the stage-1 branches, stage 2, and how they connect."""

    mode: str  # post | pre | lowres
    stage1: tuple[StageEntry, ...]
    stage2: StageEntry
    version: int = 2  # 1: no train_config per stage

    def to_json(self) -> dict[str, Any]:
        return {
            "cascade": self.mode,
            "version": self.version,
            "stage1": [e.to_json() for e in self.stage1],
            "stage2": self.stage2.to_json(),
        }

    @classmethod
    def read(cls, path: str | Path) -> CascadeManifest:
        """Read a manifest (also those written before stages carried their config)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(
                mode=str(d.get("cascade", "post")),
                stage1=tuple(StageEntry.from_json(e) for e in d["stage1"]),
                stage2=StageEntry.from_json(d["stage2"]),
                version=int(d.get("version", 1)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise MeunetError(
                f"{path}: not a cascade.json written by meunet train-cascade ({e})"
            ) from None

    def write(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_json(), indent=2))
        return Path(path)


@dataclass(frozen=True)
class CascadeRun:
    """A cascade's folder: stage-1 branch runs, their predictions, stage 2 and the manifest.

    Example:
        >>> CascadeRun("runs/c").prediction("meunet-k150", "pat0001")
        PosixPath('runs/c/stage1/meunet-k150/predictions/pat0001.zarr')
    """

    folder: Path

    def __init__(self, folder: str | Path) -> None:
        object.__setattr__(self, "folder", Path(folder))

    @property
    def stage1(self) -> Path:
        """Folder of the stage-1 branches (one cascade may share another's)."""
        return self.folder / "stage1"

    def branch(self, name: str) -> Run:
        """The training run of stage-1 branch ``name``."""
        return Run(self.stage1 / name)

    @property
    def stage2(self) -> Run:
        return Run(self.folder / "stage2")

    def predictions(self, name: str) -> Path:
        """Folder of branch ``name``'s maps of every case (stage 2's extra inputs)."""
        return self.branch(name).folder / "predictions"

    def prediction(self, name: str, case: str) -> Path:
        return self.predictions(name) / f"{case}.zarr"

    def branch_done(self, name: str) -> Path:
        """Marker: branch ``name`` is trained and has predicted every case."""
        return self.predictions(name) / "DONE"

    def branch_record(self, name: str) -> Path:
        """Beside :meth:`branch_done`: the settings and dataset the branch was made with."""
        return self.predictions(name) / STAGE_RECORD

    @property
    def manifest_path(self) -> Path:
        return self.folder / CASCADE_MANIFEST

    @property
    def finished(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> CascadeManifest:
        return CascadeManifest.read(self.manifest_path)

    def checkpoint_entry(self, run: Run, cfg: TrainConfig) -> StageEntry:
        """The manifest entry of ``run`` (a branch or stage 2) trained with ``cfg``."""
        return StageEntry(
            checkpoint=run.best.relative_to(self.folder).as_posix(),
            patch=cfg.patch,  # type: ignore[arg-type]  # resolved: never auto here
            infer_patch=cfg.window,
            downsample=cfg.downsample,
            config=cfg,
        )

    def write_manifest(
        self, mode: str, branches: dict[str, TrainConfig], stage2: TrainConfig
    ) -> Path:
        manifest = CascadeManifest(
            mode=mode,
            stage1=tuple(self.checkpoint_entry(self.branch(n), c) for n, c in branches.items()),
            stage2=self.checkpoint_entry(self.stage2, stage2),
        )
        return manifest.write(self.manifest_path)

    def lock(self, command: str) -> OutputLock:
        return OutputLock(self.folder, command)

    def claim(self, command: str) -> Path:
        return make_folder(self.folder, command)
