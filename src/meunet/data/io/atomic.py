"""Write files under a temporary name and rename them when complete.

A crash mid-write then leaves a ``*.partial`` file, never a truncated file
under the final name that looks complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = str(path)
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
