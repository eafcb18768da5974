"""meunet: memory-efficient segmentation of very large 3D images.

>>> import meunet
>>> vol = meunet.open_volume("scan.zarr")      # doctest: +SKIP
>>> spec = meunet.load_spec("dataset.yaml")    # doctest: +SKIP
"""

from __future__ import annotations

from meunet.data.check import check_dataset
from meunet.data.convert import convert
from meunet.data.io import ZarrSlabWriter, open_volume, write_volume
from meunet.data.spec import DatasetSpec, load_spec
from meunet.data.volume import Volume
from meunet.errors import MeunetError, SpecError, VolumeError

__version__ = "0.1.0"

__all__ = [
    "DatasetSpec",
    "MeunetError",
    "SpecError",
    "Volume",
    "VolumeError",
    "ZarrSlabWriter",
    "check_dataset",
    "convert",
    "load_spec",
    "open_volume",
    "write_volume",
]
