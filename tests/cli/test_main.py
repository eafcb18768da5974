"""The ``meunet`` command: exit codes, output, and errors without tracebacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume


def test_console_script_runs() -> None:
    exe = shutil.which("meunet", path=str(Path(sys.executable).parent))
    assert exe, "the meunet console script is not installed beside this Python"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("phantom", "check", "convert", "info"):
        assert command in out.stdout


def test_convert_nifti_gz_to_zarr_keeps_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = np.random.default_rng(0).normal(size=(40, 30, 20)).astype(np.float32)
    write_volume(tmp_path / "in.nii.gz", data, spacing=(3.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0))
    assert (
        main(
            [
                "convert",
                str(tmp_path / "in.nii.gz"),
                str(tmp_path / "out.zarr"),
                "--chunks",
                "16",
                "16",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    vol = open_volume(tmp_path / "out.zarr")
    assert vol.meta["chunks"] == (16, 16, 16)
    assert (vol.spacing, vol.origin) == ((3.0, 0.5, 0.5), (1.0, 2.0, 3.0))
    np.testing.assert_array_equal(vol[...], data)
    assert main(["convert", str(tmp_path / "out.zarr"), str(tmp_path / "back.tif"), "--quiet"]) == 0
    np.testing.assert_array_equal(open_volume(tmp_path / "back.tif")[...], data)


def test_info(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_volume(tmp_path / "v.nii.gz", np.zeros((4, 5, 6), np.uint8), spacing=(2, 1, 1))
    assert main(["info", str(tmp_path / "v.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "(4, 5, 6) (z, y, x)" in out and "(2.0, 1.0, 1.0)" in out
    assert "not lazily readable: meunet convert it to .zarr" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "missing.zarr"], "missing.zarr: file not found"),
        (["check", "missing.yaml"], "missing.yaml: dataset spec not found"),
        (["convert", "missing.nii.gz", "out.zarr"], "missing.nii.gz: file not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.zarr").exists()


def test_check_reports_problems_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_volume(
        tmp_path / "img.zarr", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    )
    write_volume(tmp_path / "lab.zarr", np.full((8, 8, 9), 1, np.uint8))
    (tmp_path / "d.yaml").write_text(
        "classes: [background, thing]\ncases:\n  a: {image: img.zarr, label: lab.zarr}\nsplit: {train: [a]}\n"
    )
    assert main(["check", str(tmp_path / "d.yaml"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "case a:" in err and "lab.zarr" in err and "label shape (8, 8, 9) differs" in err


def test_check_brats4_prints_the_four_cases(
    brats4_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert main(["check", str(repo / "examples" / "brats4.yaml"), "--quiet"]) == 0
    out = capsys.readouterr().out
    for case, edema in (
        ("pat0003", 148264),
        ("pat0004", 45203),
        ("pat0005", 35416),
        ("pat0006", 109935),
    ):
        line = next(line for line in out.splitlines() if line.startswith(case))
        assert "155x240x240" in line and str(edema) in line
    assert "OK: no problems found" in out


def test_phantom_then_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ph"
    argv = [
        "phantom",
        "--out",
        str(out),
        "--cases",
        "3",
        "--shape",
        "48",
        "40",
        "40",
        "--seed",
        "5",
    ]
    assert main([*argv, "--quiet"]) == 0
    assert main(["check", str(out / "dataset.yaml"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "case_000  train" in text and "48x40x40" in text and "hind-gut voxels" in text
    assert "OK: no problems found" in text


def test_phantom_bad_shape_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["phantom", "--out", str(tmp_path), "--shape", "16", "96", "96", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "at least 32 voxels" in err and "Traceback" not in err


def test_info_says_when_the_file_stores_no_spacing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "plain.npy", np.zeros((2, 3, 4), np.uint8))
    assert main(["info", str(tmp_path / "plain.npy")]) == 0
    assert "spacing: unknown (1, 1, 1 assumed; the file stores no voxel size)" in (
        capsys.readouterr().out
    )


def test_check_warns_of_unknown_spacing_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    np.save(tmp_path / "img.npy", np.random.default_rng(0).normal(size=(3, 8, 9)))
    (tmp_path / "lab").mkdir()
    for z in range(3):
        Image.fromarray(np.eye(8, 9, dtype=np.uint8)).save(tmp_path / "lab" / f"{z}.png")
    (tmp_path / "d.yaml").write_text(
        "classes: [bg, fg]\ncases:\n  a: {image: img.npy, label: lab}\nsplit: {train: [a]}\n"
    )
    assert main(["check", str(tmp_path / "d.yaml"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "OK: no problems found" in captured.out
    assert "warning:" in captured.err and "store no voxel size" in captured.err
    assert "set 'spacing: [z, y, x]' in d.yaml" in captured.err


def test_check_brats4_from_another_directory(
    brats4_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    assert main(["check", os.path.relpath(repo / "examples" / "brats4.yaml"), "--quiet"]) == 0
