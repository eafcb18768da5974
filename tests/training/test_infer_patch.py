"""``infer_patch``: from the config to the checkpoint, validation, predict, cascade.json and Dask."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import meunet.inference.blocks as blocks
import meunet.inference.cascade as inference_cascade
import meunet.inference.stream as stream
import meunet.training.cascade as training_cascade
import meunet.training.loop as loop
from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume
from meunet.data.phantom import make_phantom_dataset
from meunet.data.spec import load_spec
from meunet.errors import MeunetError
from meunet.models import create_model, load_checkpoint, load_model, save_model
from meunet.training.checkpoint import check_compatible
from meunet.training.config import TrainConfig, checkpoint_window, load_config

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model="meunet", patch=32, k=1.5, batch=2, epochs=1, patches_per_epoch=2, bg_keep=0.2,
        device="cpu", **TINY,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantom cases (split 1 train, 1 val, 1 test)."""
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom_dataset(out, cases=3, shape=(48, 40, 40), seed=1, progress=False)


@pytest.mark.parametrize(
    ("settings", "window"),
    [
        ({"model": "meunet", "patch": 32, "k": 1.5}, 48),  # E
        ({"model": "meunet", "patch": 32, "k": 1.75}, 64),  # 56 rounded to a multiple of 16
        ({"model": "unet", "patch": 32}, 32),  # P
        ({"model": "cascade-post", "patch": 32}, 32),
        ({"model": "meunet", "patch": 32, "infer_patch": 96}, 96),  # explicit wins
        ({"model": "unet", "patch": 32, "infer_patch": 16}, 16),
    ],
)
def test_window_resolves_the_default(settings: dict[str, Any], window: int) -> None:
    assert TrainConfig(**settings).window == window


@pytest.mark.parametrize("value", [-2, 2, 8, 15, 33, 47])
def test_a_bad_infer_patch_is_refused(value: int) -> None:
    with pytest.raises(MeunetError, match=f"infer_patch must be 0 .* got {value}"):
        load_config(None, [f"infer_patch={value}"])


def test_checkpoints_without_the_field_resolve_the_default() -> None:
    assert checkpoint_window({"model": "meunet", "infer_patch": 80}) == 80
    # older checkpoints: the training settings' default, else the model name's
    assert checkpoint_window({"model": "meunet", "train_config": {"patch": 32, "k": 1.5}}) == 48
    assert checkpoint_window({"model": "unet", "train_config": {"patch": 16}}) == 16
    assert checkpoint_window({"model": "unet"}) == TrainConfig().patch
    # a setting this version no longer knows does not stop the lookup
    assert checkpoint_window({"model": "unet", "train_config": {"patch": 32, "gone": 1}}) == 32


@pytest.fixture(scope="module")
def trained(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One epoch of a tiny meU-net (P 32, E 48), recording the window validation used."""
    out = tmp_path_factory.mktemp("run")
    used: list[int] = []
    real = loop.predict_array

    def spy(model: Any, image: np.ndarray, patch: int, *args: Any, **kw: Any) -> np.ndarray:
        used.append(patch)
        return real(model, image, patch, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "predict_array", spy)
        best = loop.train(_cfg(), load_spec(phantom), out, progress=False)
    return {"best": best, "out": out, "validated_with": used}


def test_validation_uses_the_window_and_the_checkpoint_records_it(trained: dict) -> None:
    assert trained["validated_with"] == [48]  # one validation case, one epoch: E, not P = 32
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(trained["out"] / name)
        assert ckpt["infer_patch"] == 48  # resolved
        assert ckpt["train_config"]["infer_patch"] == 0  # as given
        assert checkpoint_window(ckpt) == 48


def test_an_explicit_infer_patch_reaches_validation(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[int] = []
    monkeypatch.setattr(loop, "predict_array", lambda m, image, patch, *a, **k: (
        used.append(patch) or np.zeros(image.shape[1:], np.uint8)))  # fmt: skip
    cfg = _cfg(model="unet", infer_patch=40)
    loop.train(cfg, load_spec(phantom), tmp_path / "run", progress=False)
    assert used == [40]
    assert load_checkpoint(tmp_path / "run" / "best.pt")["infer_patch"] == 40


def _predict_window(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    used: list[int] = []
    real = stream.predict_volume

    def spy(model: Any, inputs: Any, output: Any, patch: int, *args: Any, **kw: Any) -> Any:
        used.append(patch)
        return real(model, inputs, output, patch, *args, **kw)

    monkeypatch.setattr(stream, "predict_volume", spy)
    assert main(argv) == 0
    return used[-1]


def test_predict_defaults_to_the_checkpoint_window_and_patch_overrides_it(
    trained: dict, phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(phantom)
    image = spec.cases[spec.split["test"][0]].images[0]
    argv = ["predict", "--model", str(trained["best"]), "--input", str(image), "--quiet"]
    assert _predict_window([*argv, "--output", str(tmp_path / "a.zarr")], monkeypatch) == 48
    out = str(tmp_path / "b.zarr")
    assert _predict_window([*argv, "--output", out, "--patch", "32"], monkeypatch) == 32
    # a checkpoint written before infer_patch was recorded: the default resolves to E
    ckpt = load_checkpoint(trained["best"])
    del ckpt["infer_patch"], ckpt["train_config"]["infer_patch"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    argv[2] = str(old)
    assert _predict_window([*argv, "--output", str(tmp_path / "c.zarr")], monkeypatch) == 48


def test_a_checkpoint_from_before_infer_patch_still_resumes(trained: dict) -> None:
    path = trained["out"] / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["infer_patch"], ckpt["train_config"]["infer_patch"]
    model = load_model(path)
    check_compatible(ckpt, path, model, _cfg().to_dict())  # no error
    with pytest.raises(MeunetError, match="infer_patch"):
        check_compatible(ckpt, path, model, _cfg(infer_patch=64).to_dict())


def _fake_train(calls: list[TrainConfig]) -> Any:
    """Stands in for ``train``: saves an untrained tiny network as training would."""

    def fake(cfg: TrainConfig, spec: Any, out: Path, resume: bool = False,
             extra: Any = None, progress: bool = True) -> Path:  # fmt: skip
        calls.append(cfg)
        branches = len(next(iter(extra.values()))) if extra else 0
        model = create_model(
            cfg.model, in_channels=len(spec.channels), num_classes=spec.num_classes,
            extra_channels=branches * spec.num_classes, **TINY,
        )  # fmt: skip
        save_model(out / "best.pt", model, train_config=cfg.to_dict(), infer_patch=cfg.window)
        return out / "best.pt"

    return fake


def test_cascade_training_and_prediction_use_each_stage_window(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[TrainConfig] = []
    made: list[int] = []
    monkeypatch.setattr(training_cascade, "train", _fake_train(calls))

    def make_map(model: Any, inputs: Any, target: Path, patch: int, *a: Any, **k: Any) -> None:
        made.append(patch)
        target.parent.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(training_cascade, "predict_branch", make_map)
    spec = load_spec(phantom)
    training_cascade.train_cascade(spec, tmp_path / "c", "post", _cfg(), progress=False)
    assert [c.window for c in calls] == [48, 64, 32]  # k = 1.5, k = 1.75, stage 2
    assert made == [48] * 3 + [64] * 3  # stage-1 maps of every case, each branch's window
    manifest = tmp_path / "c" / "cascade.json"
    written = json.loads(manifest.read_text())
    assert [b["infer_patch"] for b in written["stage1"]] == [48, 64]
    assert [b["patch"] for b in written["stage1"]] == [32, 32]
    assert written["stage2"]["infer_patch"] == 32

    # prediction reads the windows back: stage-1 maps at 48 and 64, stage 2 at 32
    used: list[int] = []

    def branch(model: Any, inputs: Any, target: Any, patch: int, *a: Any, **k: Any) -> Any:
        used.append(patch)
        return inputs[0]

    monkeypatch.setattr(inference_cascade, "predict_branch", branch)
    monkeypatch.setattr(inference_cascade, "predict_volume",
                        lambda model, inputs, output, patch, *a, **k: used.append(patch))  # fmt: skip
    image = open_volume(spec.cases[spec.split["test"][0]].images[0])
    inference_cascade.predict_cascade(manifest, [image], tmp_path / "p.zarr", progress=False)
    assert used == [48, 64, 32]

    # and so does the blockwise (Dask) cascade
    dask_used: list[int] = []
    monkeypatch.setattr(blocks, "predict_dask",
                        lambda ckpt, inputs, out, client, patch, *a, **k: dask_used.append(patch))  # fmt: skip
    blocks.predict_cascade_dask(manifest, [image.path], tmp_path / "d.zarr", client=None)
    assert dask_used == [48, 64, 32]

    # a manifest from before infer_patch was recorded: its maps were made with the patch
    for entry in (*written["stage1"], written["stage2"]):
        del entry["infer_patch"]
    manifest.write_text(json.dumps(written))
    stage1, stage2 = inference_cascade.read_manifest(manifest)
    assert [b["infer_patch"] for b in stage1] == [32, 32] and stage2["infer_patch"] == 32


class _NoWorkers:
    def scheduler_info(self) -> dict:
        return {"workers": {}}


def test_dask_defaults_to_the_checkpoint_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(model="unet", patch=16, infer_patch=32)
    model = create_model("unet", in_channels=1, num_classes=2, **TINY)
    save_model(tmp_path / "m.pt", model, train_config=cfg.to_dict(), infer_patch=cfg.window)
    write_volume(tmp_path / "x.zarr", np.zeros((40, 20, 20), np.float32))
    planned: list[int] = []

    class Planned(Exception):
        pass

    def plan(depth: int, patch: int, step: int, core: int) -> list:
        planned.append(patch)
        raise Planned  # the window is settled; nothing needs to run

    monkeypatch.setattr(blocks, "plan_blocks", plan)
    args = (tmp_path / "m.pt", [tmp_path / "x.zarr"], tmp_path / "o.zarr", _NoWorkers())
    for patch in (0, 16):
        with pytest.raises(Planned):
            blocks.predict_dask(*args, patch, progress=False)
    assert planned == [32, 16]  # the recorded window, then the override


def test_cascade_stage1_configs_inherit_an_explicit_window() -> None:
    configs = training_cascade.stage1_configs("post", _cfg(infer_patch=80))
    assert [c.window for c in configs.values()] == [80, 80]
    assert dataclasses.replace(_cfg(infer_patch=80), model="cascade-post").window == 80
