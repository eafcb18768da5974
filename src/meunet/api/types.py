"""The argument types the workflow functions take."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meunet.data.spec import DatasetSpec
from meunet.data.volume import Volume
from meunet.training.config import TrainConfig

ConfigLike = TrainConfig | str | Path | Mapping[str, Any] | None
DataLike = DatasetSpec | str | Path
VolumeLike = Volume | str | Path


def as_spec(data: DataLike) -> DatasetSpec:
    """A :class:`DatasetSpec` from itself or its ``dataset.yaml``."""
    if isinstance(data, DatasetSpec):
        return data
    from meunet.data.spec import load_spec

    return load_spec(data)
