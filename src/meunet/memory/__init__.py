"""Measured training memory (``meunet memory``) and patch planning (``meunet plan``)."""

from __future__ import annotations

from meunet.memory.measure import MemoryConfig, measure, measure_here
from meunet.memory.plan import PlanResult, format_bytes, parse_bytes, plan_patch

__all__ = [
    "MemoryConfig",
    "PlanResult",
    "format_bytes",
    "measure",
    "measure_here",
    "parse_bytes",
    "plan_patch",
]
