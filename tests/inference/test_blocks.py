"""Blockwise prediction on a Dask LocalCluster of 2 workers equals the single-process run bit for bit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume
from meunet.data.io.ownership import make_folder
from meunet.errors import MeunetError
from meunet.inference.blocks import plan_blocks, predict_dask
from meunet.inference.stream import predict_volume
from meunet.models import create_model, load_model, save_model

distributed = pytest.importorskip("distributed")

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
SHAPE = (75, 30, 27)  # nothing divisible by the window or the blocks
PATCH = 16


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("blocks")
    torch.manual_seed(0)
    model = create_model("unet", in_channels=2, num_classes=3, **TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()(torch.randn(2, 2, 32, 32, 32) * 2 + 1)
    save_model(tmp / "model.pt", model.eval(), train_config={"patch": PATCH})
    rng = np.random.default_rng(0)
    paths = []
    for c in range(2):
        image = rng.normal(100 * c, 10 + c, SHAPE).astype(np.float32)
        image[20:40, 5:20, 5:20] += 30  # some structure, so that the classes vary
        write_volume(tmp / f"c{c}.zarr", image)
        paths.append(tmp / f"c{c}.zarr")
    ref = {}
    for fusion in ("vote", "prob"):
        predict_volume(load_model(tmp / "model.pt"), [open_volume(p) for p in paths],
                       tmp / f"ref-{fusion}.zarr", PATCH, fusion=fusion, progress=False)  # fmt: skip
        ref[fusion] = tmp / f"ref-{fusion}.zarr"
    return {"dir": tmp, "model": tmp / "model.pt", "c0": paths[0], "c1": paths[1], **ref}


@pytest.fixture(scope="module")
def client() -> object:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _read(path: Path) -> np.ndarray:
    return np.asarray(open_volume(path)[...])


def test_blocks_start_on_the_window_grid_and_cover_the_volume() -> None:
    blocks = plan_blocks(75, 16, 8, 16)
    assert [b[:2] for b in blocks] == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 75)]
    assert all(r0 % 8 == 0 and c0 - r0 in (0, 8) for c0, _, r0, _ in blocks)  # halo: half a window
    assert blocks[-1][3] == 75 and blocks[0][2] == 0
    # overlap 0.25 (step 12): the halo of 4 slices is rounded up to a whole step
    assert plan_blocks(60, 16, 12, 24)[1][2] == 12
    with pytest.raises(MeunetError, match="multiple of the window step"):
        plan_blocks(75, 16, 8, 12)


@pytest.mark.parametrize("fusion", ["vote", "prob"])
def test_two_workers_equal_one_process_bit_for_bit(
    case: dict, client: object, tmp_path: Path, fusion: str
) -> None:
    out = predict_dask(case["model"], [case["c0"], case["c1"]], tmp_path / "out.zarr", client,
                       fusion=fusion, block_depth=16, progress=False)  # fmt: skip
    np.testing.assert_array_equal(_read(out), _read(case[fusion]))
    assert not Path(f"{out}.blocks").exists()  # markers removed once complete
    assert json.loads((out / "zarr.json").read_text())["attributes"]["meunet"]["complete"]


def test_a_block_whose_worker_dies_is_retried(case: dict, client: object, tmp_path: Path) -> None:
    fault = tmp_path / "kill-block"
    fault.write_text("2")  # the first worker to run block 2 exits at once

    def install(path: str) -> None:  # runs in every worker process (pickled by value)
        from meunet.inference import stream

        real = stream.predict_volume

        def dying(model: object, inputs: object, output: object, *a: object, **k: object) -> object:
            f = Path(path)
            if f.is_file() and Path(str(output)).name == f"block{int(f.read_text()):05d}.zarr":
                f.unlink()  # the retry runs normally
                os._exit(1)  # die like a worker killed by the OOM killer or a lost node
            return real(model, inputs, output, *a, **k)  # type: ignore[arg-type]

        dying.__wrapped__ = real  # type: ignore[attr-defined]
        stream.predict_volume = dying  # type: ignore[assignment]

    def uninstall() -> None:
        from meunet.inference import stream

        stream.predict_volume = getattr(stream.predict_volume, "__wrapped__", stream.predict_volume)

    client.run(install, str(fault))  # type: ignore[attr-defined]
    try:
        out = predict_dask(case["model"], [case["c0"], case["c1"]], tmp_path / "out.zarr", client,
                           block_depth=16, progress=False)  # fmt: skip
    finally:
        client.run(uninstall)  # type: ignore[attr-defined]
    assert not fault.exists()  # the fault fired: a worker died inside block 2
    np.testing.assert_array_equal(_read(out), _read(case["vote"]))


def test_a_rerun_skips_finished_blocks(case: dict, client: object, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    args = ([case["c0"], case["c1"]], out, client)
    predict_dask(case["model"], *args, block_depth=16, progress=False)
    # leave the output as a run killed after blocks 0, 1, 3 and 4 would: block 2 (slices
    # 32:48) missing, the others marked done, the array not complete
    import zarr

    arr = zarr.open_array(str(out), mode="r+")
    arr[32:48] = 255  # whatever a half-finished block left
    state = dict(arr.attrs)["meunet"]
    arr.attrs["meunet"] = {**state, "complete": False}
    work = Path(f"{out}.blocks")
    make_folder(work)  # as the killed run made it: marked as meunet's
    for i in (0, 1, 3, 4):
        (work / f"block{i:05d}.done").write_text("ok\n")
    chunk = lambda z: out / "c" / str(z) / "0" / "0"  # noqa: E731 (z-chunks of 16 slices)
    before = {z: chunk(z).stat().st_mtime_ns for z in range(5)}
    predict_dask(case["model"], *args, block_depth=16, progress=False)
    after = {z: chunk(z).stat().st_mtime_ns for z in range(5)}
    assert [z for z in range(5) if after[z] != before[z]] == [2]  # only block 2 was redone
    np.testing.assert_array_equal(_read(out), _read(case["vote"]))


def test_a_rerun_on_a_changed_input_redoes_every_block(
    case: dict, client: object, tmp_path: Path
) -> None:
    import zarr

    model = load_model(case["model"])
    with torch.no_grad():
        model.head.bias.zero_()  # else one class wins everywhere, whatever the input
    save_model(tmp_path / "m.pt", model, train_config={"patch": PATCH})
    inputs = [tmp_path / "c0.zarr", tmp_path / "c1.zarr"]
    for src, dst in zip((case["c0"], case["c1"]), inputs, strict=True):
        shutil.copytree(src, dst)
    out = tmp_path / "out.zarr"
    predict_dask(tmp_path / "m.pt", inputs, out, client, block_depth=16, progress=False)
    old = _read(out)
    # left as by a run killed with block 2 unfinished, then the input replaced by a
    # corrected export of the same name and shape
    arr = zarr.open_array(str(out), mode="r+")
    arr.attrs["meunet"] = {**dict(arr.attrs)["meunet"], "complete": False}
    work = Path(f"{out}.blocks")
    make_folder(work)  # as the killed run made it: marked as meunet's
    for i in (0, 1, 3, 4):
        (work / f"block{i:05d}.done").write_text("ok\n")
    corrected = _read(inputs[0])[::-1].copy()
    shutil.rmtree(inputs[0])
    write_volume(inputs[0], corrected)
    predict_dask(tmp_path / "m.pt", inputs, out, client, block_depth=16, progress=False)
    ref = _read(predict_volume(model, [open_volume(p) for p in inputs], tmp_path / "ref.zarr",
                               PATCH, progress=False))  # fmt: skip
    assert not np.array_equal(ref[:32], old[:32])  # the blocks marked done change too
    np.testing.assert_array_equal(_read(out), ref)


def test_the_checkpoints_infer_patch_is_the_default_window(
    case: dict, client: object, tmp_path: Path
) -> None:
    # trained at 16, recorded window 32: blocks use 32 unless told otherwise
    model = load_model(case["model"])
    with torch.no_grad():
        model.head.bias.zero_()  # else one class wins everywhere, whatever the window
    save_model(tmp_path / "m.pt", model, train_config={"patch": PATCH}, infer_patch=2 * PATCH)
    inputs = [case["c0"], case["c1"]]
    vols = [open_volume(p) for p in inputs]
    ref, other = (
        predict_volume(model, vols, tmp_path / f"ref{w}.zarr", w, progress=False)
        for w in (2 * PATCH, PATCH)
    )
    assert not np.array_equal(_read(ref), _read(other))  # the window matters here
    out = predict_dask(tmp_path / "m.pt", inputs, tmp_path / "out.zarr", client,
                       block_depth=32, progress=False)  # fmt: skip
    np.testing.assert_array_equal(_read(out), _read(ref))


def test_blockwise_output_keeps_the_input_orientation(
    case: dict, client: object, tmp_path: Path
) -> None:
    import nibabel as nib

    lps = np.array([[-1.0, 0, 0, 2.0], [0, -1.0, 0, 239.0], [0, 0, 1.0, -5.0], [0, 0, 0, 1.0]])
    inputs = []
    for c in ("c0", "c1"):  # uncompressed NIfTI: lazily readable by each block
        data = _read(case[c]).transpose(2, 1, 0)
        nib.save(nib.Nifti1Image(data, lps), tmp_path / f"{c}.nii")
        inputs.append(tmp_path / f"{c}.nii")
    out = predict_dask(case["model"], inputs, tmp_path / "out.nii.gz", client,
                       block_depth=16, progress=False)  # fmt: skip
    img = nib.load(out)
    np.testing.assert_array_equal(img.header.get_best_affine(), lps)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), _read(case["vote"]))


def test_cli_predicts_with_a_local_cluster(case: dict, tmp_path: Path) -> None:
    out = tmp_path / "cli.zarr"
    argv = ["predict", "--model", str(case["model"]), "--input", str(case["c0"]), "--input",
            str(case["c1"]), "--output", str(out), "--dask", "local:2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    np.testing.assert_array_equal(_read(out), _read(case["vote"]))


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("local:0", "N >= 1"),
        ("somewhere", "scheduler address"),
        ("tcp://127.0.0.1:1", "no Dask scheduler"),
    ],
)
def test_bad_cluster_addresses_are_refused_plainly(
    case: dict,
    tmp_path: Path,
    address: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("meunet.inference.blocks.CONNECT_TIMEOUT", "2s")
    argv = ["predict", "--model", str(case["model"]), "--input", str(case["c0"]), "--input",
            str(case["c1"]), "--output", str(tmp_path / "x.zarr"), "--dask", address]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
