"""``meunet evaluate`` and ``meunet overlay`` on the phantom and on brats4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meunet.cli.main import main
from meunet.data.io import open_volume, write_volume
from meunet.data.phantom import make_phantom_dataset
from meunet.data.spec import load_spec
from meunet.viz.overlay import centre_of


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom_dataset(
        tmp_path_factory.mktemp("ph"), cases=3, shape=(48, 40, 40), seed=2, progress=False
    )


def test_evaluate_and_overlay_on_the_phantom(
    phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = load_spec(phantom)
    preds = tmp_path / "preds"
    for cid in spec.split["test"]:
        truth = open_volume(spec.cases[cid].label)[...]
        pred = truth.copy()
        pred[pred == 2] = 1  # the hind-gut missed: called mid-gut
        write_volume(preds / f"{cid}.zarr", pred)
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(preds),
                "--data",
                str(phantom),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    table = (tmp_path / "ev.md").read_text()
    assert "| mid-gut |" in table and "| hind-gut | 0.000 | inf |" in table
    assert (tmp_path / "ev.csv").read_text().startswith("case,class,dice,hd95,rvd")
    cid = spec.split["test"][0]
    image, label = spec.cases[cid].images[0], spec.cases[cid].label
    out = tmp_path / "o.png"
    assert (
        main(
            [
                "overlay",
                str(image),
                str(preds / f"{cid}.zarr"),
                "--truth",
                str(label),
                "--data",
                str(phantom),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_centre_of_the_smallest_class(tmp_path: Path) -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:12, 2:12, 2:12] = 1
    lab[15:17, 4:6, 10:12] = 2
    write_volume(tmp_path / "l.zarr", lab, chunks=(4, 20, 20))
    assert centre_of(open_volume(tmp_path / "l.zarr"), None) == (
        (16, 4, 10),
        2,
    )  # halves round to even
    assert centre_of(open_volume(tmp_path / "l.zarr"), 1) == ((6, 6, 6), 1)


def test_evaluate_brats4(brats4_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = Path(__file__).resolve().parents[2]
    spec = load_spec(repo / "examples" / "brats4.yaml")
    case = spec.cases["pat0003"]
    truth = spec.remap_labels(open_volume(case.label)[...])
    write_volume(tmp_path / "pat0003.zarr", truth)  # a perfect prediction
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pat0003.zarr"),
                "--truth",
                str(case.label),
                "--data",
                str(repo / "examples" / "brats4.yaml"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| pat0003 | edema | 1.000 | 0.000 | 0.000 | 148264 / 148264 |" in out
    png = tmp_path / "b.png"
    assert (
        main(["overlay", str(case.images[0]), str(tmp_path / "pat0003.zarr"), "--out", str(png)])
        == 0
    )
    assert png.exists()
