"""``meunet demo``: the whole pipeline into a report, resumable, refusing mixed settings.

The full-size demo (``make demo``) takes about 12 minutes; here it runs at a
tiny size, so the numbers mean nothing but every step and file is exercised.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from meunet.cli.main import main
from meunet.data.spec import load_spec
from meunet.demo import brightness_baseline

TINY = [
    "--cases",
    "3",
    "--shape",
    "64",
    "48",
    "48",
    "--set",
    "epochs=1",
    "--set",
    "patches_per_epoch=4",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), *TINY, "--quiet"]) == 0
    return out


def test_demo_writes_a_report_with_tables_and_pictures(demo: Path) -> None:
    text = (demo / "report.md").read_text()
    assert "| case_002 | hind-gut |" in text  # the per-case evaluation table
    assert "brightness only" in text and "stage 1 alone: meunet-k175" in text
    assert re.search(r"\(what `make demo` runs\) on \S.* CPU, \d+ torch threads", text)  # hardware
    # every picture the report shows exists
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 4  # three training curves and one overlay (one test case)
    for rel in images:
        assert (demo / rel).is_file() and (demo / rel).stat().st_size > 1000, rel
    assert (demo / "cascade" / "cascade.json").is_file()
    assert (demo / "predictions" / "case_002.zarr").exists()
    steps = json.loads((demo / "timings.json").read_text())
    assert {"phantom", "check", "train cascade", "predict"} <= set(steps)


def test_rerun_resumes_without_training_again(demo: Path) -> None:
    before = (demo / "cascade" / "stage2" / "best.pt").stat().st_mtime_ns
    assert main(["demo", "--out", str(demo), *TINY, "--quiet"]) == 0
    assert (demo / "cascade" / "stage2" / "best.pt").stat().st_mtime_ns == before


def test_other_settings_in_the_same_folder_are_refused(
    demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(demo), *TINY[:-2], "--set", "patches_per_epoch=8"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_brightness_baseline_is_the_dice_of_calling_every_bright_voxel_that_class(
    demo: Path,
) -> None:
    spec = load_spec(demo / "phantom" / "dataset.yaml")
    from meunet.data.io import open_volume

    image = np.asarray(open_volume(spec.cases["case_002"].images[0])[...])
    label = np.asarray(open_volume(spec.cases["case_002"].label)[...])
    dice = brightness_baseline(spec, "case_002")
    bright = image > 20000  # midway between body (14000) and tube (26000) grey levels
    for c in (1, 2):
        expected = 2 * (bright & (label == c)).sum() / (bright.sum() + (label == c).sum())
        assert dice[c] == pytest.approx(expected)
    assert np.isnan(dice[0]) and 0 < dice[2] < dice[1] < 1  # the thin class is the hard one


def test_context_option_makes_the_context_phantom(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meunet.demo

    # Another cue distance in a finished demo's folder is another setting: refused.
    assert main(["demo", "--out", str(demo), *TINY, "--context", "12", "--quiet"]) == 2
    seen = {}

    def phantom_then_stop(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before training: only the dataset is under test

    monkeypatch.setattr(meunet.demo, "make_phantom_dataset", phantom_then_stop)
    out = tmp_path / "ctx"
    assert main(["demo", "--out", str(out), *TINY, "--context", "12", "--quiet"]) == 130
    assert seen["context_distance"] == 12.0
    assert json.loads((out / "demo.json").read_text())["phantom"]["context"] == 12.0


def _says_what_the_table_says(table: str, claims: list[tuple[str, str, str]], pairs: int) -> None:
    """Each claim's row in ``benchmarks/results/TABLE`` has the difference, interval and verdict
    that :data:`meunet.demo.ACCURACY` gives it."""
    from meunet.demo import ACCURACY

    text = (Path(__file__).resolve().parents[1] / "benchmarks/results" / table).read_text()
    for claim, said, verdict in claims:
        row = next(line for line in text.splitlines() if line.startswith(f"| {claim} |"))
        mean, ci = said.replace("95 % CI ", "").split(", ", 1)
        assert f"| {mean} | {ci} | {pairs} | {verdict} |" in row, (
            f"{table} says {row}: update meunet.demo.ACCURACY"
        )
        assert said in ACCURACY


def test_the_reports_accuracy_sentence_says_what_the_accuracy_table_says() -> None:
    claims = [
        ("meunet-k175 @E175 > unet @own", "+0.114, 95 % CI [+0.015, +0.283]", "holds"),
        ("meunet-k150 @E150 > unet @own", "+0.042, [-0.064, +0.166]", "inconclusive"),
        ("meunet-k175 @own > thin-tubes @own", "+0.016, [-0.071, +0.151]", "inconclusive"),
    ]
    _says_what_the_table_says("accuracy.md", claims, pairs=6)


def test_the_reports_cascade_sentence_says_what_the_cascade_table_says() -> None:
    claims = [
        ("cascade-post @own > meunet-k175 @E175", "+0.023, [+0.002, +0.084]", "holds"),
        ("cascade-post @own > cascade-pre @own", "+0.019, [-0.004, +0.079]", "inconclusive"),
        ("cascade-post @own > cascade-lowres @own", "+0.015, [-0.071, +0.110]", "inconclusive"),
        ("meunet-k175 @E175 > unet @own", "+0.078, [-0.133, +0.286]", "inconclusive"),
    ]
    _says_what_the_table_says("accuracy_cascade_cpu.md", claims, pairs=6)


def test_the_reports_paper_sizes_sentence_says_what_the_gpu_table_says() -> None:
    claims = [
        ("meunet-k150 @E150 > unet-P @own", "+0.042, 95 % CI [+0.014, +0.077]", "holds"),
        ("meunet-k150 @own > thin-tubes @own", "-0.063, [-0.076, -0.053]", "fails"),
    ]
    _says_what_the_table_says("accuracy_gpu.md", claims, pairs=6)


def test_the_reports_classic_phantom_sentence_says_what_its_table_says() -> None:
    claims = [
        ("meunet-k175 @E175 > unet @own", "-0.133, 95 % CI [-0.295, -0.013]", "fails"),
        ("meunet-k150 @E150 > unet @own", "-0.081, [-0.181, +0.020]", "inconclusive"),
    ]
    _says_what_the_table_says("accuracy_phantom_cpu.md", claims, pairs=6)


def test_the_reports_brats4_sentence_says_what_its_table_says() -> None:
    claims = [("meunet-k175 @E175 > unet @own", "+0.001, 95 % CI [-0.029, +0.031]", "inconclusive")]
    _says_what_the_table_says("accuracy_brats4_cpu.md", claims, pairs=4)
