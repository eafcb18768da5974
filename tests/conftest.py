from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def brats4_dir() -> Path:
    path = SHARED_DATA / "brats4"
    if not path.is_dir():
        reason = f"real data not found at {path} (the shared/ folder beside the clone)"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    return path
