"""The streaming predictor equals the in-memory one, resumes after a crash, and checks its inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from meunet.data.io import open_volume, write_volume
from meunet.data.sampling import channel_stats
from meunet.errors import MeunetError, VolumeError
from meunet.inference import predict_array
from meunet.inference.stream import predict_volume
from meunet.models import create_model

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
SHAPE = (37, 29, 41)  # nothing divisible by the window


def _model(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(kw.pop("name", "unet"), in_channels=2, num_classes=3, **TINY, **kw)  # type: ignore[arg-type]
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(
            torch.randn(2, 2, 32, 32, 32) * 2 + 1,
            *(
                [torch.rand(2, model.cfg.extra_channels, 32, 32, 32)]
                if model.cfg.extra_channels
                else []
            ),
        )
    return model.eval()


@pytest.fixture
def volumes(tmp_path: Path) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for c in range(2):
        data = (rng.normal(size=SHAPE) * (c + 1) + 100 * c).astype(np.float32)
        path = tmp_path / f"ch{c}.zarr"
        write_volume(path, data, spacing=(2.0, 1.0, 1.0), chunks=(8, 16, 16))
        paths.append(path)
    return [open_volume(p) for p in paths]


def _in_memory(
    model: torch.nn.Module, vols: list, fusion: str, extra: np.ndarray | None = None
) -> np.ndarray:
    image = np.stack(
        [(v[...] - m) / s for v, (m, s) in zip(vols, (channel_stats(v) for v in vols), strict=True)]
    ).astype(np.float32)
    return predict_array(model, image, 16, extra, fusion, batch_size=1)


@pytest.mark.parametrize("fusion", ["vote", "prob"])
def test_streaming_equals_in_memory(volumes: list, tmp_path: Path, fusion: str) -> None:
    model = _model()
    out = predict_volume(
        model, volumes, tmp_path / "pred.zarr", 16, fusion=fusion, batch_size=1, progress=False
    )
    pred = open_volume(out)
    assert pred.dtype == np.uint8 and pred.spacing == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(pred[...], _in_memory(model, volumes, fusion))


def test_an_all_background_output_stores_every_chunk(volumes: list, tmp_path: Path) -> None:
    # zarr leaves out chunks equal to the fill value by default; meunet's reader would then
    # (rightly) refuse its own output as damaged
    model = _model()
    background = torch.tensor([10.0, 0.0, 0.0]).view(1, 3, 1, 1, 1)
    model.register_forward_hook(lambda m, i, out: torch.zeros_like(out) + background)
    out = predict_volume(model, volumes, tmp_path / "pred.zarr", 16, progress=False)
    arr = zarr.open_array(out)
    assert arr.nchunks_initialized == arr.nchunks
    np.testing.assert_array_equal(open_volume(out)[...], 0)


def test_stage2_with_stage1_maps_equals_in_memory(volumes: list, tmp_path: Path) -> None:
    model = _model(name="cascade-post", extra_channels=6)
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 3, SHAPE).astype(np.uint8) for _ in range(2)]
    paths = [tmp_path / f"s1_{i}.zarr" for i in range(2)]
    for p, lab in zip(paths, labels, strict=True):
        write_volume(p, lab)
    onehot = np.concatenate(
        [np.eye(3, dtype=np.float32)[lab].transpose(3, 0, 1, 2) for lab in labels]
    )
    out = predict_volume(
        model,
        volumes,
        tmp_path / "pred.zarr",
        16,
        extra=[open_volume(p) for p in paths],
        batch_size=1,
        progress=False,
    )
    np.testing.assert_array_equal(open_volume(out)[...], _in_memory(model, volumes, "vote", onehot))


def test_a_crash_leaves_an_unfinished_output_and_a_rerun_resumes(
    volumes: list, tmp_path: Path
) -> None:
    model = _model()
    expected = _in_memory(model, volumes, "vote")
    calls = {"n": 0}
    forward = model.forward

    def dying(*args: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 50:  # in the fourth row of windows
            raise RuntimeError("killed")
        return forward(*args, **kw)

    model.forward = dying  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        predict_volume(model, volumes, tmp_path / "pred.zarr", 16, batch_size=1, progress=False)
    with pytest.raises(VolumeError, match="never finished"):
        open_volume(tmp_path / "pred.zarr")
    full = (
        len(range(0, 37, 8)) * 3 * 4
    )  # windows: z 0, 8, 16, 24 (+32?) x y 0, 8, 16 x x 0, 8, 16, 24
    calls["n"] = -(10**9)  # no more crashes
    predict_volume(model, volumes, tmp_path / "pred.zarr", 16, batch_size=1, progress=False)
    resumed_calls = calls["n"] + 10**9
    # slices 0..23 were written; rows z = 16 and 24 (the first overlaps unwritten slices) are redone
    assert resumed_calls == 2 * 15 < full
    np.testing.assert_array_equal(open_volume(tmp_path / "pred.zarr")[...], expected)


@pytest.mark.parametrize("same_times", [False, True], ids=["new-file", "same-size-and-mtime"])
def test_a_rerun_on_a_changed_input_starts_again(
    volumes: list, tmp_path: Path, same_times: bool
) -> None:
    # an export that failed half-way is replaced by a corrected one of the same name and shape;
    # the unfinished output (meunet's own, made from the old file) must not be resumed
    ch0 = Path(volumes[0].path)
    old = volumes[0][...]
    shutil.rmtree(ch0)
    write_volume(ch0, old, spacing=(2.0, 1.0, 1.0), chunks=(8, 16, 16), compressors=None)
    volumes = [open_volume(ch0), volumes[1]]
    model = _model()
    calls = {"n": 0}
    forward = model.forward

    def dying(*args: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 50:
            raise RuntimeError("killed")
        return forward(*args, **kw)

    model.forward = dying  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        predict_volume(model, volumes, tmp_path / "pred.zarr", 16, batch_size=1, progress=False)
    times = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in ch0.rglob("*") if p.is_file()}
    shutil.rmtree(ch0)
    corrected = old[::-1].copy()  # same shape and dtype, other content
    write_volume(ch0, corrected, spacing=(2.0, 1.0, 1.0), chunks=(8, 16, 16), compressors=None)
    if same_times:  # a copy that kept size and timestamps: only the voxel sample tells
        assert sorted(p for p in ch0.rglob("*") if p.is_file()) == sorted(times)
        for p, (size, t) in times.items():
            assert p.stat().st_size == size
            os.utime(p, ns=(t, t))
    volumes = [open_volume(ch0), volumes[1]]
    calls["n"] = -(10**9)
    predict_volume(model, volumes, tmp_path / "pred.zarr", 16, batch_size=1, progress=False)
    assert calls["n"] + 10**9 == len(range(0, 37, 8)) * 3 * 4  # every window: started again
    np.testing.assert_array_equal(
        open_volume(tmp_path / "pred.zarr")[...], _in_memory(model, volumes, "vote")
    )


def test_other_output_formats(volumes: list, tmp_path: Path) -> None:
    model = _model()
    out = predict_volume(model, volumes, tmp_path / "pred.nii.gz", 16, progress=False)
    assert not (tmp_path / "pred.nii.gz.partial.zarr").exists()
    vol = open_volume(out)
    assert vol.shape == SHAPE and vol.spacing == (2.0, 1.0, 1.0)


def test_input_errors(volumes: list, tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(MeunetError, match="takes 2 input channel"):
        predict_volume(model, volumes[:1], tmp_path / "p.zarr", 16, progress=False)
    write_volume(tmp_path / "odd.zarr", np.zeros((37, 29, 40), np.float32))
    with pytest.raises(MeunetError, match="all inputs must share one grid"):
        predict_volume(
            model,
            [volumes[0], open_volume(tmp_path / "odd.zarr")],
            tmp_path / "p.zarr",
            16,
            progress=False,
        )
    with pytest.raises(MeunetError, match="even number >= 16"):
        predict_volume(model, volumes, tmp_path / "p.zarr", 15, progress=False)


def test_complex_input_is_refused(volumes: list, tmp_path: Path) -> None:
    data = np.ones(SHAPE, np.complex64) * (1 + 2j)
    write_volume(tmp_path / "c.npy", data)
    with pytest.raises(MeunetError, match=r"c\.npy: image dtype complex64 is not a real number"):
        predict_volume(
            _model(), [volumes[0], open_volume(tmp_path / "c.npy")], tmp_path / "p.zarr", 16,
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "p.zarr").exists()  # refused before the output is touched


@pytest.mark.parametrize(("value", "shown"), [(3, "0..3"), (-1, "-1..2"), (-2, "-2..2")])
def test_stage1_values_outside_the_classes_are_refused(
    volumes: list, tmp_path: Path, value: int, shown: str
) -> None:
    model = _model(name="cascade-post", extra_channels=3)
    lab = np.random.default_rng(1).integers(0, 3, SHAPE).astype(np.int8)
    lab[30, 20, 40] = value  # would raise IndexError, or (negative) pick a class from the end
    write_volume(tmp_path / "s1.zarr", lab)
    with pytest.raises(MeunetError) as info:
        predict_volume(
            model, volumes, tmp_path / "p.zarr", 16, extra=[open_volume(tmp_path / "s1.zarr")],
            progress=False,
        )  # fmt: skip
    assert str(info.value) == (
        f"{tmp_path / 's1.zarr'}: label map holds values {shown}, but the model has 3 classes "
        "(0..2); pass the stage-1 prediction made for this model"
    )
    assert not (tmp_path / "p.zarr").exists()


def test_predict_command(volumes: list, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from meunet.cli.main import main
    from meunet.models import save_model

    model = _model()
    save_model(tmp_path / "m.pt", model, train_config={"patch": 16})
    args = [
        "predict",
        "--model",
        str(tmp_path / "m.pt"),
        "--output",
        str(tmp_path / "p.zarr"),
        "--quiet",
    ]
    args += [x for v in volumes for x in ("--input", v.path)]
    assert main([*args, "--batch", "1", "--fusion", "prob"]) == 0
    np.testing.assert_array_equal(
        open_volume(tmp_path / "p.zarr")[...], _in_memory(model, volumes, "prob")
    )
    assert main([*args, "--max-memory", "100KB"]) == 2
    assert "over --max-memory 100KB; use a smaller --patch" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "none.pt"),
                "--input",
                volumes[0].path,
                "--output",
                str(tmp_path / "q.zarr"),
            ]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(10, 12, 9), (50, 16, 20), (17, 40, 11)])
def test_small_and_anisotropic_shapes(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(3)
    vols = []
    for c in range(2):
        write_volume(
            tmp_path / f"c{c}.zarr",
            rng.normal(size=shape).astype(np.float32),
            spacing=(3.0, 0.5, 0.5),
        )
        vols.append(open_volume(tmp_path / f"c{c}.zarr"))
    model = _model()
    out = predict_volume(model, vols, tmp_path / "p.zarr", 16, batch_size=1, progress=False)
    np.testing.assert_array_equal(open_volume(out)[...], _in_memory(model, vols, "vote"))


@pytest.mark.parametrize(("overlap", "fusion"), [(0.25, "vote"), (0.75, "prob"), (0.0, "vote")])
def test_other_overlaps_equal_in_memory(
    volumes: list, tmp_path: Path, overlap: float, fusion: str
) -> None:
    model = _model()
    out = predict_volume(
        model,
        volumes,
        tmp_path / "p.zarr",
        16,
        fusion=fusion,
        batch_size=1,
        progress=False,
        overlap=overlap,
    )
    image = np.stack(
        [
            (v[...] - m) / s
            for v, (m, s) in zip(volumes, (channel_stats(v) for v in volumes), strict=True)
        ]
    )
    expected = predict_array(
        model, image.astype(np.float32), 16, None, fusion, batch_size=1, overlap=overlap
    )
    np.testing.assert_array_equal(open_volume(out)[...], expected)


@pytest.mark.slow
def test_votes_do_not_wrap_at_extreme_overlap(tmp_path: Path) -> None:
    # P = 40 at --overlap 0.99 (step 1): the centre voxel of a 79^3 volume lies in all
    # 40^3 windows and collects 40^3 + 20^3 = 72000 weighted votes, more than uint16 holds
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, **TINY).eval()

    def by_start(x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        # class 0 for windows starting at z 0, 1, 2 (the image holds z), else class 1
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1] = (x[:, 0, :1, :1, :1] >= 3).float() * 2 - 1
        return logits

    model.forward = by_start  # type: ignore[method-assign]
    image = np.broadcast_to(np.arange(79, dtype=np.float32)[:, None, None], (79, 79, 79))
    write_volume(tmp_path / "z.zarr", np.ascontiguousarray(image))
    out = predict_volume(model, [open_volume(tmp_path / "z.zarr")], tmp_path / "p.zarr", 40,
                         batch_size=64, progress=False, overlap=0.99, stats=[(0.0, 1.0)])  # fmt: skip
    # the centre voxel: class 0 gets 3 z-starts x 40 x 40 windows of weight 1 (4800), class 1
    # the other 67200, which a uint16 counter would wrap to 1664 and lose
    assert open_volume(out)[39, 39, 39] == 1
