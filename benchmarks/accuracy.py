"""Does more context per byte of training memory buy a better small class?

The paper's accuracy claim: a meU-net (trained on a standard patch P plus, in
its deeper levels, an expanded patch E = kP) segments the small class better
than a U-net of the same training memory, and the post-concatenation cascade
does better still, beating the pre-concatenation and low-resolution cascades.
This benchmark answers it under one protocol:

- **Training to convergence.** Every network trains until ``patience`` epochs
  pass without a better validation score, under a step cap (``epochs`` x
  ``patches_per_epoch`` / ``batch``) stated in the table, which also reports
  the steps run and the best epoch. Validation uses the network's own
  inference window (``infer_patch``: E for a meU-net, P otherwise), so early
  stopping keeps the epoch that is best the way the network is used.
- **Every network at every window.** Each trained network predicts the test
  cases with sliding windows of P, E(k = 1.5) and E(k = 1.75) voxels (and its
  own training patch), U-nets too: a meU-net can only use what its deeper
  levels learned from the expanded patch if the window shows it.
- **Same memory, plus a learnability control.** ``unet`` trains at the largest
  patch whose measured training step fits meU-net k = 1.75's measured peak;
  ``unet-wide`` (the context phantom only) trains at a patch covering 2D, more
  memory than the budget, to show the task can be learnt at all.
- **What ignoring the context scores.** On the phantoms, ``thin-tubes`` labels
  every thin tube (the hind-gut and its look-alikes, alike voxel by voxel)
  hind-gut, with no network: recall 1, precision the hind-gut's share. Every
  network is compared with it, paired; one that does not beat it has not shown
  that it uses the context, and the control counts as having learnt the task
  only when it beats it.
- **Does it read the cue?** Dice mixes reading the cue with drawing tube
  boundaries. The cue accuracy does not: the balanced accuracy of the
  hind-gut call on the true thin-tube voxels, which every labelling that
  ignores the context scores 0.5 and one that reads the cue everywhere 1. It
  is measured from each network's predictions at its own window, against 0.5.
- **Datasets.** ``context``: the phantom whose thin tubes are hind-gut within
  D voxels of a bright marker and background within D of a dark one, with
  P/2 < D < E/2, so that a window of E centred on a voxel always holds its
  deciding marker. D bounds the cue's distance but does not set it: a centred
  window of P holds it too for most thin-tube voxels (``cue_visibility.py``);
  ``phantom``: the classic phantom;
  ``brats4``: four BRATS volumes, 2 train / 2 test both ways.
- **Statistics.** Paired differences over (seed, test case), 3 seeds (fresh
  data and initialisation each) x 2 test cases; a 95 % bootstrap confidence
  interval that resamples seeds, then cases within them. A claim *holds* only
  when the interval lies above 0, *fails* when it lies below, and is
  *inconclusive* otherwise.

    .venv/bin/python benchmarks/accuracy.py --datasets context        # small sizes, CPU
    .venv/bin/python benchmarks/accuracy.py --datasets context --set device=cuda --jobs 15
    .venv/bin/python benchmarks/accuracy.py --sizes paper              # one GPU, one seed

Small networks leave a GPU mostly idle: ``--jobs N`` trains N (dataset, seed,
configuration) triples at once, each in its own process (cascades adopt their
run's meU-nets as stage 1), and ``--deadline S`` stops training S - 30 seconds
after the start and scores each network's best checkpoint so far (marked in
the table; a rerun resumes them, and ``--resume-from`` keeps the finished
networks of an earlier run whose work folder is gone). ``--report-only`` trains
nothing: it writes the report from what is cached and what ``--resume-from``
holds, the safe way to preview or merge runs.

Every trained network, prediction and score is cached in ``--work`` per
(dataset, seed, configuration, window): rerunning the command resumes, and
the report is rewritten after each configuration, marking what is missing.
Writes ``benchmarks/results/accuracy{,_paper}.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

import meunet
from meunet.data.io import open_volume
from meunet.data.io.atomic import atomic_path
from meunet.data.phantom import (
    PhantomConfig,
    make_phantom_dataset,
    phantom_geometry,
    render_case,
    tube_map,
)
from meunet.data.resample import downsampled_dataset
from meunet.data.spec import DatasetSpec, load_spec
from meunet.memory import MemoryConfig, measure
from meunet.memory.plan import plan_patch
from meunet.training.cascade import stage1_configs, stage2_config
from meunet.training.config import TrainConfig, override
from meunet.training.run import CascadeRun, Run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BRATS = ROOT / "examples" / "brats4.yaml"
CONFIGS = (  # the order they run in: the learnability control, then the main claim
    "unet-wide", "unet", "meunet-k175", "meunet-k150", "unet-P", "cascade-post", "cascade-pre",
    "cascade-lowres",
)  # fmt: skip
DATASETS = ("context", "phantom", "brats4")
GIB = 2**30
BOOTSTRAP = 10_000

SIZES: dict[str, dict[str, Any]] = {
    # what two CPU cores allow (or one GPU, with --set device=cuda --jobs N)
    "small": {
        "train": TrainConfig(
            encoder_channels=(16, 32, 32, 64, 64), decoder_channels=(32, 32, 16, 16), patch=32,
            batch=4, lr=1e-3, epochs=150, patience=30, patches_per_epoch=48, bg_keep=0.1,
            device="cpu", amp=False,
        ),
        "phantom_shape": (128, 96, 96), "context": 22.0, "wide_patch": 48, "cases": 16,
        "seeds": (0, 1, 2), "brats_factor": 2,
        "configs": CONFIGS,
    },
    # one GPU: the paper's channels, P = 64, k = 1.5, AMP; U-net at P and at E, meU-net
    "paper": {
        "train": TrainConfig(
            patch=64, k=1.5, batch=2, lr=9e-4, epochs=30, patience=8, patches_per_epoch=48,
            bg_keep=0.1, device="cuda", amp=True, checkpointing=True,
        ),
        "phantom_shape": (192, 192, 192), "context": 40.0, "wide_patch": 96,
        "seeds": (0,), "brats_factor": 1, "cases": 12,
        "configs": ("unet-P", "unet-wide", "meunet-k150"),
    },
}  # fmt: skip

# (better, its window, worse, its window, the paper's numbers); "own" is the network's infer_patch
CLAIMS = [
    ("meunet-k150", "E150", "unet", "own", "0.741 vs 0.672 (meU-net 240 vs U-net 160, Table 1)"),
    ("meunet-k175", "E175", "unet", "own", "0.748 vs 0.666 (k = 1.75 vs 1, Table 2)"),
    ("meunet-k150", "E150", "unet-P", "own", "0.741 vs 0.672 (meU-net vs U-net at P)"),
    ("meunet-k175", "E175", "unet", "E175", "- (same window: is it the training?)"),
    ("meunet-k150", "E150", "unet-P", "E150", "- (same window: is it the training?)"),
    ("meunet-k175", "E175", "meunet-k175", "P", "- (does the window matter?)"),
    ("cascade-post", "own", "meunet-k175", "E175", "0.768 vs 0.748 (cascade vs its stage 1)"),
    ("cascade-post", "own", "cascade-pre", "own", "0.768 vs 0.756 (Table 5)"),
    ("cascade-post", "own", "cascade-lowres", "own", "0.768 vs 0.659 (Table 3)"),
]
LEARNABLE = 0.7  # the control's small-class Dice below which the task is not shown learnable
NO_CONTEXT = "thin-tubes"  # the reference: every thin tube labelled the small class, no network
NO_CONTEXT_LINE = (
    f"- `{NO_CONTEXT}` (phantoms; no network): every voxel of a thin tube (the hind-gut and its "
    "look-alikes, alike voxel by voxel) labelled hind-gut: recall 1, precision the hind-gut's "
    "share of them. It is what telling thin tubes from thick ones, but ignoring the context, "
    "scores: a network that uses the context must beat it, and the control counts as having "
    f"learnt the task only when it does (and reaches {LEARNABLE})."
)
# (better, worse): the main claims again, on the cue accuracy, each network at its own window
CUE_CLAIMS = [
    ("meunet-k175", "unet"), ("meunet-k150", "unet-P"), ("cascade-post", "meunet-k175"),
    ("unet-wide", "unet"),
]  # fmt: skip
MIN_RUNS = 2  # independent trainings (seeds or folds) a verdict needs
SCORING = 30  # seconds a job keeps after its training time limit to score its best checkpoint


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def applies(config: str, run_name: str) -> bool:
    """Whether ``config`` is run on the dataset of ``run_name`` (the control is context-only)."""
    return config != "unet-wide" or run_name.startswith("context")


def expanded(base: TrainConfig, k: float) -> int:
    return dataclasses.replace(base, model="meunet", k=k).expanded


def windows_of(base: TrainConfig) -> dict[str, int]:
    return {"P": base.patch, "E150": expanded(base, 1.5), "E175": expanded(base, 1.75)}


# ----------------------------------------------------------------------------- data

# Bumped whenever the phantom's rendering changes, so that cached datasets are not reused.
PHANTOM_VERSION = "2: context markers of two kinds"


def _phantom_data(folder: Path, made: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Make (or check) one seed's phantom dataset in ``folder``."""
    yaml_path = folder / "dataset.yaml"
    stamp = folder.parent / "bench.json"
    if yaml_path.is_file():
        if not stamp.is_file() or json.loads(stamp.read_text()) != made:
            sys.exit(
                f"{folder} was made with other settings or an older phantom than {made}; "
                "choose another --work folder or delete that one"
            )
        return
    context = made["context"]
    make_phantom_dataset(
        folder, made["cases"], shape, made["seed"], progress=False,
        **({"context_distance": context} if context else {}),
    )  # fmt: skip
    stamp.write_text(json.dumps(made))


# (run name, seed, dataset, how its phantom cases were rendered: None for real data)
RunSpec = tuple[str, int, DatasetSpec, PhantomConfig | None]


def phantom_runs(
    size: dict[str, Any], work: Path, seeds: Iterable[int], context: float
) -> list[RunSpec]:
    """One fresh phantom dataset per seed: the last two cases test, the one before validates.

    Each dataset folder records what it was made with (``bench.json``); a folder made
    with other settings, or by an older phantom, is refused rather than reused. The seeds'
    datasets are made in parallel processes.
    """
    kind = "context" if context else "phantom"
    folders = {seed: work / f"{kind}-seed{seed}" / "data" for seed in seeds}
    shape = tuple(size["phantom_shape"])
    made = {
        seed: {
            "cases": size.get("cases", 8),
            "shape": list(shape),
            "seed": seed,
            "context": context,
            "phantom": PHANTOM_VERSION,
        }
        for seed in folders
    }
    with ProcessPoolExecutor(max(1, min(len(folders), os.cpu_count() or 1))) as pool:
        for done in [pool.submit(_phantom_data, f, made[s], shape) for s, f in folders.items()]:
            done.result()
    phantom = PhantomConfig(shape=shape, context_distance=context)  # as make_phantom_dataset's
    runs: list[RunSpec] = []
    for seed, folder in folders.items():
        spec = load_spec(folder / "dataset.yaml")
        ids = list(spec.cases)
        n_train = len(ids) - 3 if len(ids) > 5 else len(ids) - 2
        split = {
            "train": tuple(ids[:n_train]),
            "val": (ids[n_train],),
            "test": tuple(ids[n_train + 1 :]),
        }
        runs.append((f"{kind}-seed{seed}", seed, dataclasses.replace(spec, split=split), phantom))
    return runs


def thin_tubes(cfg: PhantomConfig, seed: int, case: int) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case's thin-tube voxels (the hind-gut and its look-alikes) and its label."""
    _, label = render_case(cfg, seed, case)
    r1, r2 = cfg.radii
    g = phantom_geometry(cfg, seed, case)
    ids = [t.tube_id for t in g.tubes if t.radius < (r1 + r2) / 2]
    return np.isin(tube_map(cfg, seed, case), ids), label


def cue_accuracy(prediction: np.ndarray, thin: np.ndarray, label: np.ndarray) -> float:
    """Balanced accuracy of the hind-gut call on thin-tube voxels: does a network use the cue?

    The mean of two shares: the hind-gut's thin-tube voxels predicted hind-gut, and the
    look-alikes' predicted anything else. Every labelling that ignores the context (all
    thin tubes hind-gut, none, or any guess) scores 0.5 in expectation; one that reads the
    cue right everywhere scores 1, however its tube boundaries come out (only voxels
    inside the true tubes count). NaN for a case without both kinds of thin tube.
    """
    hind, alike = thin & (label == 2), thin & (label != 2)
    if not hind.any() or not alike.any():
        return math.nan
    said = np.asarray(prediction) == 2
    return float(0.5 * (said[hind].mean() + (~said[alike]).mean()))


def no_context_case(thin: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """Scores of labelling every thin tube hind-gut in one phantom case (no network).

    Thin tubes (the hind-gut and its look-alikes) look the same voxel by voxel; only
    their context (a marker within D, or continuing the mid-gut) tells them apart. This is
    what a segmentation that tells thin tubes from thick ones but ignores that context
    scores: recall 1, precision the hind-gut's share of thin-tube voxels. A network that
    uses the context must beat it. ``thin``, ``label``: :func:`thin_tubes` of the case.
    """
    true = label == 2
    pred, want = int(thin.sum()), int(true.sum())
    dice = 2 * int((thin & true).sum()) / (pred + want) if pred + want else math.nan
    nan = math.nan
    return {"dice": [nan, nan, dice], "hd95": [nan, nan, nan],
            "voxels_pred": [0, 0, pred], "voxels_true": [0, 0, want]}  # fmt: skip


def _index(case_id: str) -> int:
    """A phantom case's index from its name (``case_013`` -> 13)."""
    return int(case_id.rsplit("_", 1)[1])


def add_no_context(runs: list[Experiment]) -> None:
    """Give each phantom run its :data:`NO_CONTEXT` reference (see :func:`no_context_case`)."""
    for run in runs:
        if run.phantom is None or NO_CONTEXT in run.results:
            continue
        cases = {cid: no_context_case(*run.thin_tubes(cid)) for cid in run.test}
        run.results[NO_CONTEXT] = {"windows": {"own": {"window": 0, "cases": cases}}}


def brats_runs(size: dict[str, Any], work: Path) -> list[RunSpec]:
    spec = load_spec(BRATS)
    factor = size["brats_factor"]
    # gzip NIfTI has no random access: written once to Zarr (downsampled by `factor`)
    spec = downsampled_dataset(spec, factor, work / f"brats4-x{factor}", progress=False)
    a, b = ("pat0005", "pat0006"), ("pat0003", "pat0004")
    folds = {"brats4-foldA": (a, b), "brats4-foldB": (b, a)}
    return [
        (name, 0, dataclasses.replace(spec, split={"train": tr, "val": tr, "test": te}), None)
        for name, (tr, te) in folds.items()
    ]


# ----------------------------------------------------------------------------- memory


def _threads(n: int) -> str:
    """The torch threads of this invocation (a --report-only merge's, not its trainings')."""
    return f"{n} torch thread{'s' if n != 1 else ''} in this invocation"


def claim_work(work: Path, base: TrainConfig, size: dict[str, Any]) -> None:
    """Stamp ``work`` with the settings its networks train with; refuse other settings.

    Cached networks are found by run and configuration alone, so a work folder reused with
    other ``--sizes``, ``--set`` or ``--context`` would report networks trained otherwise under
    the new settings' heading. Device and loader workers change no network and are left out.
    """
    kept = ("phantom_shape", "context", "cases", "wide_patch", "brats_factor")
    stamp = json.loads(json.dumps({
        **{k: v for k, v in base.to_dict().items() if k not in ("device", "workers", "seed")},
        **{k: size[k] for k in kept if k in size},
    }))  # fmt: skip
    path = work / "settings.json"
    if path.is_file():
        made = json.loads(path.read_text())
        differ = sorted(
            f"{k}={made.get(k)!r} there, {v!r} now" for k, v in stamp.items() if made.get(k) != v
        )
        if differ:
            sys.exit(
                f"{work} holds networks trained with other settings ({'; '.join(differ)}): "
                "pass another --work, or the --sizes/--set/--context they were made with"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(stamp, indent=1))


def memory_plan(
    base: TrainConfig, in_ch: int, classes: int, wide: int, configs: Iterable[str]
) -> dict[str, Any]:
    """Measured step peaks of ``configs``; ``unet``'s patch is the largest that fits meU-net k = 1.75's."""
    mem = MemoryConfig(
        patch=base.patch, batch=base.batch, amp=base.amp, checkpointing=base.checkpointing,
        device=base.device, in_channels=in_ch, num_classes=classes,
        encoder_channels=base.encoder_channels, decoder_channels=base.decoder_channels,
    )  # fmt: skip

    def peak(**kw: Any) -> int:
        return int(measure(dataclasses.replace(mem, **kw))["peak_bytes"])

    configs = set(configs)
    plan: dict[str, Any] = {"budget": 0, "unet_patch": base.patch, "bytes": {}}
    if configs & {"unet", "meunet-k175", "cascade-post", "cascade-pre"}:
        plan["budget"] = plan["bytes"]["meunet-k175"] = peak(model="meunet", k=1.75)
    if "unet" in configs:
        found = plan_patch(
            dataclasses.replace(mem, model="unet"), plan["budget"], max_patch=4 * base.patch
        )
        plan["unet_patch"] = found.cfg.patch if found.cfg else base.patch
        plan["bytes"]["unet"] = peak(model="unet", patch=plan["unet_patch"])
    wanted = {
        "unet-P": lambda: peak(model="unet"),
        "unet-wide": lambda: peak(model="unet", patch=wide),
        "meunet-k150": lambda: peak(model="meunet", k=1.5),
        "stage2-post": lambda: peak(model="cascade-post", extra_channels=2 * classes),
        "stage2-pre": lambda: peak(model="cascade-pre", extra_channels=2 * classes),
        "stage2-lowres": lambda: peak(model="cascade-pre", extra_channels=classes),
    }
    needs = {
        "unet-P": {"unet-P", "cascade-lowres"},
        "unet-wide": {"unet-wide"},
        "meunet-k150": {"meunet-k150", "cascade-post", "cascade-pre"},
        "stage2-post": {"cascade-post"},
        "stage2-pre": {"cascade-pre"},
        "stage2-lowres": {"cascade-lowres"},
    }
    for key, fn in wanted.items():
        if needs[key] & configs:
            plan["bytes"][key] = fn()
    return plan


# ----------------------------------------------------------------------------- one run


def training_record(run: Run, cfg: TrainConfig) -> dict[str, Any]:
    """Steps run, epochs, best epoch and seconds of a finished training, read from its log."""
    with run.log.open() as f:
        rows = list(csv.DictReader(f))
    dice_cols = [c for c in rows[0] if c.startswith("dice_")][1:]  # without background

    def score(r: dict[str, str]) -> float:
        v = [float(r[c]) for c in dice_cols if r[c] not in ("", "nan")]
        return float(np.nanmean(v)) if v else 0.0

    scores = [score(r) for r in rows]
    best = int(np.argmax(scores))  # the first maximum, as training keeps it
    steps = sum(math.ceil(int(r["patches"]) / cfg.batch) for r in rows)
    return {
        "steps": steps,
        "step_cap": cfg.epochs * math.ceil(cfg.patches_per_epoch / cfg.batch),
        "epochs": len(rows),
        "best_epoch": int(rows[best]["epoch"]),
        "early_stop": len(rows) < cfg.epochs,
        "seconds": sum(float(r["seconds"]) for r in rows),
        "patch": cfg.patch,
        "window": cfg.window,
    }


class TimeUp(BaseException):
    """Raised in a training that reached the benchmark's time limit (a BaseException, like
    KeyboardInterrupt, so that no reader turns it into a data error)."""


def _time_up(signum: int, frame: Any) -> None:
    raise TimeUp


class Experiment:
    """One dataset and seed: trains configurations and scores them, caching everything.

    ``train_until`` (``time.time()``): trainings still running then are stopped and their
    best checkpoint so far is scored, marked ``time_capped`` (a later run without a limit
    resumes them).
    """

    train_until = math.inf

    def __init__(
        self, name: str, seed: int, spec: DatasetSpec, work: Path, base: TrainConfig,
        plan: dict[str, Any], wide: int, phantom: PhantomConfig | None = None,
    ) -> None:  # fmt: skip
        self.name, self.spec, self.work, self.plan, self.wide = name, spec, work, plan, wide
        self.phantom = phantom  # how its cases were rendered; None for real data
        self.base = dataclasses.replace(base, seed=seed)
        self.test = list(spec.split["test"])
        self.store = work / "scores.json"
        self.results: dict[str, Any] = (
            json.loads(self.store.read_text()) if self.store.is_file() else {}
        )
        self._thin: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def thin_tubes(self, cid: str) -> tuple[np.ndarray, np.ndarray]:
        """:func:`thin_tubes` of test case ``cid`` (rendered once per invocation)."""
        assert self.phantom is not None
        if cid not in self._thin:
            self._thin[cid] = thin_tubes(self.phantom, self.base.seed, _index(cid))
        return self._thin[cid]

    def cue(self, config: str, window: int, cid: str) -> float | None:
        """:func:`cue_accuracy` of one network's prediction of one test case, cached in its
        ``.scored`` file; None where it cannot be had (real data, or no prediction on disk:
        a network kept from another machine's results)."""
        target = self.work / "test" / f"{config}-w{window}" / f"{cid}.zarr"
        scored = target.parent / f"{cid}.scored"
        if self.phantom is None or not scored.is_file():
            return None
        cached = json.loads(scored.read_text())
        if "cue" not in cached:
            if not target.exists():
                return None
            cached["cue"] = cue_accuracy(open_volume(target)[:, :, :], *self.thin_tubes(cid))
            scored.write_text(json.dumps(cached))
        return cached["cue"]

    def add_cue(self) -> None:
        """Put :meth:`cue` into each scored network's own-window cases that lack it."""
        for config, entry in self.results.items():
            if config == NO_CONTEXT or "same_as" in entry:
                continue
            own = entry["windows"]["own"]
            for cid, case in own["cases"].items():
                if "cue" not in case and (cue := self.cue(config, own["window"], cid)) is not None:
                    case["cue"] = cue

    def unet_is_p(self, plan: dict[str, Any] | None = None) -> bool:
        """Whether the same-memory U-net's patch, measured in ``plan`` (this run's by default),
        is P: then ``unet-P`` is that network, recorded as the same (:meth:`same_unet`)."""
        plan = self.plan if plan is None else plan
        return "unet" in plan.get("bytes", {}) and plan.get("unet_patch") == self.base.patch

    def same_unet(self, plan: dict[str, Any] | None = None) -> bool:
        """Record ``unet-P`` as the scored U-net where :meth:`unet_is_p` (not saved)."""
        if "unet" not in self.results or not self.unet_is_p(plan):
            return False
        self.results["unet-P"] = {**self.results["unet"], "same_as": "unet"}
        return True

    def save(self) -> None:
        with atomic_path(self.store) as tmp:
            Path(tmp).write_text(json.dumps(self.results, indent=1))

    @contextlib.contextmanager
    def limited(self) -> Iterator[None]:
        """Raise :class:`TimeUp` in the block once ``train_until`` has come."""
        left = self.train_until - time.time()
        if left <= 0:
            raise TimeUp
        if math.isfinite(left):
            signal.signal(signal.SIGALRM, _time_up)
            signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def fit(self, cfg: TrainConfig, run: Run) -> dict[str, Any]:
        capped = False
        if not run.finished:
            try:
                with self.limited():
                    meunet.train(cfg, self.spec, run.folder, resume=run.started, progress=False)
                run.mark_done()
            except TimeUp:
                capped = True
            if capped:
                if not run.best.is_file():
                    raise SystemExit(f"{run.folder}: the time limit came before a first epoch")
                log(f"{self.name}: {run.folder.name} stopped by the time limit; scoring its best")
        return {**training_record(run, cfg), "time_capped": capped}

    def windows(self, own: int) -> dict[str, int]:
        w = windows_of(self.base)
        w["own"] = own
        return w

    def score(
        self, config: str, checkpoint: Path, own: int, maps: list[Path] | None = None
    ) -> dict[str, Any]:
        """Test-case scores of one network at each inference window (predictions cached).

        ``maps``: the stage-1 prediction folders of a stage-2 network (one per branch).
        """
        options = meunet.PredictOptions(
            batch_size=self.base.batch, device=self.base.device, progress=False
        )
        out: dict[str, Any] = {}
        for key, window in self.windows(own).items():
            per_case = {}
            for cid in self.test:
                target = self.work / "test" / f"{config}-w{window}" / f"{cid}.zarr"
                scored = target.parent / f"{cid}.scored"
                cached = json.loads(scored.read_text()) if scored.exists() else {}
                if "voxels_pred" not in cached:  # scores of earlier versions lack the counts
                    if not cached:  # else the finished prediction is on disk
                        stage1 = tuple(folder / f"{cid}.zarr" for folder in maps or [])
                        meunet.predict(
                            checkpoint, self.spec.cases[cid].images, target,
                            options=options.with_(patch=window, stage1=stage1),
                        )  # fmt: skip
                    label = self.spec.cases[cid].label
                    s = meunet.evaluate(target, label, data=self.spec).results[
                        target.name.split(".")[0]
                    ]
                    scored.write_text(json.dumps({
                        "dice": [c.dice for c in s], "hd95": [c.hd95 for c in s],
                        "voxels_pred": [c.voxels_pred for c in s],
                        "voxels_true": [c.voxels_true for c in s],
                    }))  # fmt: skip
                per_case[cid] = json.loads((target.parent / f"{cid}.scored").read_text())
                if key == "own" and (cue := self.cue(config, window, cid)) is not None:
                    per_case[cid]["cue"] = cue
            out[key] = {"window": window, "cases": per_case}
        return out

    def ensure(self, config: str, cached_only: bool = False) -> bool:
        """Train and score ``config`` unless cached; False where it does not apply here.

        ``cached_only``: only say whether it is cached.
        """
        done = self.results.get(config, {})
        if done and all(
            "voxels_pred" in c
            for w in done.get("windows", {}).values()
            for c in w["cases"].values()
        ):
            if not (done.get("time_capped") and math.isinf(self.train_until)):
                return True
            if not cached_only:  # resumed to the end below: its scores are redone
                for scored in (self.work / "test").glob(f"{config}-w*"):
                    shutil.rmtree(scored)
        if cached_only:
            return False
        if not applies(config, self.name):
            return False
        if config == "unet-P" and self.unet_is_p():
            if not self.ensure("unet") or not self.same_unet():
                return False
            self.save()
            return True
        t0 = time.perf_counter()
        base, mem = self.base, self.plan["bytes"]
        post = CascadeRun(self.work / "post")
        if config in ("unet", "unet-P", "unet-wide"):
            patch = {"unet": self.plan["unet_patch"], "unet-P": base.patch, "unet-wide": self.wide}
            cfg = dataclasses.replace(base, model="unet", patch=patch[config], infer_patch=0)
            run = Run(self.work / config)
            record = self.fit(cfg, run)
            scores = self.score(config, run.best, cfg.window)
            memory = mem[config]
        elif config in stage1_configs("post", base):  # a meU-net: a branch of the post cascade
            cfg = stage1_configs("post", base)[config]
            run = post.branch(config)
            post.claim("train-cascade")  # the cascade that later reuses this branch adopts it
            record = self.fit(cfg, run)
            scores = self.score(config, run.best, cfg.window)
            memory = mem[config]
        else:
            mode = config.split("-")[1]
            cascade = CascadeRun(self.work / mode)
            if mode == "pre" and not cascade.stage1.exists():
                cascade.claim("train-cascade")  # shares post's stage 1
                cascade.stage1.symlink_to(post.stage1.resolve())
            capped = False
            try:
                with self.limited():
                    meunet.train_cascade(base, self.spec, cascade.folder, mode=mode, progress=False)
            except TimeUp:
                capped = True
                if not cascade.stage2.best.is_file():
                    raise SystemExit(
                        f"{cascade.folder}: the time limit came before stage 2's first epoch"
                    ) from None
                log(f"{self.name}: {config} stopped by the time limit; scoring stage 2's best")
            cfg = stage2_config(mode, base)
            record = {**training_record(cascade.stage2, cfg), "time_capped": capped}
            branches = stage1_configs(mode, base)
            networks = {config: record["seconds"]}  # each network's own seconds, stage 2's too
            for b, bcfg in branches.items():  # a branch's name is unique in a run
                networks[b] = training_record(cascade.branch(b), bcfg)["seconds"]
            record["networks"], record["seconds"] = networks, sum(networks.values())
            maps = [cascade.predictions(b) for b in branches]
            scores = self.score(config, cascade.stage2.best, cfg.window, maps)
            stage1_mem = (
                [mem["meunet-k150"], mem["meunet-k175"]] if mode != "lowres" else [mem["unet-P"]]
            )
            memory = max(*stage1_mem, mem[f"stage2-{mode}"])
        self.results[config] = {**record, "memory": memory, "windows": scores}
        self.save()
        log(f"{self.name}: {config} done in {time.perf_counter() - t0:.0f} s")
        return True


# ----------------------------------------------------------------------------- statistics


def network_seconds(results: dict[str, Any]) -> dict[str, float]:
    """Training seconds of each distinct network of one run.

    A post or pre cascade's stage 1 is the run's meU-net rows (pre shares post's), so its
    seconds are counted once. Records made before cascades listed their ``networks`` are
    split the same way when the run has those meU-net rows, else counted whole.
    """
    out: dict[str, float] = {}
    for config, record in results.items():
        networks = record.get("networks")
        if networks is None:
            networks = {config: record.get("seconds", 0.0)}
            shared = [c for c in ("meunet-k150", "meunet-k175") if c in results]
            if config in ("cascade-post", "cascade-pre") and len(shared) == 2:
                networks = {c: results[c]["seconds"] for c in shared}
                networks[config] = record["seconds"] - sum(networks.values())
        out.update(networks)
    return out


def paired(
    runs: dict[str, Any], a: str, wa: str, b: str, wb: str, score: Callable[[dict], float]
) -> list[tuple[str, float]]:
    """(run, score(a) - score(b)) for each test case of each run where both have a score.

    ``score`` reads one case's entry (``lambda c: c["dice"][2]``; NaN where it has none).
    A network recorded as the same as another (``same_as``) is read through to that one.
    """
    out = []
    for run, r in runs.items():
        if a not in r or b not in r:
            continue
        ca, cb = _cases(r, a, wa), _cases(r, b, wb)
        for cid in ca:
            da, db = score(ca[cid]), score(cb[cid])
            if np.isfinite(da) and np.isfinite(db):
                out.append((run, da - db))
    return out


def _cases(run: dict[str, Any], config: str, window: str) -> dict[str, Any]:
    """A network's test cases at ``window`` (through ``same_as`` to the network it is)."""
    return run[run[config].get("same_as", config)]["windows"][window]["cases"]


def _cue(case: dict[str, Any]) -> float:
    return case.get("cue", math.nan)


def bootstrap_ci(diffs: list[tuple[str, float]], seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean difference, resampling runs (seeds) and then cases within them."""
    groups: dict[str, list[float]] = {}
    for run, d in diffs:
        groups.setdefault(run, []).append(d)
    arrays = [np.asarray(v) for v in groups.values()]
    rng = np.random.default_rng(seed)
    means = np.empty(BOOTSTRAP)
    for i in range(BOOTSTRAP):
        picked = rng.integers(len(arrays), size=len(arrays))
        means[i] = np.mean(
            np.concatenate([rng.choice(arrays[j], size=len(arrays[j])) for j in picked])
        )
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def judge(diffs: list[tuple[str, float]]) -> tuple[float, float, float, str]:
    """Mean, 95 % interval and verdict of paired differences ``(run, difference)``."""
    lo, hi = bootstrap_ci(diffs)
    mean = float(np.mean([d for _, d in diffs]))
    return mean, lo, hi, verdict(lo, hi, len({run for run, _ in diffs}))


def _cells(judged: tuple[float, float, float, str], n: int) -> str:
    """A claim row's last cells: mean difference, 95 % CI, count, verdict."""
    mean, lo, hi, said = judged
    return f"{mean:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {n} | {said} |"


def verdict(lo: float, hi: float, runs: int) -> str:
    """'holds' / 'fails' when the interval excludes 0, from at least :data:`MIN_RUNS` trainings.

    One training's test cases show how that network varies, not how the method
    does from one training to the next: its interval earns no verdict.
    """
    if runs < MIN_RUNS:
        return f"none: {runs} training (a verdict needs {MIN_RUNS} seeds or folds)"
    return "holds" if lo > 0 else "fails" if hi < 0 else "inconclusive"


# ----------------------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return "-"
    return f"{v.mean():.3f} +- {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def dataset_section(kind: str, runs: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    classes = meta["classes"][kind]
    small = len(classes) - 1
    configs = [c for c in CONFIGS if any(c in r for r in runs.values())]
    lines = [f"## {kind}: {', '.join(runs)}", ""]
    asked = [  # what the command asked for, and what any run has
        c for c in CONFIGS if c in configs or (c in meta.get("configs", ()) and applies(c, kind))
    ]
    missing = [
        f"{c} ({sum(c not in r for r in runs.values())} of {len(runs)} runs)"
        for c in asked
        if any(c not in r for r in runs.values())
    ]
    if missing:
        lines += [f"Not yet run: {', '.join(missing)}. Rerun the command to finish them.", ""]
    dice_head = " | ".join(f"{c} Dice" for c in classes[1:])
    lines += [
        f"| configuration | train patch | window | {dice_head} | {classes[small]} HD95 | steps (cap) | best epoch | train s | memory GiB |",
        "|---" * (8 + small) + "|",
    ]
    for cfg in configs:
        entries = [r[cfg] for r in runs.values() if cfg in r]
        if all("same_as" in e for e in entries):
            lines.append(
                f"| {cfg} | same as {entries[0]['same_as']} (its patch is P) |" + " |" * (6 + small)
            )
            continue
        shown: set[int] = set()
        for key in ("own", "P", "E150", "E175"):
            window = entries[0]["windows"][key]["window"]
            if window in shown:
                continue
            shown.add(window)
            cases = [c for e in entries for c in e["windows"][key]["cases"].values()]
            dice = [_mean_sd([c["dice"][k] for c in cases]) for k in range(1, len(classes))]
            hd = _mean_sd([c["hd95"][small] for c in cases])
            label = f"{window}{' (own)' if key == 'own' else ''}"
            steps = f"{np.mean([e['steps'] for e in entries]):.0f} ({entries[0]['step_cap']})"
            best = f"{np.mean([e['best_epoch'] for e in entries]):.1f} of {np.mean([e['epochs'] for e in entries]):.1f}"
            secs = f"{np.mean([e['seconds'] for e in entries]):.0f}"
            capped = sum(bool(e.get("time_capped")) for e in entries)
            if capped:
                best += f" ({capped} of {len(entries)} stopped by the time limit)"
            memory = f"{max(e['memory'] for e in entries) / GIB:.3f}"
            first = key == "own"
            lines.append(
                f"| {cfg if first else ''} | {entries[0]['patch'] if first else ''} | {label} | {' | '.join(dice)} | {hd} | {steps if first else ''} | {best if first else ''} | {secs if first else ''} | {memory if first else ''} |"
            )
    reference = [r[NO_CONTEXT] for r in runs.values() if NO_CONTEXT in r]
    if reference:
        cases = [c for e in reference for c in e["windows"]["own"]["cases"].values()]
        dice = ["-"] * (small - 1) + [_mean_sd([c["dice"][small] for c in cases])]
        lines.append(
            f"| {NO_CONTEXT}: every thin tube as {classes[small]}, no network (what ignoring the context scores) | - | - | {' | '.join(dice)} |"
            + " - |" * 5
        )
    lines += ["", f"Claims ({classes[small]} Dice, paired over seeds x test cases):", ""]
    lines += [
        "| claim | paper | mean difference | 95 % CI | pairs | verdict |",
        "|---|---|---|---|---|---|",
    ]
    uses_context = [
        (c, "own", NO_CONTEXT, "own", "- (does it use the context at all?)")
        for c in configs
        if reference and not all("same_as" in r[c] for r in runs.values() if c in r)
    ]
    judged: dict[str, tuple[float, float, float, str]] = {}
    for a, wa, b, wb, paper in [*CLAIMS, *uses_context]:
        diffs = paired(runs, a, wa, b, wb, lambda c: c["dice"][small])
        name = f"{a} @{wa} > {b} @{wb}"
        if len(diffs) < 2:
            lines.append(f"| {name} | {paper} | - | - | {len(diffs)} | not run |")
            continue
        judged[name] = judge(diffs)
        lines.append(f"| {name} | {paper} | {_cells(judged[name], len(diffs))}")
    control = [
        c["dice"][small]
        for r in runs.values()
        if "unet-wide" in r
        for c in r["unet-wide"]["windows"]["own"]["cases"].values()
    ]
    if control:
        lines += ["", learnability(float(np.nanmean(control)), len(control), classes[small],
                                   judged.get(f"unet-wide @own > {NO_CONTEXT} @own"))]  # fmt: skip
    lines += cue_table(runs, configs, classes[small])
    lines += ["", *precision_recall(runs, [*configs, NO_CONTEXT], classes[small], small)]
    return [*lines, ""]


def cue_table(runs: dict[str, Any], configs: list[str], name: str) -> list[str]:
    """Does each network read the cue? :func:`cue_accuracy` over the test cases, against 0.5."""
    rows = []
    for cfg in configs:
        cues = [
            (run, c["cue"])
            for run, r in runs.items()
            if cfg in r and "same_as" not in r[cfg]
            for c in r[cfg]["windows"]["own"]["cases"].values()
            if np.isfinite(_cue(c))
        ]
        if len(cues) < 2:
            continue
        diffs = [(run, cue - 0.5) for run, cue in cues]
        judged = judge(diffs)
        rows.append(f"| {cfg} | {judged[0] + 0.5:.3f} | {_cells(judged, len(diffs))}")
    pairs = []
    for a, b in CUE_CLAIMS:
        diffs = paired(runs, a, "own", b, "own", _cue)
        if len(diffs) >= 2:
            pairs.append(f"| {a} > {b} | {_cells(judge(diffs), len(diffs))}")
    if pairs:
        pairs = [
            "",
            "The cue accuracy, paired (each at its own window):",
            "",
            "| claim | mean difference | 95 % CI | cases | verdict |",
            "|---|---|---|---|---|",
            *pairs,
        ]
    if not rows:
        return []
    return [
        "",
        f"Does each network read the cue? Balanced accuracy of its {name} call on the thin-tube "
        f"voxels (the mean of the {name}'s share called {name} and the look-alikes' share called "
        "anything else) at its own window: every labelling that ignores the context scores 0.5, "
        "one that reads the cue everywhere 1, whatever its tube boundaries. Cases with only one "
        "kind of thin tube are left out; networks whose predictions are not on disk (kept from "
        "another machine's results) are not listed.",
        "",
        "| network | cue accuracy | minus 0.5 | 95 % CI | cases | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        *pairs,
    ]


def learnability(
    mean: float, cases: int, name: str, against: tuple[float, float, float, str] | None
) -> str:
    """The control's line: learnt means >= :data:`LEARNABLE` and above ignoring the context.

    ``against``: the control's claim over :data:`NO_CONTEXT` (:func:`judge`), None where
    the run has no such reference.
    """
    head = (
        f"Learnability control: `unet-wide` (training patch covering 2D) reaches {name} Dice "
        f"{mean:.3f} over {cases} test cases"
    )
    if against is None:
        ok = mean >= LEARNABLE
        why = f">= {LEARNABLE}" if ok else f"BELOW {LEARNABLE}"
    else:
        d, lo, hi, said = against
        ok = mean >= LEARNABLE and said == "holds"
        why = (
            f"{'>=' if mean >= LEARNABLE else 'BELOW'} {LEARNABLE}; against labelling every thin "
            f"tube {name} ({NO_CONTEXT}): {d:+.3f}, [{lo:+.3f}, {hi:+.3f}], {said}"
        )
    if ok:
        return f"{head} ({why}): the task is learnable at these sizes."
    return (
        f"{head} ({why}): NOT shown learnable, so the phantom or the training is not good "
        "enough to judge the claims; read them with that in mind."
    )


def precision_recall(runs: dict[str, Any], configs: list[str], name: str, cls: int) -> list[str]:
    """Pooled precision and recall of the small class at each network's own window."""
    parts = []
    for cfg in configs:
        cases = [
            c
            for r in runs.values()
            if cfg in r and "same_as" not in r[cfg]
            for c in r[cfg]["windows"]["own"]["cases"].values()
            if "voxels_pred" in c
        ]
        if not cases:
            continue
        # Dice = 2 TP / (predicted + true)
        tp = sum(
            c["dice"][cls] * (c["voxels_pred"][cls] + c["voxels_true"][cls]) / 2 for c in cases
        )
        pred = sum(c["voxels_pred"][cls] for c in cases)
        true = sum(c["voxels_true"][cls] for c in cases)
        parts.append(f"{cfg} {tp / max(pred, 1):.2f} / {tp / max(true, 1):.2f}")
    if not parts:
        return []
    return [f"{name} precision / recall at each network's own window, pooled over the test cases: "
            + "; ".join(parts) + "."]  # fmt: skip


def report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# Accuracy: U-net, meU-net and cascades ({meta['sizes']} sizes)", ""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    if meta.get("trained_by"):  # a --report-only merge of another machine's results
        t = meta["trained_by"]
        lines += [
            f"Networks trained by `{t['command']}` on {t['machine']}, torch {t['torch']}; this "
            f"report written from its results by `{meta['command']}`, which trains nothing.",
            "",
        ]
    else:
        lines += [f"Made by `{meta['command']}` on {meta['machine']}, torch {meta['torch']}.", ""]
    lines += meta["setup"] + [""]
    for kind in DATASETS:
        runs = {k: v for k, v in results.items() if k.startswith(kind)}
        if runs:
            lines += dataset_section(kind, runs, meta)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- jobs


def job_argv(args: argparse.Namespace, dataset: str, seed: int | None, config: str) -> list[str]:
    """This command, narrowed to one (dataset, seed, configuration)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--sizes", args.sizes]
    argv += ["--datasets", dataset, "--configs", config, "--no-reference"]
    if seed is not None:
        argv += ["--seeds", str(seed)]
    for item in args.set:
        argv += ["--set", item]
    if args.phantom_shape:
        argv += ["--phantom-shape", *map(str, args.phantom_shape)]
    if args.context is not None:
        argv += ["--context", str(args.context)]
    return argv


@dataclasses.dataclass
class Job:
    """One (dataset, seed, configuration) trained in its own process and folder."""

    name: str
    argv: list[str]
    folder: Path
    members: list[Experiment]  # the runs it scores (brats4: both folds)
    config: str
    after: tuple[str, ...] = ()  # jobs whose networks it adopts (a cascade's stage-1 meU-nets)


def _adopt_stage1(job: Job, work: Path) -> None:
    """Copy the stage-1 meU-nets that other jobs trained into a cascade job's folder."""
    for run in job.members:
        post = job.folder / run.name / "post"
        for branch in ("meunet-k150", "meunet-k175"):
            source = work / "jobs" / f"{run.name}-{branch}" / run.name / "post"
            if not (source / "stage1" / branch).is_dir() or (post / "stage1" / branch).exists():
                continue
            if not post.exists():  # the cascade folder with meunet's marker, then the branch
                shutil.copytree(source, post, ignore=shutil.ignore_patterns("*.lock"))
            else:
                shutil.copytree(
                    source / "stage1" / branch, post / "stage1" / branch,
                    ignore=shutil.ignore_patterns("*.lock"),
                )  # fmt: skip
            log(f"{job.name}: adopts {branch} from {source.parent.parent.name}")


def _same_as_unet(job: Job, work: Path) -> bool:
    """A unet-P job whose run's unet job found the same-memory patch to be P: record it as that."""
    if job.config != "unet-P" or not job.after:
        return False
    plans = [
        json.loads(f.read_text()) for f in (work / "jobs" / job.after[0]).glob("memory-*.json")
    ]
    done = False
    for run in job.members:
        if plans and run.same_unet(plans[0]):
            run.save()
            done = True
    return done


def _jobs(
    runs: list[Experiment], configs: list[str], args: argparse.Namespace, work: Path,
    deadline: float,
) -> list[Job]:  # fmt: skip
    """The jobs for what is not cached yet, each with its folder made and its data linked."""
    jobs: list[Job] = []
    for config in configs:
        for run in runs:
            if run.ensure(config, cached_only=True):
                continue
            if not applies(config, run.name):
                continue
            if config == "unet-P" and run.unet_is_p():
                continue  # the same-memory U-net is the U-net at P: copied once `unet` is in
            kind = run.name.split("-")[0]
            brats = kind == "brats4"
            name = f"{kind}-{config}" if brats else f"{run.name}-{config}"
            if any(job.name == name for job in jobs):
                continue  # brats4's two folds are one job
            folder = work / "jobs" / name
            members = [r for r in runs if r.name.startswith("brats4")] if brats else [run]
            for r in members:
                mine = folder / r.name
                mine.mkdir(parents=True, exist_ok=True)
                for item in ("data", "bench.json"):
                    if (r.work / item).exists() and not (mine / item).exists():
                        (mine / item).symlink_to((r.work / item).resolve())
            if brats:
                for made in work.glob("brats4-x*"):
                    if not (folder / made.name).exists():
                        (folder / made.name).symlink_to(made.resolve())
            for plan in work.glob("memory-*.json"):
                shutil.copy(plan, folder / plan.name)
            argv = job_argv(args, kind, None if brats else run.base.seed, config)
            argv += ["--work", str(folder), "--out", str(folder / "report")]
            if math.isfinite(deadline):
                argv += ["--train-until", f"{deadline - SCORING:.0f}"]
            after: tuple[str, ...] = ()
            prefix = kind if brats else run.name
            if config in ("cascade-post", "cascade-pre"):
                after = (f"{prefix}-meunet-k150", f"{prefix}-meunet-k175")
            elif config == "unet-P" and "unet" in configs:
                after = (f"{prefix}-unet",)  # its plan may show unet-P to be unet
            jobs.append(Job(name, argv, folder, members, config, after))
    return jobs


def run_jobs(
    runs: list[Experiment], configs: list[str], args: argparse.Namespace, work: Path,
    deadline: float, write: Any,
) -> None:  # fmt: skip
    """Train and score the missing (dataset, seed, configuration) triples in parallel processes.

    Small networks leave a GPU mostly idle, so several trainings at once finish sooner. Each
    job works in its own folder ``WORK/jobs/<run>-<config>`` (datasets and the memory plan
    are linked from WORK, so every job trains on the same data) and measures the training
    memory its configuration needs while the others train. A post or pre cascade job starts
    once the meU-net jobs of its run have ended and adopts their networks as its stage 1
    (copies; without them it trains its own); a unet-P job waits for its run's unet job and
    is not run when that one's plan shows the same-memory patch to be P. Finished jobs' scores are merged into
    WORK and the report rewritten after each; jobs stop training ``SCORING`` seconds before
    ``deadline`` (a ``time.time()`` value) to score their best checkpoint, and any still
    running at ``deadline`` are stopped.
    """
    pending = _jobs(runs, configs, args, work, deadline)
    if not pending:
        return
    threads = max(1, (os.cpu_count() or 1) // min(args.jobs, len(pending)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log(
        f"{len(pending)} jobs, {args.jobs} at a time, {threads} threads each; logs in {work / 'jobs'}"
    )
    running: list[tuple[subprocess.Popen[bytes], Job]] = []

    def merge(job: Job) -> None:
        for r in job.members:
            store = job.folder / r.name / "scores.json"
            done = json.loads(store.read_text()) if store.is_file() else {}
            if job.config in done:
                r.results[job.config] = done[job.config]
                if job.config == "unet":
                    r.same_unet()
                r.save()
            else:
                log(f"{job.name}: no scores (see {job.folder / 'log.txt'})")

    def ready(job: Job) -> bool:  # what it adopts has ended (or is not run here)
        busy = {j.name for j in pending} | {j.name for _, j in running}
        return not busy & set(job.after)

    while pending or running:
        while len(running) < args.jobs and time.time() < deadline - SCORING:
            job = next((j for j in pending if ready(j)), None)
            if job is None:
                break
            pending.remove(job)
            if _same_as_unet(job, work):
                log(f"{job.name}: the same-memory U-net's patch is P, so it is that network")
                continue
            _adopt_stage1(job, work)
            with (job.folder / "log.txt").open("ab") as out:
                proc = subprocess.Popen(job.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
            running.append((proc, job))
        if time.time() >= deadline or (not running and pending):
            for proc, job in running:
                log(f"{job.name}: stopped at the deadline")
                proc.send_signal(signal.SIGTERM)
            for proc, _ in running:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for _, job in running:
                merge(job)  # a job may have finished between the last poll and the deadline
            if pending:
                log(f"not started before the deadline: {', '.join(j.name for j in pending)}")
            write()
            return
        for proc, job in list(running):
            if proc.poll() is not None:
                running.remove((proc, job))
                log(f"{job.name}: finished (exit {proc.returncode})")
                merge(job)
                write()
        time.sleep(1)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", choices=tuple(SIZES), default="small")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="phantom seeds")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--phantom-shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--context", type=float, default=None, help="cue distance D in voxels")
    p.add_argument("--work", default=None, help="folder for runs (default runs/accuracy-SIZES)")
    p.add_argument("--out", default=None, help="results prefix (default benchmarks/results/...)")
    p.add_argument("--note", default="", help="a paragraph put under the report's title")
    p.add_argument(
        "--jobs", type=int, default=1,
        help="train this many (dataset, seed, configuration) at once, each in its own process "
        "and folder under WORK/jobs (small networks leave a GPU mostly idle)",
    )  # fmt: skip
    p.add_argument(
        "--deadline", type=float, default=0,
        help=f"seconds after which no training goes on: {SCORING} s before it, trainings stop "
        "and their best checkpoint is scored (marked in the table; a rerun resumes them)",
    )  # fmt: skip
    p.add_argument("--train-until", type=float, default=math.inf, help=argparse.SUPPRESS)
    p.add_argument("--no-reference", action="store_true", help=argparse.SUPPRESS)  # jobs
    p.add_argument(
        "--resume-from", type=Path, default=None, metavar="JSON",
        help="an earlier invocation's results (its .json) whose work folder is gone, e.g. made "
        "on another machine with the same settings: its finished networks are kept, its "
        "missing and time-limited ones trained here (from the start)",
    )  # fmt: skip
    p.add_argument(
        "--report-only", action="store_true",
        help="train, measure and predict nothing: write the report from what the work folder "
        "and --resume-from hold, naming what is not yet run (safe for previews and merges; it "
        "adds the cue accuracy of predictions on disk to their cached scores)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.report_only and args.jobs > 1:
        p.error("--report-only trains nothing, so --jobs has no meaning with it")
    t_start, wall_start = time.perf_counter(), time.time()
    size = dict(SIZES[args.sizes])
    if args.phantom_shape:
        size["phantom_shape"] = tuple(args.phantom_shape)
    if args.context is not None:
        size["context"] = args.context
    base = override(size["train"], args.set)
    windows = windows_of(base)
    if not windows["P"] / 2 < size["context"] < windows["E150"] / 2:
        log(f"warning: D = {size['context']} is not between P/2 and E(1.5)/2 ({windows})")
    datasets = args.datasets or (["context"] if args.sizes == "paper" else list(DATASETS))
    configs = args.configs or list(size["configs"])
    work = Path(args.work or ROOT / "runs" / f"accuracy-{args.sizes}")
    prefix = Path(args.out or RESULTS / ("accuracy" if args.sizes == "small" else "accuracy_gpu"))

    claim_work(work, base, size)
    specs: list[RunSpec] = []
    seeds = args.seeds or size["seeds"]
    if "context" in datasets:
        specs += phantom_runs(size, work, seeds, size["context"])
    if "phantom" in datasets:
        specs += phantom_runs(size, work, seeds, 0.0)
    if "brats4" in datasets:
        specs += brats_runs(size, work)
    runs = []
    classes: dict[str, list[str]] = {}
    for name, seed, spec, phantom in specs:
        key = work / f"memory-{len(spec.channels)}ch-{spec.num_classes}cl.json"
        plan = json.loads(key.read_text()) if key.is_file() else {"bytes": {}}
        # with --jobs each job measures what its configuration needs, while others train
        measured = set(configs) <= set(plan.get("configs", ()))
        if args.jobs <= 1 and not args.report_only and not measured:
            log(f"measuring training memory ({len(spec.channels)} channels)")
            key.parent.mkdir(parents=True, exist_ok=True)
            every = sorted(set(configs) | set(plan.get("configs", ())))
            plan = memory_plan(
                base, len(spec.channels), spec.num_classes, size["wide_patch"], every
            )
            key.write_text(json.dumps({**plan, "configs": every}))
        runs.append(
            Experiment(name, seed, spec, work / name, base, plan, size["wide_patch"], phantom)
        )
        classes[name.split("-")[0]] = list(spec.classes)

    setup = [
        f"- Training (every network; `patch`, `model`, `k` vary): {json.dumps(base.to_dict())}. "
        f"Step cap {base.epochs} epochs x {base.patches_per_epoch} patches / batch {base.batch}; "
        f"early stopping after {base.patience} epochs without a better validation mean Dice.",
        f"- Windows: P = {windows['P']}, E(1.5) = {windows['E150']}, E(1.75) = {windows['E175']}; "
        "'own' is the network's `infer_patch` (E for a meU-net, its training patch otherwise; "
        "a cascade's stage 2 is a U-net at P and its stage-1 maps come from each branch's own window). "
        "Sliding windows overlap by half; votes fused.",
        "- `unet`: largest training patch (multiple of 16) whose measured step peak fits meU-net "
        "k = 1.75's; `unet-P`: U-net at P; `unet-wide`: the control at "
        f"{size['wide_patch']}, a patch covering 2D (not the same memory).",
        "- Memory: measured peak of one training step (live tensor bytes on CPU, "
        "`torch.cuda.max_memory_allocated` on CUDA); a cascade's is its largest stage's.",
        f"- context: {size.get('cases', 8)} phantom cases of {size['phantom_shape']} per seed, "
        f"thin tubes are hind-gut within D = {size['context']:g} voxels of a bright marker, "
        "background within D of a dark one; phantom: "
        "the classic phantom, hind-gut told by continuing the mid-gut. Per seed the last two "
        "cases are test, the one before validation. HD95 in micrometres.",
        f"- brats4: 3 classes (background, edema, tumour core), downsampled by {size['brats_factor']} "
        "per axis; fold A trains on pat0005/6 and tests on pat0003/4, fold B the reverse; "
        "validation on the training cases; HD95 in mm. Seed 0 for both folds.",
        NO_CONTEXT_LINE,
        f"- Confidence intervals: {BOOTSTRAP} bootstrap resamples of runs (seeds or folds), "
        "then of test cases within each; 'holds' when the 95 % interval lies above 0, 'fails' "
        f"when below, else 'inconclusive'; no verdict from fewer than {MIN_RUNS} runs (one "
        "training's test cases show that network's spread, not the method's).",
    ]
    machine = (
        torch.cuda.get_device_name()
        if base.device.startswith("cuda") and torch.cuda.is_available()
        else f"{platform.processor() or platform.machine()}, {_threads(torch.get_num_threads())}"
    )
    given = list(argv if argv is not None else sys.argv[1:])
    if "--note" in given:  # the note is printed under the title, not in the command
        i = given.index("--note")
        given[i : i + 2] = ["--note", "'...'"]
    command = " ".join(["python benchmarks/accuracy.py", *given])
    meta = {
        "sizes": args.sizes, "command": command, "machine": machine,
        "torch": torch.__version__, "setup": setup, "classes": classes, "note": args.note,
        "configs": configs,
    }  # fmt: skip

    def write() -> str:
        results = {r.name: r.results for r in runs if r.results}
        meta["seconds"] = round(time.perf_counter() - t_start)
        meta["work_seconds"] = {
            r.name: round(sum(network_seconds(r.results).values())) for r in runs
        }
        text = report(results, meta)
        text += (
            "\nTraining time summed over the networks above, each counted once (the post and "
            "pre cascades' stage 1 is the meU-net rows' networks): "
            f"{sum(meta['work_seconds'].values()) / 3600:.2f} h "
            f"(this invocation: {meta['seconds'] / 3600:.2f} h of wall time).\n"
        )
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "runs": results}, indent=1)
        )
        prefix.with_suffix(".md").write_text(text)
        return text

    if args.resume_from:
        local = any(r.results for r in runs)  # networks this work folder holds itself
        earlier = json.loads(args.resume_from.read_text())
        if earlier["meta"]["setup"][0] != setup[0]:
            sys.exit(f"{args.resume_from} was made with other training settings than these")
        for run in runs:
            for config, entry in earlier["runs"].get(run.name, {}).items():
                run.results.setdefault(config, entry)
        meta["setup"] = [*setup, f"- Resumed from: `{earlier['meta']['command']}`."]
        if args.report_only and not local:  # every network is the earlier invocation's
            meta["trained_by"] = earlier["meta"].get("trained_by") or {
                k: earlier["meta"][k] for k in ("command", "machine", "torch")
            }
            meta["setup"] = [line for line in earlier["meta"]["setup"] if line != NO_CONTEXT_LINE]
            at = next(i for i, x in enumerate(meta["setup"]) if x.startswith("- Confidence"))
            meta["setup"].insert(at, NO_CONTEXT_LINE)
    if not args.no_reference:  # the parent's report has it; a job's scores need not
        add_no_context(runs)
    for run in runs:  # networks scored before the cue was measured
        run.add_cue()
    if args.report_only:
        for run in runs:
            if "unet-P" in configs and "unet-P" not in run.results:
                run.same_unet()  # as `ensure` would record it
            missing = [
                c for c in configs if applies(c, run.name) and not run.ensure(c, cached_only=True)
            ]
            if missing:
                log(f"{run.name}: not finished (not run or time-limited): {', '.join(missing)}")
        print(write())
        return 0
    deadline = wall_start + args.deadline if args.deadline > 0 else math.inf
    if args.jobs > 1:
        run_jobs(runs, configs, args, work, deadline, write)
        print(write())
        return 0
    for run in runs:
        run.train_until = min(args.train_until, deadline - SCORING)
    for config in configs:  # configuration-major: every seed of one claim before the next
        for run in runs:
            if time.time() >= min(args.train_until, deadline - SCORING):
                break
            log(f"{run.name}: {config}")
            if run.ensure(config):
                write()
    print(write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
