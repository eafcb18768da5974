"""The window engine: device-side fusion against a NumPy reference, its sinks, its threads, precision."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from meunet.data.io import open_volume, write_volume
from meunet.data.sampling import channel_stats, grid_positions
from meunet.errors import SettingError, VolumeError
from meunet.inference import engine, sinks, windows
from meunet.inference.engine import Channels, run_windows
from meunet.inference.sinks import ArraySink
from meunet.inference.stream import predict_volume
from meunet.inference.windows import (
    argmax_classes,
    auto_batch,
    centre_weights,
    check_windows,
    resolve_batch,
    resolve_precision,
    vote_dtype,
)
from meunet.models import create_model

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
SHAPE = (37, 29, 41)  # nothing divisible by the window
PATCH = 16


def _model(extra_channels: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    name = "cascade-post" if extra_channels else "unet"
    model = create_model(name, in_channels=2, num_classes=3, extra_channels=extra_channels, **TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()(torch.randn(2, 2, 32, 32, 32) * 2 + 1,
                      *([torch.rand(2, extra_channels, 32, 32, 32)] if extra_channels else []))  # fmt: skip
        model.head.bias.zero_()  # else one class wins everywhere, whatever the input
    return model.eval()


def _numpy_reference(
    model: torch.nn.Module,
    image: np.ndarray,
    step: int,
    fusion: str,
    batch: int,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """The fusion written out in NumPy over the whole padded volume, window by window.

    The network sees the same windows in the same batches (a row of windows
    at a time); votes and probabilities are weighted and summed in NumPy.
    """
    classes = model.cfg.num_classes
    zs, ys, xs = (grid_positions(n, PATCH, step) for n in image.shape[1:])
    padded = [p[-1] + PATCH for p in (zs, ys, xs)]
    img = np.zeros((image.shape[0], *padded), np.float32)
    img[:, : SHAPE[0], : SHAPE[1], : SHAPE[2]] = image
    ext = None
    if labels is not None:
        lab = np.full((labels.shape[0], *padded), -1, np.int64)
        lab[:, : SHAPE[0], : SHAPE[1], : SHAPE[2]] = labels
        onehot = np.eye(classes + 1, dtype=np.float32)[:, 1:]  # -1 (outside): all zero
        ext = onehot[lab + 1].transpose(0, 4, 1, 2, 3).reshape(-1, *padded)
    vote = fusion == "vote"
    acc = np.zeros((classes, *padded), vote_dtype(PATCH, step) if vote else np.float32)
    w = centre_weights(PATCH)

    def crop(a: np.ndarray, z: int, y: int, x: int) -> np.ndarray:
        return a[:, z : z + PATCH, y : y + PATCH, x : x + PATCH]

    for z in zs:
        row = [(y, x) for y in ys for x in xs]
        for j in range(0, len(row), batch):
            group = row[j : j + batch]
            x = torch.from_numpy(np.stack([crop(img, z, y, xx) for y, xx in group]))
            e = (
                None
                if ext is None
                else torch.from_numpy(np.stack([crop(ext, z, y, xx) for y, xx in group]))
            )
            with torch.no_grad():
                logits = model(x, e).float()
            for lg, (y, xx) in zip(logits, group, strict=True):
                if vote:
                    winner = argmax_classes(lg.numpy())
                    votes = np.eye(classes, dtype=acc.dtype)[:, winner] * w.astype(acc.dtype)
                else:
                    votes = torch.softmax(lg, 0).numpy() * w
                crop(acc, z, y, xx)[...] += votes
    return argmax_classes(acc[:, : SHAPE[0], : SHAPE[1], : SHAPE[2]])


@pytest.mark.parametrize("kernels", ["torch", "numpy"])
@pytest.mark.parametrize(
    ("fusion", "overlap", "stage2"),
    [("vote", 0.5, False), ("prob", 0.5, False), ("vote", 0.75, False), ("prob", 0.25, False),
     ("vote", 0.5, True), ("prob", 0.5, True)],
)  # fmt: skip
def test_device_fusion_equals_the_numpy_reference(
    fusion: str, overlap: float, stage2: bool, kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "torch": the kernels a GPU runs (the accumulator a tensor on the device), here on the CPU;
    # "numpy": what a CPU runs by default
    monkeypatch.setattr(engine, "NUMPY_ON_CPU", kernels == "numpy")
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    image[:, 10:25, 5:20, 10:30] += 2  # structure, so that the classes vary
    labels = rng.integers(0, 3, (2, *SHAPE)).astype(np.int16) if stage2 else None
    model = _model(6 if stage2 else 0)
    step = check_windows(PATCH, fusion, 2, overlap)
    sink = ArraySink(SHAPE)
    maps = None if labels is None else Channels.array(labels, labels=True)
    run_windows(model, Channels.array(image), sink, PATCH, step, maps, fusion, 2, "cpu", "fp32")
    expected = _numpy_reference(model, image, step, fusion, 2, labels)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(sink.array, expected)


def test_the_device_argmax_breaks_ties_as_numpy_does() -> None:
    scores = np.array([[1, 2, 2, 0], [1, 2, 1, 3], [0, 2, 2, 3]], np.uint8)[:, :, None, None]
    expected = argmax_classes(scores)
    assert expected.ravel().tolist() == [0, 0, 0, 1]
    assert windows._argmax(torch.from_numpy(scores)).numpy().tolist() == expected.tolist()


@pytest.fixture
def volumes(tmp_path: Path) -> list:
    rng = np.random.default_rng(0)
    out = []
    for c in range(2):
        data = (rng.normal(size=SHAPE) * (c + 1) + 100 * c).astype(np.float32)
        write_volume(tmp_path / f"ch{c}.zarr", data, spacing=(2.0, 1.0, 1.0), chunks=(8, 16, 16))
        out.append(open_volume(tmp_path / f"ch{c}.zarr"))
    return out


@pytest.mark.parametrize("fusion", ["vote", "prob"])
def test_the_in_memory_sink_equals_the_zarr_sink(
    volumes: list, tmp_path: Path, fusion: str
) -> None:
    model = _model()
    out = predict_volume(model, volumes, tmp_path / "p.zarr", PATCH, fusion=fusion, progress=False)
    sink = ArraySink(SHAPE)
    stats = [channel_stats(v) for v in volumes]
    run_windows(model, Channels.volumes(volumes, stats), sink, PATCH, PATCH // 2, fusion=fusion)
    np.testing.assert_array_equal(open_volume(out)[...], sink.array)


@pytest.mark.parametrize(("fusion", "stage2"), [("vote", False), ("prob", False), ("vote", True)])
def test_the_threaded_pipeline_equals_a_serial_run(
    volumes: list, tmp_path: Path, fusion: str, stage2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(3 if stage2 else 0)
    extra = []
    if stage2:
        write_volume(
            tmp_path / "s1.zarr", np.random.default_rng(1).integers(0, 3, SHAPE).astype(np.uint8)
        )
        extra = [open_volume(tmp_path / "s1.zarr")]
    args = (model, volumes)
    kw: dict[str, Any] = {"extra": extra, "fusion": fusion, "batch_size": 3, "progress": False}
    serial = predict_volume(*args, tmp_path / "serial.zarr", PATCH, threads=False, **kw)
    real = Channels.fill_slices
    seen: set[str] = set()

    def slow(self: Channels, buf: np.ndarray, z0: int, z1: int) -> None:
        seen.add(threading.current_thread().name)
        threading.Event().wait(0.02)  # reading lags the network: the threads interleave
        real(self, buf, z0, z1)

    monkeypatch.setattr(Channels, "fill_slices", slow)
    threaded = predict_volume(*args, tmp_path / "threaded.zarr", PATCH, threads=True, **kw)
    assert seen == {"meunet-reader"}  # every slice was read in the background
    np.testing.assert_array_equal(open_volume(threaded)[...], open_volume(serial)[...])


def _finishes(seconds: float, fn: Callable[[], object]) -> BaseException | None:
    """Run ``fn`` in a thread; fail unless it returns within ``seconds``; its exception, if any."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the predictor hangs after an error in one of its threads"
    return raised[0] if raised else None


def _state(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["meunet"]


@pytest.mark.parametrize("where", ["reader", "writer"])
def test_a_thread_error_is_raised_as_itself_and_the_output_stays_unfinished(
    volumes: list, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model()
    thrown: list[BaseException] = []
    if where == "reader":
        real_read = Channels.fill_slices

        def failing_read(self: Channels, buf: np.ndarray, z0: int, z1: int) -> None:
            if z0 >= 24:  # the slices of the third row of windows
                thrown.append(OSError("input disk gone"))
                raise thrown[-1]
            real_read(self, buf, z0, z1)

        monkeypatch.setattr(Channels, "fill_slices", failing_read)
    else:
        real_write = sinks.ZarrSink.write

        def failing_write(self: sinks.ZarrSink, lo: int, hi: int, labels: np.ndarray) -> None:
            if lo >= 16:
                thrown.append(OSError("output disk full"))
                raise thrown[-1]
            real_write(self, lo, hi, labels)

        monkeypatch.setattr(sinks.ZarrSink, "write", failing_write)
    out = tmp_path / "p.zarr"
    error = _finishes(60, lambda: predict_volume(model, volumes, out, PATCH, progress=False))
    assert error is not None and error is thrown[0]  # the original exception, not a wrapper
    assert not list(tmp_path.glob(".*.lock"))  # the lock was released
    state = _state(out)
    assert state["complete"] is False and 0 < state["done_until"] <= 16
    with pytest.raises(VolumeError, match="never finished"):
        open_volume(out)
    monkeypatch.undo()
    predict_volume(model, volumes, out, PATCH, progress=False)  # resumes
    ref = predict_volume(model, volumes, tmp_path / "ref.zarr", PATCH, progress=False)
    np.testing.assert_array_equal(open_volume(out)[...], open_volume(ref)[...])


def test_a_network_error_keeps_the_finished_rows(volumes: list, tmp_path: Path) -> None:
    model = _model()
    calls = {"n": 0}
    forward = model.forward

    def dying(*args: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 20:  # in the third row of windows (8 forward passes a row)
            raise RuntimeError("CUDA out of memory")
        return forward(*args, **kw)

    model.forward = dying  # type: ignore[method-assign]
    out = tmp_path / "p.zarr"
    error = _finishes(60, lambda: predict_volume(model, volumes, out, PATCH, progress=False))
    assert isinstance(error, RuntimeError) and "out of memory" in str(error)
    assert _state(out) == {
        "complete": False,
        "done_until": 16,  # the rows at z 0 and 8
        "signature": _state(out)["signature"],
    }


@pytest.mark.parametrize(
    ("precision", "device", "resolved"),
    [("auto", "cpu", "fp32"), ("fp32", "cpu", "fp32"), ("bf16", "cpu", "bf16"), ("fp16", "cpu", "fp16")],
)  # fmt: skip
def test_precision_settings(precision: str, device: str, resolved: str) -> None:
    assert resolve_precision(precision, device) == resolved


@pytest.mark.parametrize("bad", ["fp8", "half", None])
def test_an_unknown_precision_is_refused(bad: Any, volumes: list, tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="precision must be one of"):
        predict_volume(_model(), volumes, tmp_path / "p.zarr", PATCH, precision=bad, progress=False)
    assert not (tmp_path / "p.zarr").exists()


def test_batch_auto() -> None:
    assert check_windows(PATCH, "vote", "auto", 0.5) == 8
    with pytest.raises(SettingError, match=r"or 'auto'.* whole number >= 1, got 'big'"):
        check_windows(PATCH, "vote", "big", 0.5)  # type: ignore[arg-type]
    gib = 1 << 30
    assert auto_batch(gib, 10 * gib, 49) == 5  # half of the free memory
    assert auto_batch(gib, 100 * gib, 49) == windows.MAX_AUTO_BATCH
    assert auto_batch(gib, 100 * gib, 3) == 3  # no more than a row of windows
    assert auto_batch(4 * gib, gib, 49) == 1  # at least one
    cpu = torch.device("cpu")
    assert resolve_batch("auto", _model(), PATCH, (2, 0), cpu, "fp32", 49) == windows.CPU_BATCH
    assert resolve_batch(5, _model(), PATCH, (2, 0), cpu, "fp32", 49) == 5


def _trained(device: str) -> tuple[torch.nn.Module, np.ndarray]:
    """A tiny U-net trained for a few steps to threshold a smooth field into 3 classes."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    field = gaussian_filter(rng.normal(size=(48, 48, 48)), 4).astype(np.float32)
    field /= field.std()
    truth = np.digitize(field, [-0.5, 0.5]).astype(np.int64)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, **TINY).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_all, y_all = torch.from_numpy(field)[None, None], torch.from_numpy(truth)[None]
    model.train()
    for _ in range(40):
        z, y, x = rng.integers(0, 48 - 32, 3)
        xb = x_all[..., z : z + 32, y : y + 32, x : x + 32].to(device)
        yb = y_all[..., z : z + 32, y : y + 32, x : x + 32].to(device)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), field[None]


def _agreement(device: str, precision: str) -> float:
    model, image = _trained(device)
    full = torch.device(device)
    labels = {}
    for p in ("fp32", precision):
        sink = ArraySink(image.shape[1:])
        run_windows(model, Channels.array(image), sink, 32, 16, device=full, precision=p)
        labels[p] = sink.array
    assert len(np.unique(labels["fp32"])) == 3  # it learnt the classes
    return float((labels["fp32"] == labels[precision]).mean())


@pytest.mark.skipif(
    not torch.amp.autocast_mode.is_autocast_available("cpu"), reason="no CPU autocast in this torch"
)
def test_reduced_precision_agrees_with_fp32_on_a_cpu() -> None:
    # torch's CPU autocast runs bf16; a GPU's "auto" picks bf16 (or fp16) the same way
    assert _agreement("cpu", "bf16") >= 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_reduced_precision_agrees_with_fp32_on_a_gpu(precision: str) -> None:
    assert _agreement("cuda", precision) >= 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fusion", ["vote", "prob"])
def test_gpu_fusion_equals_the_cpu_engine_in_fp32(
    volumes: list, tmp_path: Path, fusion: str
) -> None:
    model = _model()
    kw: dict[str, Any] = {"fusion": fusion, "progress": False, "precision": "fp32"}
    cpu = predict_volume(model, volumes, tmp_path / "cpu.zarr", PATCH, device="cpu", **kw)
    gpu = predict_volume(model, volumes, tmp_path / "gpu.zarr", PATCH, device="cuda", **kw)
    agree = (open_volume(cpu)[...] == open_volume(gpu)[...]).mean()
    assert agree >= 0.999  # cuDNN's convolutions round differently from the CPU's


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_pipeline_equals_its_serial_run(volumes: list, tmp_path: Path) -> None:
    # pinned buffers, events and the background threads change nothing
    model = _model()
    kw: dict[str, Any] = {"device": "cuda", "progress": False, "batch_size": 3}
    serial = predict_volume(model, volumes, tmp_path / "s.zarr", PATCH, threads=False, **kw)
    threaded = predict_volume(model, volumes, tmp_path / "t.zarr", PATCH, threads=True, **kw)
    np.testing.assert_array_equal(open_volume(threaded)[...], open_volume(serial)[...])
    auto = predict_volume(model, volumes, tmp_path / "a.zarr", PATCH, device="cuda",
                          batch_size="auto", progress=False)  # fmt: skip
    assert (open_volume(auto)[...] == open_volume(serial)[...]).mean() >= 0.999
