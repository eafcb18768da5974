"""Training on the phantom: it learns, resumes exactly, survives SIGKILL, refuses foreign checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from meunet.cli.main import main
from meunet.data.phantom import make_phantom_dataset
from meunet.data.spec import load_spec
from meunet.errors import MeunetError
from meunet.models import load_checkpoint
from meunet.training.config import TrainConfig, load_config
from meunet.training.loop import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"encoder_channels": (4, 8, 16, 32, 32), "decoder_channels": (16, 8, 4, 4)}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantom cases (split 1 train, 1 val, 1 test)."""
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom_dataset(out, cases=3, shape=(64, 48, 48), seed=1, progress=False)


def _cfg(**kw: object) -> TrainConfig:
    base = dict(
        model="meunet",
        patch=32,
        k=1.5,
        batch=2,
        lr=3e-3,
        epochs=4,
        patience=50,
        bg_keep=0.2,
        device="cpu",
        **TINY,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _log(folder: Path) -> list[dict[str, str]]:
    with (folder / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_training_learns_on_the_phantom(tmp_path: Path) -> None:
    # about a CPU minute: U-net, channels (8, 16, 16, 32, 32), 32^3 patches, only foreground patches
    data = make_phantom_dataset(
        tmp_path / "ph", cases=3, shape=(96, 64, 64), seed=1, progress=False
    )
    cfg = _cfg(
        model="unet", epochs=30, patches_per_epoch=32, batch=4, bg_keep=0.0,
        encoder_channels=(8, 16, 16, 32, 32), decoder_channels=(16, 16, 8, 8),
    )  # fmt: skip
    best = train(cfg, load_spec(data), tmp_path / "run", progress=False)
    rows = _log(tmp_path / "run")
    assert len(rows) == 30
    assert float(rows[-1]["loss_total"]) < 0.5 * float(rows[0]["loss_total"])
    first = {c: float(rows[0][f"dice_{c}"]) for c in ("mid-gut", "hind-gut")}
    top = {c: max(float(r[f"dice_{c}"]) for r in rows) for c in first}
    assert top["mid-gut"] > max(0.7, first["mid-gut"] + 0.3), (first, top)
    assert top["hind-gut"] > first["hind-gut"] + 0.1, (
        first,
        top,
    )  # the tiny class starts to appear
    assert best.is_file() and (tmp_path / "run" / "curves.png").is_file()
    ckpt = load_checkpoint(best)
    assert ckpt["model"] == "unet" and ckpt["classes"] == ["background", "mid-gut", "hind-gut"]
    assert ckpt["best"] == pytest.approx(
        max((float(r["dice_mid-gut"]) + float(r["dice_hind-gut"])) / 2 for r in rows)
    )


def test_resume_equals_a_straight_run(phantom: Path, tmp_path: Path) -> None:
    spec = load_spec(phantom)
    cfg = _cfg(epochs=4, patches_per_epoch=8)
    train(cfg, spec, tmp_path / "straight", progress=False)
    train(dataclasses.replace(cfg, epochs=2), spec, tmp_path / "split", progress=False)
    train(cfg, spec, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert [r["epoch"] for r in _log(tmp_path / "split")] == ["1", "2", "3", "4"]


def test_a_foreign_checkpoint_is_refused(phantom: Path, tmp_path: Path) -> None:
    spec = load_spec(phantom)
    cfg = _cfg(epochs=1, patches_per_epoch=4)
    train(cfg, spec, tmp_path / "run", progress=False)
    with pytest.raises(MeunetError, match=r"trained with other settings \(patch: 32 -> 48\)"):
        train(
            dataclasses.replace(cfg, patch=48, epochs=2),
            spec,
            tmp_path / "run",
            resume=True,
            progress=False,
        )
    with pytest.raises(MeunetError, match=r"checkpoint of model 'meunet'.*this run builds 'unet'"):
        train(
            dataclasses.replace(cfg, model="unet", epochs=2),
            spec,
            tmp_path / "run",
            resume=True,
            progress=False,
        )
    with pytest.raises(MeunetError, match="holds a previous run"):
        train(cfg, spec, tmp_path / "run", progress=False)
    with pytest.raises(MeunetError, match="nothing to resume from"):
        train(cfg, spec, tmp_path / "empty", resume=True, progress=False)


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_on_another_dataset_is_refused(phantom: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom.parent, data)  # copy2: the same sizes and timestamps
    spec = load_spec(data / phantom.name)
    cfg = _cfg(epochs=1, patches_per_epoch=4)
    train(cfg, spec, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["dataset"]["spec"] == str(
        (data / phantom.name).resolve()
    )
    run = _snapshot(tmp_path / "run")
    more = dataclasses.replace(cfg, epochs=2)
    # another dataset.yaml: the same cases in another split
    other = data / "other.yaml"
    raw = yaml.safe_load((data / phantom.name).read_text())
    raw["split"]["train"], raw["split"]["val"] = raw["split"]["val"], raw["split"]["train"]
    other.write_text(yaml.safe_dump(raw))
    with pytest.raises(MeunetError, match=rf"{phantom.name}, but this run gives .*other\.yaml"):
        train(more, load_spec(other), tmp_path / "run", resume=True, progress=False)
    # the same dataset.yaml, a case file replaced
    label = spec.cases[spec.split["train"][0]].label
    assert label is not None
    original = data / "original"
    shutil.move(label, original)
    if original.is_dir():  # a fresh copy of the same voxels: new timestamps
        shutil.copytree(original, label, copy_function=shutil.copyfile)
    else:
        shutil.copyfile(original, label)
    with pytest.raises(MeunetError, match=r"which has changed since \(files .* modified since: "):
        train(more, spec, tmp_path / "run", resume=True, progress=False)
    assert _snapshot(tmp_path / "run") == run  # nothing written by a refused resume
    # a copy of the dataset that kept the timestamps is the same dataset
    shutil.rmtree(label) if label.is_dir() else label.unlink()
    shutil.move(original, label)
    train(more, load_spec(shutil.copy2(data / phantom.name, data / "copy.yaml")), tmp_path / "run",
          resume=True, progress=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2


def test_a_checkpoint_carrying_a_pickled_object_is_rejected(phantom: Path, tmp_path: Path) -> None:
    spec = load_spec(phantom)
    cfg = _cfg(epochs=1, patches_per_epoch=4)
    train(cfg, spec, tmp_path / "run", progress=False)
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["payload"] = Path("/etc/passwd")  # any non-weights object
    torch.save(ckpt, last)
    with pytest.raises(MeunetError, match="pickled objects that are refused"):
        train(
            dataclasses.replace(cfg, epochs=2), spec, tmp_path / "run", resume=True, progress=False
        )


def test_sigkill_mid_epoch_then_resume(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        "model: meunet\npatch: 32\nbatch: 1\nepochs: 50\npatience: 100\npatches_per_epoch: 12\nbg_keep: 0.3\n"
        "device: cpu\nencoder_channels: [4, 8, 16, 32, 32]\ndecoder_channels: [16, 8, 4, 4]\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "meunet",
        "train",
        str(cfg_path),
        "--data",
        str(phantom),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "log.csv").exists() and len(_log(out)) >= 2):
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.5)  # into the next epoch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = load_checkpoint(out / "last.pt")["epoch"]  # whatever the moment, last.pt loads
    assert done >= 2
    assert (
        main(
            [
                "train",
                str(cfg_path),
                "--data",
                str(phantom),
                "--out",
                str(out),
                "--resume",
                "--quiet",
                "--set",
                f"epochs={done + 1}",
            ]
        )
        == 0
    )
    assert load_checkpoint(out / "last.pt")["epoch"] == done + 1
    epochs = [int(r["epoch"]) for r in _log(out)]
    assert epochs[-1] == done + 1 and sorted(set(epochs)) == list(range(1, done + 2))


SAVER = r"""
import sys, torch
from meunet.models import create_model
from meunet.training.checkpoint import save_training_state
model = create_model("unet")
blob = torch.zeros(64 * 2**20 // 4)  # 64 MiB: a save takes long enough to be interrupted
i = 0
while True:
    save_training_state(sys.argv[1], model, epoch=i, blob=blob)
    i += 1
"""


def test_no_half_written_checkpoint_after_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)])
        time.sleep(1.5 + 0.37 * attempt)  # land at different moments of a save
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if path.exists():
            assert "state_dict" in load_checkpoint(path)  # complete, never truncated
    assert path.exists()


def test_config_file_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        "configs/meunet.yaml",
        ["patch=96", "checkpointing=true", "encoder_channels=[8, 16, 32, 64, 64]"],
    )
    assert (cfg.model, cfg.patch, cfg.k, cfg.checkpointing, cfg.expanded) == (
        "meunet",
        96,
        1.5,
        True,
        144,
    )
    assert cfg.encoder_channels == (8, 16, 32, 64, 64)
    for bad, message in [
        (["patch=abc"], "patch='abc' is not a valid int"),
        (["depth=3"], r"unknown training settings \['depth'\]"),
        (["patch"], "write key=value"),
        (["patch=17"], "patch must be an even number >= 16"),
    ]:
        with pytest.raises(MeunetError, match=message):
            load_config(CONFIGS / "meunet.yaml", bad)
    with pytest.raises(MeunetError, match="training config not found"):
        load_config(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    "name", ["unet", "meunet", "meunet-k175", "cascade-post", "cascade-pre", "lowres"]
)
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model == {"meunet-k175": "meunet", "lowres": "unet"}.get(name, name)


@pytest.mark.parametrize("name", ["unet", "meunet", "cascade"])
def test_cpu_configs_load_with_the_demo_sizes(name: str) -> None:
    from meunet.demo import DEMO_CONFIG
    from meunet.training.cascade import stage1_configs

    cfg = load_config(CONFIGS / "cpu" / f"{name}.yaml")
    sizes = ("encoder_channels", "decoder_channels", "patch", "batch", "lr", "patches_per_epoch")
    assert {k: getattr(cfg, k) for k in sizes} == {k: getattr(DEMO_CONFIG, k) for k in sizes}
    assert cfg.device == "cpu" and cfg.epochs == DEMO_CONFIG.epochs
    assert cfg.model == {"cascade": "meunet"}.get(name, name)
    if name == "cascade":  # the base train-cascade derives both stage-1 meU-nets from
        windows = [c.window for c in stage1_configs("post", cfg).values()]
        assert windows == [48, 64]


def test_train_command_writes_logs_curves_and_checkpoints(
    phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = [
        "train",
        str(CONFIGS / "meunet.yaml"),
        "--data",
        str(phantom),
        "--out",
        str(out),
        "--quiet",
    ]
    sets = [
        "patch=32",
        "epochs=2",
        "patches_per_epoch=4",
        "device=cpu",
        "encoder_channels=[4, 8, 16, 32, 32]",
        "decoder_channels=[16, 8, 4, 4]",
    ]
    assert main(argv + [x for kv in sets for x in ("--set", kv)]) == 0
    assert {"best.pt", "last.pt", "log.csv", "curves.png"} <= {p.name for p in out.iterdir()}
    assert "best checkpoint" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                str(CONFIGS / "cascade-post.yaml"),
                "--data",
                str(phantom),
                "--out",
                str(tmp_path / "c"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "run `meunet train-cascade`" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["post", "lowres"])
def test_train_cascade_produces_a_stage2_model(phantom: Path, tmp_path: Path, mode: str) -> None:
    from meunet.training.cascade import train_cascade

    base = _cfg(epochs=1, patches_per_epoch=4)
    best = train_cascade(load_spec(phantom), tmp_path / "c", mode=mode, base=base, progress=False)
    ckpt = load_checkpoint(best)
    assert ckpt["model"] == ("cascade-post" if mode == "post" else "cascade-pre")
    branches = 2 if mode == "post" else 1
    assert ckpt["config"]["extra_channels"] == 3 * branches
    preds = sorted((tmp_path / "c" / "stage1").glob("*/predictions/*.zarr"))
    assert len(preds) == 3 * branches  # every case, every branch
    # a rerun finds every stage finished and only resumes stage 2 (which has nothing left to do)
    assert (
        train_cascade(load_spec(phantom), tmp_path / "c", mode=mode, base=base, progress=False)
        == best
    )


def test_train_cascade_rerun_with_changed_settings_or_data_is_refused(
    phantom: Path, tmp_path: Path
) -> None:
    from meunet.training.cascade import train_cascade

    data = tmp_path / "data"
    shutil.copytree(phantom.parent, data)
    spec = load_spec(data / phantom.name)
    base = _cfg(epochs=1, patches_per_epoch=4)
    train_cascade(spec, tmp_path / "c", mode="lowres", base=base, progress=False)
    stage = tmp_path / "c" / "stage1" / "lowres"
    assert (stage / "predictions" / "stage.json").is_file()
    # killed after stage 1 finished, before stage 2 began: stage 1 must not be reused blindly
    shutil.rmtree(tmp_path / "c" / "stage2")
    (tmp_path / "c" / "cascade.json").unlink()
    before = _snapshot(tmp_path / "c")
    with pytest.raises(MeunetError, match=rf"{stage}: was trained with other settings \(lr: "):
        train_cascade(spec, tmp_path / "c", mode="lowres", base=dataclasses.replace(base, lr=1e-2),
                      progress=False)  # fmt: skip
    image = spec.cases[spec.split["train"][0]].images[0]
    chunk = next(p for p in sorted(image.rglob("*")) if p.is_file()) if image.is_dir() else image
    os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10**9))
    with pytest.raises(MeunetError, match=rf"{stage}: was trained on the dataset .* changed since"):
        train_cascade(spec, tmp_path / "c", mode="lowres", base=base, progress=False)
    assert _snapshot(tmp_path / "c") == before


def test_log_rows_missing_a_value_keep_the_columns(tmp_path: Path) -> None:
    # an epoch whose roulette kept no patches has no losses: its row must not shift the columns
    from meunet.training.loop import _append_csv

    log = tmp_path / "log.csv"
    _append_csv(log, {"epoch": 1, "loss_total": 0.5, "seconds": 2.0})
    _append_csv(log, {"epoch": 2, "seconds": 3.0})
    rows = _log(tmp_path)
    assert [r["seconds"] for r in rows] == ["2.0", "3.0"]
    assert rows[1]["loss_total"] == "nan"
