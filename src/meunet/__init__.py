"""meunet: memory-efficient segmentation of very large 3D images.

    >>> import meunet
    >>> best = meunet.train("configs/cpu/meunet.yaml", "dataset.yaml", "runs/m")  # doctest: +SKIP
    >>> meunet.predict(best, "scan.zarr", "labels.zarr")                          # doctest: +SKIP
    >>> vol = meunet.open_volume("scan.zarr")      # doctest: +SKIP
    >>> spec = meunet.load_spec("dataset.yaml")    # doctest: +SKIP
    >>> net = meunet.create_model("meunet")        # doctest: +SKIP

Names are imported on first use, so that ``import meunet.models`` (e.g. on a
GPU machine that lacks the I/O libraries) does not pull in every format reader.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "train": "meunet.api",
    "train_cascade": "meunet.api",
    "predict": "meunet.api",
    "evaluate": "meunet.api",
    "PredictOptions": "meunet.api",
    "Evaluation": "meunet.api",
    "TrainConfig": "meunet.training.config",
    "load_config": "meunet.training.config",
    "Run": "meunet.training.run",
    "CascadeRun": "meunet.training.run",
    "DatasetSpec": "meunet.data.spec",
    "load_spec": "meunet.data.spec",
    "check_dataset": "meunet.data.check",
    "make_phantom_dataset": "meunet.data.phantom",
    "convert": "meunet.data.convert",
    "resample_volume": "meunet.data.resample",
    "ZarrSlabWriter": "meunet.data.io",
    "open_volume": "meunet.data.io",
    "write_volume": "meunet.data.io",
    "Volume": "meunet.data.volume",
    "MeunetError": "meunet.errors",
    "SpecError": "meunet.errors",
    "VolumeError": "meunet.errors",
    "UNetConfig": "meunet.models",
    "create_model": "meunet.models",
    "load_model": "meunet.models",
    "save_model": "meunet.models",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'meunet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
