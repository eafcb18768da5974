"""``meunet plan`` and ``meunet memory`` read the training YAML, with training's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from meunet.cli.main import main
from meunet.memory import MemoryConfig
from meunet.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[MemoryConfig]:
    import meunet.memory.plan as plan

    seen: list[MemoryConfig] = []

    def fake(cfg: MemoryConfig) -> dict:
        seen.append(cfg)
        return {"peak_bytes": 2**40, "expanded": cfg.expanded, "device_name": "cpu",
                "config": {**cfg.__dict__}}  # fmt: skip

    monkeypatch.setattr(plan, "measure", fake)
    return seen


def test_plan_takes_training_defaults(measured: list[MemoryConfig]) -> None:
    assert main(["plan", "--budget", "1GB", "--device", "cpu", "--quiet", "--no-compare"]) == 0
    cfg, train = measured[0], TrainConfig()
    assert (cfg.model, cfg.batch, cfg.k) == (train.model, train.batch, train.k)
    assert cfg.encoder_channels == train.encoder_channels
    assert not cfg.amp  # training's amp applies on CUDA only


def test_plan_reads_the_yaml_and_its_overrides(measured: list[MemoryConfig]) -> None:
    argv = ["plan", "--budget", "1GB", "--config", str(CONFIGS / "cpu" / "meunet.yaml"),
            "--set", "optimisation.batch=6", "--set", "sampler.k=1.75", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    first = measured[0]
    assert (first.model, first.batch, first.k, first.device) == ("meunet", 6, 1.75, "cpu")
    assert first.encoder_channels == (8, 16, 16, 32, 32)
    assert first.expanded == 64  # expanded_patch(32, 1.75), the one formula
    assert {c.model for c in measured} == {"meunet", "unet"}  # a deep head compares a U-net


def test_memory_flags_override_the_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    import meunet.memory as memory

    seen: list[MemoryConfig] = []
    monkeypatch.setattr(memory, "measure", lambda cfg: seen.append(cfg) or _result(cfg))
    argv = ["memory", "--config", str(CONFIGS / "cpu" / "unet.yaml"), "--batch", "3", "--json"]
    assert main(argv) == 0
    assert (seen[0].model, seen[0].patch, seen[0].batch) == ("unet", 32, 3)


def _result(cfg: MemoryConfig) -> dict:
    return {"peak_bytes": 1, "expanded": cfg.expanded, "device_name": "cpu",
            "config": {**cfg.__dict__}}  # fmt: skip
