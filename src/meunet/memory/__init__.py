"""Measured training memory (``meunet memory``) and patch planning (``meunet plan``)."""

from __future__ import annotations

from meunet.memory.measure import MemoryConfig, measure, measure_here
from meunet.memory.plan import PlanResult, parse_bytes, plan_patch

__all__ = ["MemoryConfig", "PlanResult", "measure", "measure_here", "parse_bytes", "plan_patch"]
