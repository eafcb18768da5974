"""The profile's arithmetic: device busy share and idle time by the host's phase (synthetic traces)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profile() -> Any:
    spec = importlib.util.spec_from_file_location(
        "profile_predict", ROOT / "benchmarks/profile_predict.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["profile_predict"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _x(name: str, cat: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur}


def test_nested_ranges_are_named_by_the_innermost(profile: Any) -> None:
    pieces = profile.innermost(
        [("other", 0, 100), ("stats", 10, 30), ("forward", 40, 90), ("fuse", 60, 70)]
    )
    assert pieces == [
        ("other", 0, 10), ("stats", 10, 30), ("other", 30, 40), ("forward", 40, 60),
        ("fuse", 60, 70), ("forward", 70, 90), ("other", 90, 100),
    ]  # fmt: skip


def test_gaps_are_what_the_union_leaves_of_the_span(profile: Any) -> None:
    busy = profile.union([(5, 10), (8, 12), (20, 25), (24, 30)])
    assert busy == [(5, 12), (20, 30)]
    assert profile.gaps(busy, (0, 40)) == [(0, 5), (12, 20), (30, 40)]
    assert profile.gaps(busy, (6, 22)) == [(12, 20)]


def test_device_idle_time_is_charged_to_what_the_host_was_doing(profile: Any) -> None:
    # 0-100 µs of predict: stats 0-40 (device idle), forward 40-100 with kernels 50-70 and 80-100
    trace = {"traceEvents": [
        _x("meunet.predict", "user_annotation", 0, 100),
        _x("meunet.stats", "user_annotation", 0, 40),
        _x("meunet.forward", "user_annotation", 40, 60),
        _x("conv", "kernel", 50, 20), _x("conv", "kernel", 80, 20),
        _x("aten::conv3d", "cpu_op", 40, 60),  # not a phase, not the device
        _x("Memcpy HtoD", "gpu_memcpy", 200, 5),  # after the prediction: not in its span
    ]}  # fmt: skip
    result = profile.analyse(trace)
    assert result["seconds"] == pytest.approx(100e-6)
    assert result["busy"] == pytest.approx(0.4)
    assert result["host"] == pytest.approx({"stats": 40e-6, "forward": 60e-6})
    assert result["idle"] == pytest.approx({"stats": 40e-6, "forward": 20e-6})
    assert result["kernels"][0][:2] == ("conv", pytest.approx(40e-6))
    table = "\n".join(profile.report(result, "set-up"))
    assert "device busy 40%" in table and "| stats | 0.00 | 40% | 0.00 |" in table


def test_a_cpu_trace_has_no_device_figures(profile: Any) -> None:
    trace = {
        "traceEvents": [
            _x("meunet.predict", "user_annotation", 0, 10),
            _x("aten::add", "cpu_op", 1, 2),
        ]
    }
    result = profile.analyse(trace)
    assert result["busy"] is None and result["idle"] == {}
    assert result["host"] == pytest.approx({"other": 10e-6})
