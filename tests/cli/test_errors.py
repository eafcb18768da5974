"""The command line's error policy: bad input is one line and exit 2, a bug keeps its traceback.

Every refused command here also leaves nothing behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import meunet
from meunet.cli.commands import info
from meunet.cli.main import REPORT, main
from meunet.data.io import write_volume
from meunet.errors import MeunetError
from meunet.inference import predict_array
from meunet.inference.stream import predict_volume
from meunet.models import UNetConfig, create_model, load_model, save_model
from meunet.training.checkpoint import load_training_state, save_training_state
from meunet.training.config import TrainConfig
from meunet.training.loop import resolve_device

TINY = {"encoder_channels": (2, 4, 4, 4, 4), "decoder_channels": (4, 4, 4, 2)}
# the predictors' refusal of a batch size, which names "auto" (from free GPU memory) beside numbers
BATCH_SIZE = r"batch size .*(or 'auto'.* whole number >= 1|whole number >= 1 or 'auto'), got {}"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A tiny 1-channel model (patch 16), a 20^3 image and a label volume beside it."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, **TINY).eval()
    save_model(tmp_path / "m.pt", model, train_config={"patch": 16})
    rng = np.random.default_rng(0)
    write_volume(tmp_path / "img.zarr", rng.random((20, 20, 20)).astype(np.float32))
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:9, 5:9, 5:9] = 1
    write_volume(tmp_path / "lab.zarr", labels)
    return {
        "model": tmp_path / "m.pt",
        "image": tmp_path / "img.zarr",
        "labels": tmp_path / "lab.zarr",
    }


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


def _predict(files: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return ["predict", "--model", str(files["model"]), "--input", str(files["image"]),
            "--output", str(output), "--quiet", *extra]  # fmt: skip


# -- main(): meunet's own errors, and everything else ----------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("boom"), KeyError("boom")])
def test_an_unexpected_exception_keeps_its_traceback_and_asks_for_a_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, error: Exception
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(info, "run", broken)
    status = main(["info", "whatever.zarr"])
    err = capsys.readouterr().err
    assert status not in (0, 2)
    assert "Traceback (most recent call last)" in err and f"{type(error).__name__}: " in err
    assert err.rstrip().endswith(f"meunet info: {REPORT}")
    assert "this is a bug in meunet; please report it with the command and this traceback" in err


def test_a_meunet_error_is_exactly_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def refused(args: argparse.Namespace) -> int:
        raise MeunetError("scan.zarr: shape (1, 2) is not 3D; give a (z, y, x) volume")

    monkeypatch.setattr(info, "run", refused)
    assert main(["info", "scan.zarr"]) == 2
    assert capsys.readouterr().err == (
        "meunet info: error: scan.zarr: shape (1, 2) is not 3D; give a (z, y, x) volume\n"
    )


# -- item 7 and friends: option values refused by argparse, before anything runs ---------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch", "0"], "argument --batch: must be at least 1, got 0"),
        (["--batch", "-1"], "argument --batch: must be at least 1, got -1"),
        (["--overlap", "1"], "argument --overlap: must lie in [0, 1)"),
        (["--overlap", "-0.1"], "argument --overlap: must lie in [0, 1)"),
        (["--block-depth", "-3"], "argument --block-depth: must be at least 0"),
    ],
)
def test_predict_option_values_are_checked_by_argparse(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(_predict(files, tmp_path / "out.zarr", *extra))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "IMG", "OUT/c.zarr", "--chunks", "0", "0", "0"], "argument --chunks: must be at least 1"),
        (["phantom", "--out", "OUT/ph", "--cases", "0"], "argument --cases: must be at least 1, got 0"),
        (["overlay", "IMG", "LAB", "--class", "0", "--out", "OUT/o.png"], "argument --class: must be at least 1"),
        (["evaluate", "--pred", "LAB", "--truth", "LAB", "--classes", "1"], "argument --classes: must be at least 2"),
    ],
)  # fmt: skip
def test_other_option_values_are_checked_by_argparse(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    names = {"IMG": str(files["image"]), "LAB": str(files["labels"])}
    argv = [names.get(a, a.replace("OUT", str(out))) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# -- item 7 in the library: the predictors check their settings before writing -----------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, BATCH_SIZE.format(0)),
        ({"batch_size": -1}, BATCH_SIZE.format(-1)),
        ({"overlap": 1.0}, r"overlap must lie in \[0, 1\)"),
        ({"fusion": "max"}, "fusion must be one of"),
    ],
)
def test_predict_volume_checks_its_settings_before_writing(
    files: dict[str, Path], tmp_path: Path, kwargs: dict, message: str
) -> None:
    from meunet.data.io import open_volume

    model = load_model(files["model"])
    with pytest.raises(MeunetError, match=message):
        predict_volume(model, [open_volume(files["image"])], tmp_path / "p.zarr", 16, progress=False, **kwargs)  # fmt: skip
    assert not (tmp_path / "p.zarr").exists()
    with pytest.raises(MeunetError, match=message):
        predict_array(model, np.zeros((1, 20, 20, 20), np.float32), 16, **kwargs)


# -- checkpoints: empty, corrupt, pickled, inconsistent -----------------------------------------


def _broken_checkpoints(files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    good = torch.load(files["model"], weights_only=True)
    out = {}
    out["empty"] = tmp_path / "empty.pt"
    out["empty"].write_bytes(b"")
    out["garbage"] = tmp_path / "garbage.pt"
    out["garbage"].write_bytes(np.random.default_rng(0).bytes(500))
    out["pickled"] = tmp_path / "pickled.pt"
    torch.save({**good, "args": argparse.Namespace(x=1)}, out["pickled"])
    out["config"] = tmp_path / "config.pt"
    torch.save({**good, "config": {**good["config"], "encoder_channels": [2, 4, 4, 4]}}, out["config"])  # fmt: skip
    out["weights"] = tmp_path / "weights.pt"
    state = dict(good["state_dict"])
    state.pop(next(iter(state)))
    torch.save({**good, "state_dict": state}, out["weights"])
    return out


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("empty", "empty.pt: empty file (0 bytes), not a checkpoint"),
        ("garbage", "garbage.pt: not a meunet checkpoint: cannot read it"),
        ("pickled", "pickled.pt: carries pickled objects that are refused for safety (argparse.Namespace)"),
        ("config", "config.pt: its model description does not build a network (decoder_channels needs 3"),
        ("weights", "weights.pt: its weights do not fit the network its config describes (Missing key"),
    ],
)  # fmt: skip
def test_a_broken_checkpoint_is_one_line(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    which: str,
    message: str,
) -> None:
    broken = _broken_checkpoints(files, tmp_path)[which]
    files = {**files, "model": broken}
    assert main(_predict(files, tmp_path / "out.zarr")) == 2
    err = _one_line(capsys.readouterr().err)
    assert message in err
    assert not (tmp_path / "out.zarr").exists()


def test_the_safety_refusal_does_not_advise_weights_only_false(
    files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(MeunetError) as info:
        load_model(_broken_checkpoints(files, tmp_path)["pickled"])
    text = str(info.value)
    assert (
        "do not retry with weights_only=False" in text and "re-save the weights with meunet" in text
    )
    assert "Re-running" not in text and "trust" not in text and "add_safe_globals" not in text


def test_resuming_from_weights_that_do_not_fit_is_a_meunet_error(tmp_path: Path) -> None:
    model = create_model("unet", in_channels=1, num_classes=2, **TINY)
    state = model.state_dict()
    state.pop(next(iter(state)))
    settings = TrainConfig(model="unet").to_dict()
    save_training_state(tmp_path / "last.pt", model, train_config=settings)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.save({**ckpt, "state_dict": state}, tmp_path / "last.pt")
    with pytest.raises(MeunetError, match=r"last\.pt: its weights do not fit"):
        load_training_state(tmp_path / "last.pt", model, settings, torch.device("cpu"))


# -- devices, network shapes, training settings ----------------------------------------------


def test_an_unknown_device_is_one_line(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_predict(files, tmp_path / "out.zarr", "--device", "bogus")) == 2
    assert "device 'bogus' is not one meunet runs on: use auto, cpu, cuda or cuda:N" in _one_line(
        capsys.readouterr().err
    )
    assert not (tmp_path / "out.zarr").exists()
    for name in ("tpu", "meta", "cuda:x"):
        with pytest.raises(MeunetError, match="is not one meunet runs on"):
            resolve_device(name)


@pytest.mark.parametrize(
    ("setting", "message", "not_in"),
    [
        ("device=tpu", "device must be auto, cpu, cuda or cuda:N, got 'tpu'", "Expected one of"),
        ("encoder_channels=[0,0,0,0,0]", "encoder_channels must all be >= 1, got [0, 0, 0, 0, 0]", "weight"),
        ("patches_per_epoch=-1", "patches_per_epoch must be >= 0, got -1", "max_patches"),
        ("workers=-1", "workers must be >= 0, got -1", "num_workers"),
        ("lr=0", "lr must be a positive number, got 0.0", "Invalid learning rate"),
    ],
)  # fmt: skip
def test_training_settings_are_checked_and_named_as_the_user_wrote_them(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    setting: str,
    message: str,
    not_in: str,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: unet\npatch: 16\nepochs: 1\n")
    (tmp_path / "d.yaml").write_text(
        f"classes: [background, thing]\ncases:\n  a: {{image: {files['image']}, label: {files['labels']}}}\n"
        "  b: {image: img.zarr, label: lab.zarr}\nsplit: {train: [a], val: [b]}\n"
    )
    argv = [
        "train",
        str(config),
        "--data",
        str(tmp_path / "d.yaml"),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main([*argv, "--quiet", "--set", setting]) == 2
    err = _one_line(capsys.readouterr().err)
    assert message in err and not_in not in err
    assert not (tmp_path / "run").exists()


def test_a_network_with_empty_layers_is_refused() -> None:
    with pytest.raises(MeunetError, match=r"encoder_channels must all be >= 1"):
        UNetConfig(encoder_channels=(0, 0, 0, 0, 0))
    with pytest.raises(MeunetError, match=r"decoder_channels must all be >= 1"):
        create_model("unet", decoder_channels=(64, 32, 0, 16))


# -- messages that point to the fix -----------------------------------------------------------


def test_max_memory_names_a_readable_size(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_predict(files, tmp_path / "out.zarr", "--max-memory", "1KB")) == 2
    err = _one_line(capsys.readouterr().err)
    assert "0.00 GiB" not in err and "KiB beyond the interpreter, over --max-memory 1KB" in err
    assert not (tmp_path / "out.zarr").exists()


def test_overlay_of_a_class_that_is_absent_is_refused(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["overlay", str(files["image"]), str(files["labels"]), "--out", str(tmp_path / "o.png")]
    assert main([*argv, "--class", "7"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "lab.zarr: class 7 does not occur in these labels (classes present: [1])" in err
    assert not (tmp_path / "o.png").exists()


# -- item 18: what the command line tells a new user ------------------------------------------


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"meunet {meunet.__version__}"


@pytest.mark.parametrize("command", ["train", "train-cascade", "demo"])
def test_help_lists_the_set_keys(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key in ("encoder_channels", "patches_per_epoch", "workers", "bg_keep", "device"):
        assert key in out
    if command == "train":
        assert "patch (64)" in out and "encoder_channels ([16,32,64,128,128])" in out


def test_predict_help_says_it_resumes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "An unfinished output of the same prediction" in out
        and "is resumed where it stopped" in out
    )


def test_train_resume_says_where_it_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from meunet.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "ph", cases=3, shape=(32, 32, 32), progress=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: unet\nencoder_channels: [2, 4, 4, 4, 4]\ndecoder_channels: [4, 4, 4, 2]\n"
        "patch: 16\nbatch: 2\nepochs: 1\npatches_per_epoch: 2\namp: false\ndevice: cpu\n"
    )
    argv = ["train", str(config), "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main([*argv, "--resume", "--set", "epochs=2"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from epoch 2 of 2 ({tmp_path / 'run' / 'last.pt'}: 1 done" in err
    assert main([*argv, "--resume", "--set", "epochs=2"]) == 0
    assert "finished after epoch 2" in capsys.readouterr().err
