"""Patch planning against a known memory curve, and the budget parser."""

from __future__ import annotations

import pytest

from meunet.memory import MemoryConfig, parse_bytes, plan_patch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GB", 16 * 2**30),
        ("16GiB", 16 * 2**30),
        ("512MB", 512 * 2**20),
        ("2.5G", int(2.5 * 2**30)),
        ("1000", 1000),
        (" 8 gb ", 8 * 2**30),
    ],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "16XB", "-1GB"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read memory size"):
        parse_bytes(text)


def _curve(const: float, per_voxel: float, calls: list[int]):
    def measure(cfg: MemoryConfig) -> dict:
        calls.append(cfg.patch)
        return {"peak_bytes": int(const + per_voxel * cfg.patch**3), "config": {"patch": cfg.patch}}

    return measure


@pytest.mark.parametrize("budget", [60e6, 300e6, 1e9, 5e9, 40e9])
def test_plan_finds_the_largest_fitting_multiple_of_16(budget: float) -> None:
    calls: list[int] = []
    const, per_voxel = 40e6, 350.0
    result = plan_patch(MemoryConfig(model="unet"), int(budget), _curve(const, per_voxel, calls))
    best = max(p for p in range(32, 513, 16) if const + per_voxel * p**3 <= budget)
    assert result.cfg.patch == best
    assert best in calls and (best + 16 in calls or best == 512)  # bracketed by measurements
    assert len(calls) <= 8
    assert max(calls) <= 2 * best  # never a far oversized patch


def test_plan_when_nothing_fits() -> None:
    result = plan_patch(MemoryConfig(model="unet"), 10, _curve(100, 1.0, []))
    assert not result.fits and result.cfg is None


def test_plan_stops_at_max_patch() -> None:
    result = plan_patch(MemoryConfig(model="unet"), 10**15, _curve(0, 1.0, []), max_patch=128)
    assert result.cfg.patch == 128
