"""DDP training under torchrun (CPU, gloo, 2 processes) against one process with the same global batch.

Two processes on 2 patches each compute, per step, the mean of the two
halves' gradients: exactly what one process computes with ``micro_batches=2``
on the same 4 patches. Their weights must agree to float rounding (gloo
sums in another order, and Adam divides by small second moments, so the
tolerance is stated per quantity below, not bit-equality).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meunet.data.phantom import make_phantom_dataset

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this PyTorch has no gloo backend",
)

SETTINGS = [
    "model=meunet", "patch=32", "k=1.5", "batch=4", "lr=0.003", "bg_keep=0.0",
    "patches_per_epoch=16", "encoder_channels=[8,16,16,32,32]", "decoder_channels=[16,16,8,8]",
    "device=cpu", "seed=3",
]  # fmt: skip
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "meunet.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    return make_phantom_dataset(out, cases=3, shape=(64, 48, 48), seed=1, progress=False)


def _meunet(procs: int, *args: str, sets: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``meunet ARGS --set ...`` in one process, or under torchrun in ``procs``."""
    cmd = ["-m", "meunet", *args, *(a for s in sets for a in ("--set", s))]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default; the same for every run
    return subprocess.run(
        [sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=600
    )


def _train(
    data: Path, out: Path, epochs: int, procs: int, *extra: str, resume: bool = False
) -> None:
    args = ["train", str(CONFIG), "--data", str(data), "--out", str(out), "--quiet"]
    args += ["--resume"] if resume else []
    done = _meunet(procs, *args, sets=[*SETTINGS, f"epochs={epochs}", *extra])
    assert done.returncode == 0, done.stderr[-3000:]


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    _train(data, tmp / "ddp", 2, 2)
    _train(data, tmp / "micro", 2, 1, "micro_batches=2")
    return {"ddp": tmp / "ddp", "micro": tmp / "micro"}


def test_one_set_of_checkpoints_and_logs(runs: dict[str, Path]) -> None:
    assert sorted(p.name for p in runs["ddp"].iterdir()) == [
        ".meunet.json",  # the run folder is meunet's (a rerun may replace what it holds)
        "best.pt",
        "curves.png",
        "last.pt",
        "log.csv",
    ]
    rows = _log(runs["ddp"])
    assert [r["epoch"] for r in rows] == ["1", "2"] and {r["processes"] for r in rows} == {"2"}
    assert float(rows[-1]["loss_total"]) < float(rows[0]["loss_total"])  # the loss falls


def test_two_processes_equal_one_process_with_two_micro_batches(runs: dict[str, Path]) -> None:
    # the same losses, step for step (epoch means), to float rounding
    for ra, rb in zip(_log(runs["ddp"]), _log(runs["micro"]), strict=True):
        assert float(ra["loss_total"]) == pytest.approx(float(rb["loss_total"]), rel=1e-4)
        for c in ("mid-gut", "hind-gut"):  # validation sees the same running statistics
            assert float(ra[f"dice_{c}"]) == pytest.approx(float(rb[f"dice_{c}"]), abs=0.02)
    # weights: Adam's steps are about lr in size whatever the gradient, so a rounding
    # difference in a near-zero gradient can move an element by up to lr; a gradient
    # that was not averaged over the ranks moves thousands of elements by many lr
    a, b = _weights(runs["ddp"] / "last.pt"), _weights(runs["micro"] / "last.pt")
    lr = 0.003
    for name, wa in a.items():
        if wa.is_floating_point():
            assert float((wa - b[name]).abs().max()) <= lr, name


def test_resume_continues_the_distributed_run(
    runs: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(runs["ddp"], out)
    _train(data, out, 3, 2, resume=True)
    rows = _log(out)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[:2] == _log(runs["ddp"])  # the first two epochs are kept, not redone
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 3


def test_a_batch_the_processes_cannot_share_is_refused(data: Path, tmp_path: Path) -> None:
    args = ["train", str(CONFIG), "--data", str(data), "--out", str(tmp_path / "x")]
    done = _meunet(2, *args, sets=[*SETTINGS, "epochs=1", "batch=3", "micro_batches=1"])
    assert done.returncode != 0
    assert "multiple of processes x micro_batches" in done.stderr


def test_train_cascade_under_torchrun(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cascade"
    sets = ["patch=32", "batch=4", "epochs=1", "patches_per_epoch=8", "device=cpu",
            "encoder_channels=[8,16,16,32,32]", "decoder_channels=[16,16,8,8]"]  # fmt: skip
    done = _meunet(2, "train-cascade", "--data", str(data), "--out", str(out), "--quiet", sets=sets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stage-2 checkpoint") == 1  # one process reports
    for branch in ("meunet-k150", "meunet-k175"):
        preds = out / "stage1" / branch / "predictions"
        # the two processes shared the cases; every case is there
        assert sorted(p.name for p in preds.glob("*.zarr")) == [
            "case_000.zarr",
            "case_001.zarr",
            "case_002.zarr",
        ]
        assert (preds / "DONE").is_file()
    assert (out / "cascade.json").is_file() and (out / "stage2" / "best.pt").is_file()
