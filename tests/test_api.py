"""The workflow API: the README's Python example runs as written, and predict's options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import meunet
from meunet.api import PredictOptions
from meunet.api.prediction import _dask_address, _engine_kwargs
from meunet.errors import MeunetError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### The same from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    exec(compile(readme_example(), "README.md", "exec"), {})
    assert "Dice" in capsys.readouterr().out
    assert (tmp_path / "runs/py/unet/best.pt").is_file()
    assert meunet.open_volume(tmp_path / "runs/py/labels.zarr").shape == (64, 48, 48)


def test_workflow_names_are_exported() -> None:
    for name in ("train", "train_cascade", "predict", "evaluate", "PredictOptions", "Run"):
        assert name in meunet.__all__ and callable(getattr(meunet, name))


@pytest.mark.parametrize(
    "executor, address",
    [("local", None), ("dask:local:3", "local:3"), ("dask:tcp://h:8786", "tcp://h:8786")],
)
def test_executor_names_a_dask_cluster(executor: str, address: str | None) -> None:
    assert _dask_address(executor) == address
    assert _dask_address("dask").startswith("local:")


def test_an_unknown_executor_is_refused() -> None:
    with pytest.raises(MeunetError, match="executor 'spark'"):
        _dask_address("spark")


def test_batch_and_precision_are_passed_only_when_set() -> None:
    def old(model: object, batch_size: int = 2) -> None: ...

    def new(model: object, batch_size: int | str = 2, precision: str = "auto") -> None: ...

    assert _engine_kwargs(old, PredictOptions()) == {}
    assert _engine_kwargs(old, PredictOptions(batch_size=4)) == {"batch_size": 4}
    with pytest.raises(MeunetError, match="no precision"):
        _engine_kwargs(old, PredictOptions(precision="bf16"))
    opts = PredictOptions(batch_size="auto", precision="bf16")
    assert _engine_kwargs(new, opts) == {"batch_size": "auto", "precision": "bf16"}


def test_a_cascade_refuses_a_single_network_option(tmp_path: Path) -> None:
    with pytest.raises(MeunetError, match="each stage's own window"):
        meunet.predict(
            tmp_path / "cascade.json", tmp_path / "x.zarr", tmp_path / "y.zarr", patch=32
        )


def _tiny_checkpoint(path: Path) -> Path:
    from meunet.models import create_model, save_model

    net = create_model(
        "unet", in_channels=1, num_classes=3,
        encoder_channels=(4, 8, 8, 16, 16), decoder_channels=(8, 8, 4, 4),
    )  # fmt: skip
    save_model(path, net, infer_patch=32)
    return path


def _ngff(path: Path) -> dict:
    import zarr

    attrs = dict(zarr.open_group(path, mode="r").attrs)
    return attrs["ome"]["multiscales"][0] if "ome" in attrs else attrs["multiscales"][0]


def test_an_ome_zarr_prediction_carries_ngff_scale_and_translation(tmp_path: Path) -> None:
    import numpy as np

    scan = tmp_path / "scan.zarr"
    image = np.random.default_rng(0).normal(size=(40, 36, 36)).astype(np.float32)
    meunet.write_volume(scan, image, spacing=(2.0, 0.5, 0.5), origin=(10.0, -4.0, 6.0))
    out = meunet.predict(
        _tiny_checkpoint(tmp_path / "m.pt"), scan, tmp_path / "labels.ome.zarr",
        device="cpu", progress=False,
    )  # fmt: skip
    ms = _ngff(out)
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in ms["axes"])
    transforms = {t["type"]: t for t in ms["datasets"][0]["coordinateTransformations"]}
    assert transforms["scale"]["scale"] == [2.0, 0.5, 0.5]
    assert transforms["translation"]["translation"] == [10.0, -4.0, 6.0]
    labels = meunet.open_volume(out)
    assert labels.shape == (40, 36, 36) and tuple(labels.spacing) == (2.0, 0.5, 0.5)
    assert tuple(labels.origin) == (10.0, -4.0, 6.0)
    assert not (tmp_path / "labels.ome.zarr.partial.zarr").exists()  # the work store is gone


def test_the_cli_hands_precision_and_batch_to_the_predictor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import meunet.inference.stream as stream
    from meunet.cli.main import main

    seen: dict = {}

    def fake(model, inputs, output, patch, extra=(), fusion="vote", batch_size=2,
             device="cpu", progress=True, overlap=0.5, stats=None, overwrite=False,
             precision="auto") -> Path:  # fmt: skip
        seen.update(patch=patch, batch_size=batch_size, precision=precision, overlap=overlap)
        return Path(output)

    monkeypatch.setattr(stream, "predict_volume", fake)
    meunet.write_volume(tmp_path / "x.zarr", np.zeros((40, 36, 36), np.float32))
    argv = ["predict", "--model", str(_tiny_checkpoint(tmp_path / "m.pt")), "--input",
            str(tmp_path / "x.zarr"), "--output", str(tmp_path / "y.zarr"), "--device", "cpu",
            "--batch", "auto", "--precision", "bf16", "--overlap", "0.25", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert seen == {"patch": 32, "batch_size": "auto", "precision": "bf16", "overlap": 0.25}


@pytest.mark.parametrize(
    ("trained", "flag", "used"),
    [("prob", [], "prob"), (None, [], "vote"), ("prob", ["--fusion", "vote"], "vote")],
)
def test_predict_fuses_as_the_checkpoint_was_trained_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained: str | None, flag: list, used: str
) -> None:
    import numpy as np

    import meunet.inference.stream as stream
    from meunet.cli.main import main
    from meunet.models import create_model, save_model

    seen: dict = {}

    def fake(model, inputs, output, patch, extra=(), fusion="vote", **kw) -> Path:  # type: ignore[no-untyped-def]
        seen["fusion"] = fusion
        return Path(output)

    monkeypatch.setattr(stream, "predict_volume", fake)
    net = create_model("unet", in_channels=1, num_classes=2,
                       encoder_channels=(2, 4, 4, 4, 4), decoder_channels=(4, 4, 4, 2))  # fmt: skip
    recorded = {"train_config": {"patch": 16, "fusion": trained}} if trained else {}
    save_model(tmp_path / "m.pt", net, **recorded)  # no train_config: from before it was recorded
    meunet.write_volume(tmp_path / "x.zarr", np.zeros((20, 20, 20), np.float32))
    argv = ["predict", "--model", str(tmp_path / "m.pt"), "--input", str(tmp_path / "x.zarr"),
            "--output", str(tmp_path / "y.zarr"), "--device", "cpu", "--quiet", *flag]  # fmt: skip
    assert main(argv) == 0
    assert seen == {"fusion": used}


def test_a_cascade_fuses_as_its_stage_2_was_trained(tmp_path: Path) -> None:
    from meunet.api import trained_fusion
    from meunet.training.config import TrainConfig
    from meunet.training.run import CascadeManifest, StageEntry

    def manifest(cfg: TrainConfig | None) -> Path:
        entry = StageEntry(checkpoint="stage2/best.pt", patch=16, infer_patch=16, config=cfg)
        return CascadeManifest(mode="post", stage1=(entry,), stage2=entry).write(
            tmp_path / "cascade.json"
        )

    assert trained_fusion(manifest(TrainConfig(patch=16, fusion="prob"))) == "prob"
    assert trained_fusion(manifest(None)) == "vote"  # a manifest from before configs were recorded
