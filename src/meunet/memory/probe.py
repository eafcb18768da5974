"""Subprocess entry of :func:`meunet.memory.measure`: measure one JSON config, print JSON."""

from __future__ import annotations

import json
import sys

from meunet.memory.measure import MemoryConfig, measure_here

if __name__ == "__main__":
    print(json.dumps(measure_here(MemoryConfig.from_json(sys.argv[1]))))
