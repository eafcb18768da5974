"""meunet replaces only what it wrote, never an input, and one writer at a time (issue 11).

Every refused command is checked to leave each file that was there before
byte-identical, and to create nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meunet.cli.main import main
from meunet.data.io import ZarrSlabWriter, open_volume, write_volume
from meunet.data.io.ownership import (
    OutputLock,
    is_owned,
    make_folder,
    mark,
    prepare_output,
    remove_owned,
)
from meunet.errors import MeunetError
from meunet.models import create_model, save_model

TINY = {"encoder_channels": (4, 8, 8, 16, 16), "decoder_channels": (8, 8, 4, 4)}
SHAPE = (20, 18, 17)


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 of the bytes (or "dir")."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a scan (scan.zarr, made by someone else) and a tiny model (m.pt)."""
    monkeypatch.chdir(tmp_path)
    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    write_volume(tmp_path / "scan.zarr", data, chunks=(8, 8, 8))
    os.remove(tmp_path / "scan.zarr" / ".meunet.json")  # as if another tool had written it
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, **TINY)  # type: ignore[arg-type]
    save_model(tmp_path / "m.pt", model.eval(), train_config={"patch": 16})
    return tmp_path


def predict(*extra: str) -> list[str]:
    return ["predict", "--model", "m.pt", "--input", "scan.zarr", "--quiet", *extra]


def refused(argv: list[str], root: Path, capsys: pytest.CaptureFixture, *needles: str) -> str:
    """Run ``argv``: it must fail with one line naming ``needles`` and leave ``root`` as it was."""
    before = tree(root)
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert tree(root) == before
    return err


# 1. predict into its own input ------------------------------------------------------------


@pytest.mark.parametrize(
    "output", ["scan.zarr", "scan.zarr/", "./scan.zarr", "scan.zarr/labels.zarr"]
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_never_writes_into_its_input(
    work: Path, capsys: pytest.CaptureFixture, output: str, overwrite: bool
) -> None:
    argv = predict("--output", output, *(["--overwrite"] if overwrite else []))
    refused(argv, work, capsys, "the input scan.zarr", "choose another output path")


def test_predict_into_its_input_through_a_symlink(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    os.symlink(work / "scan.zarr", work / "alias.zarr")
    refused(predict("--output", "alias.zarr", "--overwrite"), work, capsys, "is the input")


# 2. convert in place -----------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_in_place_is_refused(
    work: Path, capsys: pytest.CaptureFixture, overwrite: bool
) -> None:
    argv = ["convert", "scan.zarr", "scan.zarr", "--quiet", *(["--overwrite"] if overwrite else [])]
    refused(argv, work, capsys, "scan.zarr: is the input")
    mark(work / "scan.zarr")  # even meunet's own store is not recreated while it is read
    refused(argv, work, capsys, "scan.zarr: is the input")


def test_zarr_writer_never_recreates_an_input(work: Path) -> None:
    before = tree(work)
    vol = open_volume(work / "scan.zarr")
    with pytest.raises(MeunetError, match="is the input"):
        ZarrSlabWriter(work / "scan.zarr", SHAPE, "float32", overwrite=True, inputs=[vol])
    assert tree(work) == before


# 3. a folder that is not meunet's -------------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"])
@pytest.mark.parametrize("command", ["predict", "convert"])
def test_an_existing_folder_is_not_deleted(
    work: Path, capsys: pytest.CaptureFixture, slash: str, command: str
) -> None:
    (work / "mydata").mkdir()
    (work / "mydata" / "notes.txt").write_text("precious\n")
    out = "mydata" + slash
    argv = predict("--output", out) if command == "predict" else ["convert", "scan.zarr", out]
    refused(argv, work, capsys, "mydata", "did not write", "--overwrite")
    assert (work / "mydata" / "notes.txt").read_text() == "precious\n"


def test_overwrite_replaces_a_folder_and_the_result_is_then_meunets(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    (work / "mydata").mkdir()
    (work / "mydata" / "notes.txt").write_text("old\n")
    assert main(["convert", "scan.zarr", "mydata/", "--quiet", "--overwrite"]) == 0
    assert not (work / "mydata" / "notes.txt").exists() and is_owned(work / "mydata")
    np.testing.assert_array_equal(
        open_volume(work / "mydata")[...], open_volume(work / "scan.zarr")[...]
    )
    assert main(["convert", "scan.zarr", "mydata", "--quiet"]) == 0  # its own: replaced
    assert not list(work.glob(".*.lock")) and not list(work.glob(".mydata.partial"))


def test_tiff_folder_writer_deletes_only_its_own_folders(tmp_path: Path) -> None:
    (tmp_path / "slices").mkdir()
    (tmp_path / "slices" / "a.txt").write_text("x")
    from meunet.data.io import tiff_io

    with pytest.raises(MeunetError, match="was not written by meunet"):
        tiff_io.write(str(tmp_path / "slices"), np.zeros((2, 3, 4), np.uint8), (1, 1, 1), (0, 0, 0))
    assert (tmp_path / "slices" / "a.txt").read_text() == "x"


# 4. an existing output that is not meunet's, and inputs checked first ---------------------------


def test_someone_elses_zarr_is_not_replaced(work: Path, capsys: pytest.CaptureFixture) -> None:
    write_volume(work / "truth.zarr", np.ones(SHAPE, np.uint8))
    os.remove(work / "truth.zarr" / ".meunet.json")
    refused(predict("--output", "truth.zarr"), work, capsys, "truth.zarr", "--overwrite")


def test_a_nan_input_leaves_the_previous_output_intact(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(predict("--output", "pred.zarr")) == 0
    assert is_owned(work / "pred.zarr")
    bad = np.zeros(SHAPE, np.float32)
    bad[3, 4, 5] = np.nan
    write_volume(work / "nan.zarr", bad)
    argv = ["predict", "--model", "m.pt", "--input", "nan.zarr", "--output", "pred.zarr"]
    refused(argv, work, capsys, "nan.zarr")
    refused([*argv, "--overwrite"], work, capsys, "nan.zarr")


def test_a_bad_model_leaves_the_previous_output_intact(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    write_volume(work / "old.nii.gz", np.ones(SHAPE, np.uint8))
    (work / "bad.pt").write_bytes(b"")
    argv = ["predict", "--model", "bad.pt", "--input", "scan.zarr", "--output", "old.nii.gz"]
    before = tree(work)
    assert main(argv) == 2
    assert tree(work) == before


def test_meunets_own_unfinished_output_is_resumed(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial marker still resumes: a run cut short goes on from where it stopped."""
    from meunet.inference import engine, stream
    from meunet.models import load_model

    scan, model = open_volume(work / "scan.zarr"), load_model(work / "m.pt")
    real = engine.Channels.fill_slices

    def dying(self: engine.Channels, buf: np.ndarray, z0: int, z1: int) -> None:
        if z0 >= 16:  # the second row of windows (z 8..24) never comes
            raise KeyboardInterrupt
        real(self, buf, z0, z1)

    monkeypatch.setattr(engine.Channels, "fill_slices", dying)
    with pytest.raises(KeyboardInterrupt):
        stream.predict_volume(model, [scan], work / "p.zarr", 16, progress=False)
    monkeypatch.setattr(engine.Channels, "fill_slices", real)
    state = json.loads((work / "p.zarr" / "zarr.json").read_text())["attributes"]["meunet"]
    assert state["complete"] is False and state["done_until"] > 0
    assert not list(work.glob(".*.lock"))  # the interrupted run released its lock
    opened, real_open = [], stream.open_output

    def spy(*a: object, **k: object) -> tuple:
        opened.append(real_open(*a, **k))  # type: ignore[arg-type]
        return opened[-1]

    monkeypatch.setattr(stream, "open_output", spy)
    stream.predict_volume(model, [scan], work / "p.zarr", 16, progress=False)
    assert opened[0][1] == state["done_until"]  # went on from there
    stream.predict_volume(model, [scan], work / "q.zarr", 16, progress=False)
    np.testing.assert_array_equal(
        open_volume(work / "p.zarr")[...], open_volume(work / "q.zarr")[...]
    )


# 6. locks -------------------------------------------------------------------------------------


def _lock(target: Path, pid: int, host: str | None = None) -> Path:
    path = target.parent / f".{target.name}.lock"
    info = {
        "tool": "meunet",
        "command": "predict",
        "pid": pid,
        "host": host or socket.gethostname(),
    }
    path.write_text(json.dumps(info))
    return path


def test_a_second_writer_is_refused_naming_the_holder(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(work / "pred.zarr", holder.pid)
        refused(predict("--output", "pred.zarr"), work, capsys, f"PID {holder.pid}", "pred.zarr")
        with pytest.raises(MeunetError, match="another meunet process"):
            with OutputLock(work / "pred.zarr"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(work: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _lock(work / "pred.zarr", dead.pid)
    assert main(predict("--output", "pred.zarr")) == 0
    assert not lock.exists() and is_owned(work / "pred.zarr")


def test_a_lock_of_another_host_is_not_guessed_stale(tmp_path: Path) -> None:
    _lock(tmp_path / "x.zarr", 1, host="elsewhere.invalid")
    with pytest.raises(MeunetError, match=r"elsewhere\.invalid"):
        with OutputLock(tmp_path / "x.zarr"):
            pass


def test_two_locks_in_one_process_nest_and_release(tmp_path: Path) -> None:
    lock_file = tmp_path / ".x.zarr.lock"
    with OutputLock(tmp_path / "x.zarr"):
        with OutputLock(tmp_path / "x.zarr"):
            assert lock_file.exists()
        assert lock_file.exists()
    assert not lock_file.exists()


def test_two_processes_predicting_one_output(work: Path) -> None:
    """Both run at once: one writes, the other is refused at once; the result is readable."""
    code = (
        "import sys; from meunet.cli.main import main; "
        "sys.exit(main(['predict', '--model', 'm.pt', '--input', 'scan.zarr', '--output', "
        "'pred.zarr', '--quiet']))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=work, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(r for r, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # the second may start after the first ended
    if codes == [0, 2]:
        assert any("another meunet process is writing it" in e for _, e in results)
    assert open_volume(work / "pred.zarr").shape == SHAPE


# 13. HDF5 dataset outputs ---------------------------------------------------------------------


def test_hdf5_dataset_output_works_and_leaves_nothing_else(work: Path) -> None:
    assert main(predict("--output", "x.h5:/grp/labels")) == 0
    labels = open_volume("x.h5:/grp/labels")
    assert labels.shape == SHAPE
    names = sorted(p.name for p in work.iterdir())
    assert names == [".x.h5.meunet.json", "m.pt", "scan.zarr", "x.h5"]  # no stray x.h5:/ folder
    assert main(predict("--output", "x.h5:/grp/other")) == 0  # another dataset, same file
    assert open_volume("x.h5:/grp/labels").shape == SHAPE


def test_a_bad_hdf5_output_is_refused_before_predicting(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    (work / "x.h5").write_text("not hdf5")
    refused(predict("--output", "x.h5:/grp/labels"), work, capsys, "x.h5", "not a readable HDF5")
    import h5py

    (work / "x.h5").unlink()
    with h5py.File(work / "y.h5", "w") as f:
        f["grp/labels"] = np.zeros((2, 2, 2), np.uint8)  # someone else's dataset
    refused(predict("--output", "y.h5:/grp/labels"), work, capsys, "/grp/labels", "--overwrite")


# 15. tracebacks: a regular file in the way, a folder that cannot be written ---------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "scan.zarr", "afile"],
        ["convert", "scan.zarr", "afile/out.zarr"],
        predict("--output", "afile"),
        predict("--output", "afile/out.nii.gz"),
        ["phantom", "--out", "afile", "--quiet"],
    ],
)
def test_a_regular_file_in_the_way_is_one_line(
    work: Path, capsys: pytest.CaptureFixture, argv: list[str]
) -> None:
    (work / "afile").write_text("mine\n")
    refused(argv, work, capsys, "afile")


@pytest.mark.parametrize("command", ["predict", "convert", "evaluate", "overlay"])
def test_a_read_only_output_folder_is_one_line(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    (work / "ro").mkdir()
    write_volume(work / "truth.zarr", np.zeros(SHAPE, np.uint8))
    argv = {
        "predict": predict("--output", "ro/p.zarr"),
        "convert": ["convert", "scan.zarr", "ro/c.zarr"],
        "evaluate": ["evaluate", "--pred", "truth.zarr", "--truth", "truth.zarr", "--classes",
                     "2", "--out", "ro/scores"],
        "overlay": ["overlay", "scan.zarr", "truth.zarr", "--out", "ro/o.png"],
    }[command]  # fmt: skip
    real_access, real_open = os.access, os.open
    ro = str(work / "ro")

    def access(path: object, mode: int, **kw: object) -> bool:  # root ignores chmod: pretend
        if os.path.abspath(str(path)) == ro and mode & os.W_OK:
            return False
        return real_access(path, mode, **kw)  # type: ignore[arg-type]

    def open_(path: object, flags: int, *a: object, **kw: object) -> int:
        if os.path.dirname(os.path.abspath(str(path))) == ro and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "open", open_)
    refused(argv, work, capsys, "ro", "permission denied")


# ownership of the other commands' outputs --------------------------------------------------------


def test_evaluate_and_overlay_replace_only_their_own_files(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    write_volume(work / "truth.zarr", np.zeros(SHAPE, np.uint8))
    (work / "scores.csv").write_text("mine\n")
    (work / "o.png").write_text("mine\n")
    ev = ["evaluate", "--pred", "truth.zarr", "--truth", "truth.zarr", "--classes", "2"]
    refused([*ev, "--out", "scores"], work, capsys, "scores.csv", "--overwrite")
    refused(["overlay", "scan.zarr", "truth.zarr", "--out", "o.png"], work, capsys, "o.png")
    assert main([*ev, "--out", "scores", "--overwrite"]) == 0
    assert main([*ev, "--out", "scores"]) == 0  # now its own
    assert is_owned(work / "scores.csv") and is_owned(work / "scores.md")
    (work / "scores.md").write_text("edited by hand\n")  # no longer what meunet wrote
    refused([*ev, "--out", "scores"], work, capsys, "scores.md")


@pytest.mark.parametrize("command", ["phantom", "train", "train-cascade", "demo"])
def test_run_folders_that_are_not_meunets_are_refused(
    work: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    (work / "mine").mkdir()
    (work / "mine" / "log.csv").write_text("my own log\n")
    assert main(["phantom", "--out", "data", "--cases", "2", "--shape", "32", "32", "32",
                 "--quiet"]) == 0  # fmt: skip
    argv = {
        "phantom": ["phantom", "--out", "mine", "--quiet"],
        "train": ["train", "configs/none.yaml", "--data", "data/dataset.yaml", "--out", "mine"],
        "train-cascade": ["train-cascade", "--data", "data/dataset.yaml", "--out", "mine"],
        "demo": ["demo", "--out", "mine", "--quiet"],
    }[command]
    if command == "train":
        (work / "configs").mkdir()
        (work / "configs" / "none.yaml").write_text("epochs: 1\n")
    refused(argv, work, capsys, "mine", "not made by meunet")


def test_phantom_rewrites_its_own_folder(work: Path) -> None:
    args = ["phantom", "--out", "data", "--cases", "1", "--shape", "32", "32", "32", "--quiet"]
    assert main(args) == 0
    assert main(args) == 0
    assert is_owned(work / "data") and is_owned(work / "data" / "case_000" / "image.zarr")


# the helpers themselves ---------------------------------------------------------------------------


def test_a_file_changed_after_meunet_wrote_it_is_no_longer_its(tmp_path: Path) -> None:
    write_volume(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert is_owned(tmp_path / "v.nii.gz")
    (tmp_path / "v.nii.gz").write_bytes(b"someone else's bytes")
    assert not is_owned(tmp_path / "v.nii.gz")
    with pytest.raises(MeunetError, match="--overwrite"):
        write_volume(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.uint8))
    write_volume(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.uint8), overwrite=True)
    assert is_owned(tmp_path / "v.nii.gz")


def test_remove_owned_refuses_anything_else(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    with pytest.raises(MeunetError, match="will not delete"):
        remove_owned(tmp_path / "a")
    make_folder(tmp_path / "b")
    (tmp_path / "b" / "f").write_text("x")
    remove_owned(tmp_path / "b")
    assert not (tmp_path / "b").exists() and (tmp_path / "a" / "f").exists()


def test_prepare_output_accepts_new_empty_and_own_paths(tmp_path: Path) -> None:
    prepare_output(tmp_path / "new.zarr")
    (tmp_path / "empty.zarr").mkdir()
    prepare_output(tmp_path / "empty.zarr")
    make_folder(tmp_path / "own.zarr")
    prepare_output(tmp_path / "own.zarr")
    with pytest.raises(MeunetError, match="is a folder"):
        (tmp_path / "dir.nii.gz").mkdir()
        (tmp_path / "dir.nii.gz" / "x").write_text("x")
        prepare_output(tmp_path / "dir.nii.gz", overwrite=True)


def test_a_folder_from_meunet_0_1_is_adopted_by_the_line_the_refusal_gives(
    tmp_path: Path,
) -> None:
    import subprocess

    from meunet.data.io.ownership import make_folder
    from meunet.errors import MeunetError

    run = tmp_path / "old run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"weights")
    with pytest.raises(MeunetError, match="did not mark its folders") as info:
        make_folder(run)
    line = str(info.value).split(": echo ", 1)[1]
    subprocess.run(["bash", "-c", f"echo {line}"], check=True)  # the path has a space
    assert make_folder(run) == run and (run / "last.pt").read_bytes() == b"weights"
