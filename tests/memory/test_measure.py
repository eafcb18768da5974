"""Real measurements in subprocesses: repeatable, and meU-net's saving shows at small sizes."""

from __future__ import annotations

import pytest

from meunet.cli.main import main
from meunet.errors import MeunetError
from meunet.memory import MemoryConfig, measure


def test_measurement_repeats_exactly_and_is_consistent() -> None:
    cfg = MemoryConfig(model="unet", patch=32, batch=1)
    a, b = measure(cfg), measure(cfg)
    assert a["peak_bytes"] == b["peak_bytes"]
    assert a["peak_bytes"] > a["between_steps_bytes"] > 0
    assert 0 < a["saved_for_backward_bytes"] < a["peak_bytes"]
    # weights + Adam state (3 copies) of the paper's 2.5 M-parameter network, at least
    assert a["between_steps_bytes"] > 3 * 2_500_000 * 4


def test_meunet_needs_half_of_unet_at_the_same_field_of_view_and_checkpointing_helps() -> None:
    # small sizes (E = 48, P = 32) keep the test fast; benchmarks/memory_table.py measures E = 96
    unet_peaks = {}
    for ckpt in (False, True):
        unet = measure(MemoryConfig(model="unet", patch=48, batch=4, checkpointing=ckpt))
        me = measure(MemoryConfig(model="meunet", patch=32, k=1.5, batch=4, checkpointing=ckpt))
        assert me["expanded"] == 48
        ratio = me["peak_bytes"] / unet["peak_bytes"]
        assert ratio <= 0.5, (ckpt, ratio)
        unet_peaks[ckpt] = unet["peak_bytes"]
    assert unet_peaks[True] < 0.8 * unet_peaks[False]


def test_failures_are_reported() -> None:
    with pytest.raises(MeunetError, match="measuring vnet patch 32 batch 1 on cpu failed"):
        measure(MemoryConfig(model="vnet", patch=32, batch=1))
    with pytest.raises(ValueError, match=r"AMP .* on CUDA only"):
        MemoryConfig(amp=True)


def test_expanded_size_rounds_to_a_multiple_of_16() -> None:
    assert MemoryConfig(patch=64, k=1.25).expanded == 80
    assert MemoryConfig(patch=48, k=1.5).expanded == 80  # 72 rounds half up
    assert MemoryConfig(patch=64, expanded_patch=100).expanded == 100
    assert MemoryConfig(model="unet").expanded is None


def test_memory_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["memory", "--model", "meunet", "--patch", "32", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "patch 32^3 (expanded 48^3, k 1.5)" in out and "training step peak" in out


def test_plan_command_with_a_known_curve(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meunet.memory.plan as plan

    def fake(cfg: MemoryConfig) -> dict:
        peak = 10 * 2**20 + (200 if cfg.model == "unet" else 80) * cfg.patch**3
        return {
            "peak_bytes": peak,
            "expanded": cfg.expanded,
            "device_name": "cpu",
            "config": {**cfg.__dict__},
        }

    monkeypatch.setattr(plan, "measure", fake)
    assert main(["plan", "--budget", "1GB", "--model", "meunet", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "meunet: budget 1.00 GiB" in out and "unet: budget 1.00 GiB" in out
    assert "=> largest patch: 224^3 (expanded 336^3)" in out
    assert "=> largest patch: 160^3" in out
