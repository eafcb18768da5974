"""The run folder's layout and the typed cascade manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meunet.errors import MeunetError
from meunet.inference.cascade import read_manifest
from meunet.training.config import TrainConfig
from meunet.training.run import CascadeManifest, CascadeRun, Run


def test_a_run_names_its_files(tmp_path: Path) -> None:
    run = Run(tmp_path / "r")
    assert (run.best.name, run.last.name, run.log.name, run.curves.name) == (
        "best.pt", "last.pt", "log.csv", "curves.png",
    )  # fmt: skip
    assert run.data_copy(2) == tmp_path / "r" / "data_x2"
    assert not run.started and not run.finished
    run.folder.mkdir()
    run.mark_done()
    assert run.finished and run.done.read_text() == "trained\n"


def test_a_cascade_names_its_stages(tmp_path: Path) -> None:
    c = CascadeRun(tmp_path)
    assert c.branch("meunet-k150").folder == tmp_path / "stage1" / "meunet-k150"
    assert c.prediction("lowres", "case_001") == (
        tmp_path / "stage1" / "lowres" / "predictions" / "case_001.zarr"
    )
    assert c.branch_done("lowres").name == "DONE"
    assert c.branch_record("lowres").name == "stage.json"
    assert c.stage2.best == tmp_path / "stage2" / "best.pt"
    assert c.manifest_path == tmp_path / "cascade.json"


def test_the_manifest_round_trips_and_the_predictor_reads_it(tmp_path: Path) -> None:
    c = CascadeRun(tmp_path)
    base = TrainConfig(patch=32)
    branches = {"a": TrainConfig(model="meunet", patch=32, k=1.5), "b": TrainConfig(model="unet")}
    stage2 = TrainConfig(model="cascade-post", patch=32)
    c.write_manifest("post", branches, stage2)
    m = c.manifest()
    assert m.mode == "post" and m.version == 2
    assert [e.checkpoint for e in m.stage1] == ["stage1/a/best.pt", "stage1/b/best.pt"]
    assert [e.infer_patch for e in m.stage1] == [48, 64]
    assert m.stage1[0].config == branches["a"] and m.stage2.config == stage2
    assert m.stage2.checkpoint == "stage2/best.pt" and base.patch == m.stage2.patch
    stage1, second = read_manifest(c.manifest_path)  # what prediction reads
    assert [b["infer_patch"] for b in stage1] == [48, 64] and second["infer_patch"] == 32


def test_a_manifest_of_an_earlier_version_is_read(tmp_path: Path) -> None:
    old = {
        "cascade": "post",
        "stage1": [{"checkpoint": "stage1/a/best.pt", "patch": 32, "downsample": 1}],
        "stage2": {"checkpoint": "stage2/best.pt", "patch": 32},
    }
    (tmp_path / "cascade.json").write_text(json.dumps(old))
    m = CascadeManifest.read(tmp_path / "cascade.json")
    assert m.version == 1 and m.stage1[0].infer_patch == 32 and m.stage1[0].config is None
    (tmp_path / "cascade.json").write_text("{}")
    with pytest.raises(MeunetError, match=r"not a cascade\.json"):
        CascadeManifest.read(tmp_path / "cascade.json")
