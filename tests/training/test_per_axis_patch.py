"""Per-axis patches from the config to training, the checkpoint, memory, plan and predict.

The dataset is fly-like: sections 20 deep with about 11:1 anisotropy
(``tests/data/test_patch_size.py`` holds the full 20 x 512 x 512 stack;
training here uses 20 x 96 x 96 to stay fast on a CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import meunet
from meunet.data.io import open_volume
from meunet.data.normalise import channel_stats
from meunet.data.patch_size import patch_shape
from meunet.data.sampling import PatchSampler, SamplerConfig
from meunet.data.spec import load_spec
from meunet.errors import MeunetError
from meunet.inference import predict_array
from meunet.memory import MemoryConfig, plan_patch
from meunet.models import create_model, load_checkpoint, load_model
from meunet.training.checkpoint import check_settings
from meunet.training.config import (
    TrainConfig,
    checkpoint_window,
    expanded_patch,
    load_config,
    resolve_patch,
)
from tests.data.test_patch_size import fly_dataset

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
SHAPE = (20, 96, 96)


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model="unet", patch=[16, 64, 64], batch=2, epochs=1, patches_per_epoch=2, bg_keep=1.0,
        device="cpu", **TINY,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def fly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fly_dataset(tmp_path_factory.mktemp("fly"), SHAPE, cases=3)


def test_config_forms(tmp_path: Path) -> None:
    cube = TrainConfig(patch=64)
    assert (cube.patch, cube.expanded, cube.window) == (64, 96, 96)  # as before
    cfg = TrainConfig(patch=[16, 64, 64])
    assert cfg.patch == (16, 64, 64)
    assert cfg.expanded == (32, 96, 96) == expanded_patch((16, 64, 64), 1.5)  # k per axis
    assert cfg.window == (32, 96, 96)
    assert TrainConfig(patch=[64, 64, 64]).patch == 64  # a cube is its side
    assert TrainConfig(model="unet", patch=[16, 64, 64]).window == (16, 64, 64)
    assert TrainConfig(patch=[16, 64, 64], infer_patch=[16, 128, 128]).window == (16, 128, 128)
    assert TrainConfig(patch=32, infer_patch="48").window == 48
    # checkpoints record the per-axis values, and read them back
    d = cfg.to_dict()
    assert d["patch"] == [16, 64, 64] and d["infer_patch"] == 0
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig.from_dict(TrainConfig(patch=48).to_dict()).patch == 48
    # a config file, nested or flat, and --set
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"sampler": {"patch": [16, 64, 64]}, "inference": {"infer_patch": [16, 96, 96]}}
        )
    )
    loaded = load_config(path)
    assert (loaded.patch, loaded.window) == ((16, 64, 64), (16, 96, 96))
    assert load_config(None, ["sampler.patch=[16,48,48]"]).patch == (16, 48, 48)
    assert load_config(None, ["patch=16,48,48", "model.name=unet"]).window == (16, 48, 48)
    assert load_config(None, ["sampler.patch=auto"]).patch == "auto:64"


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("sampler.patch=[16,64]", r"patch=.\[16,64\]. is not a valid int, nor three sides"),
        ("sampler.patch=[16,63,64]", r"patch sides must be even numbers >= 16, got \[16, 63, 64\]"),
        ("sampler.patch=[8,64,64]", "patch sides must be even"),
        ("inference.infer_patch=[16,64,65]", "infer_patch must be 0 .* got \\[16, 64, 65\\]"),
        ("inference.infer_patch=auto", "infer_patch=.auto. is not a valid int, nor three sides"),
    ],
)
def test_bad_per_axis_settings_are_refused(setting: str, match: str) -> None:
    with pytest.raises(MeunetError, match=match):
        load_config(None, [setting])


def test_auto_is_resolved_from_the_dataset(fly: Path) -> None:
    cfg = load_config(None, ["sampler.patch=auto", "model.name=unet"])
    with pytest.raises(MeunetError, match="patch: auto is chosen from the dataset"):
        _ = cfg.window
    spec = load_spec(fly)
    resolved = resolve_patch(cfg, spec)
    # 20 x 96 x 96 at 50 x 4.6 x 4.6: z is capped at 16 by the volume, y and x by theirs
    assert resolved.patch == (16, 96, 96)
    assert resolve_patch(_cfg(), spec) == _cfg()  # a given patch is kept


def test_auto_for_a_low_resolution_stage_fits_the_downsampled_volumes(fly: Path) -> None:
    cfg = load_config(None, ["sampler.patch=auto", "model.name=unet", "sampler.downsample=2"])
    low = resolve_patch(cfg, load_spec(fly)).patch
    # downsampled by 2: 10 x 48 x 48 voxels of 100 x 9.2 x 9.2; a full-resolution choice
    # (16, 96, 96) would be mostly padding
    assert low != (16, 96, 96)
    assert low[1] <= 48 and low[2] <= 48


def test_resume_compares_sizes_by_value() -> None:
    check_settings({"patch": 64}, Path("x"), {"patch": [64, 64, 64], "infer_patch": 0})
    check_settings(
        {"patch": [16, 64, 64], "infer_patch": [16, 96, 96]},
        Path("x"),
        {"patch": (16, 64, 64), "infer_patch": (16, 96, 96)},
    )
    with pytest.raises(MeunetError, match=r"patch: \(16, 64, 64\) -> \(16, 48, 64\)"):
        check_settings(
            {"patch": [16, 64, 64]}, Path("x"), {"patch": [16, 48, 64], "infer_patch": 0}
        )


def test_old_checkpoints_give_their_cube_window() -> None:
    assert checkpoint_window({"model": "unet", "train_config": {"patch": 32}}) == 32
    assert checkpoint_window({"model": "meunet", "infer_patch": [32, 96, 96]}) == (32, 96, 96)
    assert checkpoint_window({"model": "meunet", "train_config": {"patch": [16, 64, 64]}}) == (
        32,
        96,
        96,
    )


def test_sampler_draws_per_axis_patches(fly: Path) -> None:
    spec = load_spec(fly)
    cfg = SamplerConfig(patch=(16, 32, 48), expanded=(32, 48, 64), bg_keep=1.0)
    sampler = PatchSampler(spec, ["em0"], cfg)
    refs = sampler.candidates()
    # z: 0, 8 (8 + 16 >= 20); y: 0..64 step 16; x: 0..48 step 24
    assert sorted({r.start[0] for r in refs}) == [0, 8]
    assert sorted({r.start[1] for r in refs}) == [0, 16, 32, 48, 64]
    assert sorted({r.start[2] for r in refs}) == [0, 24, 48]
    ds = sampler.dataset(refs)
    counts = np.zeros(spec.num_classes, np.int64)
    label = spec.remap_labels(open_volume(spec.cases["em0"].label)[...])
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 16, 32, 48) and item["label"].shape == (16, 32, 48)
        assert item["expanded_image"].shape == (1, 32, 48, 64)
        assert item["expanded_label"].shape == (16, 24, 32)
        z, y, x = refs[i].start
        crop = label[z : z + 16, y : y + 32, x : x + 48]  # inside y and x; z may overhang
        np.testing.assert_array_equal(item["label"][: crop.shape[0]].numpy(), crop)
        counts += np.bincount(crop.ravel(), minlength=spec.num_classes)
    assert sampler.class_counts(refs).tolist() == counts.tolist()


@pytest.fixture(scope="module")
def trained(fly: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny U-net and a tiny meU-net, one step each, on per-axis patches."""
    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for model in ("unet", "meunet"):
        cfg = _cfg(model=model, patch=[16, 48, 48])
        runs[model] = meunet.train(cfg, fly, out / model, progress=False)
    return runs


def test_training_a_unet_and_a_meunet_on_per_axis_patches(trained: dict[str, Path]) -> None:
    unet = load_checkpoint(trained["unet"])
    assert unet["train_config"]["patch"] == [16, 48, 48]
    assert unet["infer_patch"] == [16, 48, 48]
    me = load_checkpoint(trained["meunet"])
    assert me["train_config"]["patch"] == [16, 48, 48]
    assert me["infer_patch"] == [32, 80, 80]  # E = 1.5 P per axis, multiples of 16
    assert checkpoint_window(me) == (32, 80, 80)
    assert np.isfinite(me["val_dice"]).any()


def test_training_warns_once_of_a_patch_thicker_than_the_volumes(
    fly: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meunet.train(_cfg(patch=32, patches_per_epoch=1), fly, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: training: patch 32^3 is larger than 1 volume(s)") == 1
    assert "(em0 20x96x96: z 20 < 32)" in err and "16x32x32" in err


def test_auto_training_records_the_chosen_patch(fly: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(_cfg(), patch="auto:32")
    best = meunet.train(cfg, fly, tmp_path / "auto", progress=False)
    # a budget of 32^3 at 50 x 4.6 x 4.6: 16 deep, 48 x 32 (y grows first on a tie)
    assert load_checkpoint(best)["train_config"]["patch"] == [16, 48, 32]


def test_predict_with_a_per_axis_window_equals_the_engine(
    fly: Path, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_spec(fly)
    vol = open_volume(spec.cases["em2"].images[0])
    mean, std = channel_stats(vol)
    image = ((vol[...] - mean) / std).astype(np.float32)[None]
    model = load_model(trained["meunet"])
    for window in ((16, 48, 64), (32, 80, 80)):
        out = meunet.predict(
            trained["meunet"], vol.path, tmp_path / f"{window[1]}.zarr", patch=list(window),
            device="cpu", progress=False,
        )  # fmt: skip
        expected = predict_array(model, image, window, batch_size=2)
        np.testing.assert_array_equal(open_volume(out)[...], expected)
    err = capsys.readouterr().err
    assert err.count("warning: predict: the window 32x80x80 is larger than the volume") == 1
    assert "along z 20 < 32" in err and "--patch 16 80 80" in err
    # the checkpoint's own window by default
    default = meunet.predict(trained["meunet"], vol.path, tmp_path / "d.zarr", device="cpu",
                             progress=False)  # fmt: skip
    np.testing.assert_array_equal(open_volume(default)[...], open_volume(out)[...])


def test_predict_cli_takes_three_values(
    fly: Path, trained: dict[str, Path], tmp_path: Path
) -> None:
    from meunet.cli.main import main

    spec = load_spec(fly)
    src = str(spec.cases["em2"].images[0])
    args = [
        "predict",
        "--model",
        str(trained["unet"]),
        "--input",
        src,
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([*args, "--output", str(tmp_path / "a.zarr"), "--patch", "16", "48", "48"]) == 0
    assert main([*args, "--output", str(tmp_path / "b.zarr")]) == 0  # its infer_patch: the same
    np.testing.assert_array_equal(
        open_volume(tmp_path / "a.zarr")[...], open_volume(tmp_path / "b.zarr")[...]
    )
    assert main([*args, "--output", str(tmp_path / "c.zarr"), "--patch", "16", "48"]) != 0


def test_memory_measures_a_per_axis_step() -> None:
    from meunet.memory import measure_here

    cfg = MemoryConfig(model="meunet", patch=(16, 32, 32), batch=2, steps=2, **TINY)  # type: ignore[arg-type]
    assert cfg.expanded == (32, 48, 48)
    assert MemoryConfig.from_json(cfg.to_json()) == cfg
    r = measure_here(cfg)
    assert r["config"]["patch"] == [16, 32, 32] and r["peak_bytes"] > 0


def test_plan_scales_a_per_axis_shape() -> None:
    seen: list[Any] = []

    def fake(cfg: MemoryConfig) -> dict[str, Any]:
        seen.append(cfg.patch)
        return {"peak_bytes": 1000 * int(np.prod(patch_shape(cfg.patch))), "config": {}}

    base = MemoryConfig(model="unet", patch=(16, 64, 64))
    result = plan_patch(base, budget=1000 * 32 * 128 * 128, measure_fn=fake)
    assert result.cfg is not None and result.cfg.patch == (32, 128, 128)
    # each measured patch keeps the base's proportions (z a quarter of y and x, at least 16)
    assert seen[0] == (16, 32, 32)
    assert all(p[1] == p[2] and p[0] <= max(16, p[1] // 4 + 8) for p in map(patch_shape, seen))


def test_window_engine_runs_per_axis_windows() -> None:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, **TINY).eval()
    image = np.random.default_rng(0).normal(size=(1, 20, 40, 50)).astype(np.float32)
    labels = predict_array(model, image, (16, 32, 48))
    assert labels.shape == (20, 40, 50) and labels.dtype == np.uint8
    # a cube as three equal sides is the cube
    np.testing.assert_array_equal(
        predict_array(model, image, (32, 32, 32)), predict_array(model, image, 32)
    )


def test_plan_and_memory_commands_take_per_axis_patches(
    fly: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import meunet.memory as memory
    import meunet.memory.plan as plan
    from meunet.cli.main import main

    seen: list[MemoryConfig] = []

    def fake(cfg: MemoryConfig) -> dict[str, Any]:
        seen.append(cfg)
        peak = 1000 * int(np.prod(patch_shape(cfg.patch)))
        return {"peak_bytes": peak, "expanded": cfg.expanded, "device_name": "cpu",
                "config": {**cfg.__dict__}, "between_steps_bytes": 0, "step_seconds": 0.0,
                "saved_for_backward_bytes": 0, "rss_growth_bytes": 0}  # fmt: skip

    monkeypatch.setattr(memory, "measure", fake)
    assert (
        main(["memory", "--model", "meunet", "--patch", "16", "64", "64", "--device", "cpu"]) == 0
    )
    assert seen[-1].patch == (16, 64, 64) and seen[-1].expanded == (32, 96, 96)
    assert "patch 16x64x64 (expanded 32x96x96, k 1.5)" in capsys.readouterr().out

    monkeypatch.setattr(plan, "measure", fake)
    budget = ["plan", "--budget", f"{1000 * 16 * 96 * 96}B", "--device", "cpu", "--quiet"]
    wide = ["--budget", f"{1000 * 32 * 128 * 128}B", "--model", "unet", "--patch", "16", "64", "64"]
    assert main([*budget, *wide]) == 0  # scales 16 x 64 x 64, z a quarter of y and x
    assert "=> largest patch: 32x128x128" in capsys.readouterr().out
    # auto: the spacing-aware shape of the dataset, scaled; a thin z is named
    assert main([*budget, "--model", "unet", "--patch", "auto", "--data", str(fly)]) == 0
    captured = capsys.readouterr()
    assert "patch: auto -> patch 16x96x96" in captured.err
    assert "=> largest patch: 16x96x96" in captured.out
    assert main([*budget, "--patch", "auto"]) == 2  # which dataset?
    assert "add --data DATASET.yaml" in capsys.readouterr().err


def test_dask_blocks_with_a_per_axis_window_equal_one_process(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    distributed = pytest.importorskip("distributed")
    from meunet.inference.blocks import predict_dask
    from meunet.inference.stream import predict_volume

    rng = np.random.default_rng(1)
    image = rng.normal(size=(45, 40, 36)).astype(np.float32)
    image[10:30, 8:24, 8:24] += 3  # some structure, so that the classes vary
    np.save(tmp_path / "x.npy", image)
    window = (16, 32, 48)
    ref = predict_volume(load_model(trained["unet"]), [open_volume(tmp_path / "x.npy")],
                         tmp_path / "ref.zarr", window, progress=False)  # fmt: skip
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    )
    with distributed.Client(cluster) as client:
        out = predict_dask(trained["unet"], [tmp_path / "x.npy"], tmp_path / "dask.zarr", client,
                           list(window), block_depth=16, device="cpu", progress=False)  # fmt: skip
    cluster.close()
    np.testing.assert_array_equal(open_volume(out)[...], open_volume(ref)[...])
