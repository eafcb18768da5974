"""The README's walkthrough for a thin anisotropic stack runs as written, end to end.

A small serial-section-like stack (a TIFF without a voxel size, labels as a
folder of PNG slices) goes through every command of the README's *A thin
anisotropic stack, or one labelled volume* section, read from the README
itself: convert with a spacing, resample, split into cases, check, train
(one short epoch), predict and evaluate.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from meunet.cli.main import main
from meunet.data.io import open_volume

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (20, 96, 96)
SHORT = ["--set", "optimisation.epochs=1", "--set", "sampler.patches_per_epoch=4"]


def walkthrough() -> list[list[str]]:
    """The section's commands: its code block, then the ones quoted in its text."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### A thin anisotropic stack, or one labelled volume", 1)[1]
    section = section.split("\n### ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    after = section.split("```", 2)[2]
    lines = [line.split("#")[0] for line in block.splitlines() if line.startswith("meunet ")]
    lines += re.findall(r"`(meunet resample [^`]+)`", after)
    return [shlex.split(line)[1:] for line in lines]


def _stack(folder: Path) -> np.ndarray:
    """em.tif (no voxel size stored) and labels/ (PNG slices) of a thin stack; its labels."""
    rng = np.random.default_rng(0)
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 5:90, 10:25] = 1  # in the x0 blocks; class 2 in all four
    labels[8:, 30:70, 30:70] = 2
    image = (100 + 60 * labels + rng.normal(0, 10, SHAPE)).clip(0, 255).astype(np.uint8)
    tifffile.imwrite(folder / "em.tif", image)
    (folder / "labels").mkdir()
    for z in range(SHAPE[0]):
        Image.fromarray(labels[z]).save(folder / "labels" / f"slice_{z:03d}.png")
    return labels


def test_the_readme_walkthrough_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    commands = walkthrough()
    names = [c[0] for c in commands]
    assert names == [
        "convert", "convert", "split-volume", "check", "train", "predict", "evaluate",
        "resample", "resample",
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    _stack(tmp_path)
    for argv in commands:
        extra = SHORT if argv[0] == "train" else []
        assert main([*argv, *extra]) == 0, " ".join(argv)
    captured = capsys.readouterr()
    out = captured.out
    assert "thinner than" not in captured.err  # check compared the sizes trained with

    em = open_volume("em.zarr")
    assert em.shape == SHAPE and em.spacing == pytest.approx((50, 4.6, 4.6)) and em.spacing_known
    cases = sorted(p.name for p in Path("fly").iterdir() if p.is_dir())
    assert cases == ["z0_y0_x0", "z0_y0_x1", "z0_y1_x0", "z0_y1_x1"]
    labels = open_volume("runs/fly/z0_y1_x1.zarr")
    assert labels.shape == (20, 48, 48)
    assert labels.spacing == pytest.approx((50, 4.6, 4.6))
    assert "Dice" in out
    assert open_volume("em_s.zarr").shape == (20, 48, 48)
    assert np.isin(np.unique(open_volume("labels_s.zarr")[...]), [0, 1, 2]).all()
