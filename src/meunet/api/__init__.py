"""The workflow: train, train a cascade, predict, evaluate.

The command line, ``meunet demo`` and the benchmarks call these four
functions and nothing else of the workflow, so a script does exactly what a
command does::

    import meunet

    best = meunet.train("configs/cpu/meunet.yaml", "data/dataset.yaml", "runs/meunet")
    meunet.predict(best, "scan.zarr", "labels.zarr")
    print(meunet.evaluate("labels.zarr", "truth.zarr", data="data/dataset.yaml").table)

A configuration is a :class:`~meunet.training.config.TrainConfig`, a YAML
file (nested or flat) or a mapping; ``overrides`` are ``--set`` items
(``"sampler.patch=96"``). A dataset is a :class:`~meunet.data.spec.DatasetSpec`
or its ``dataset.yaml``.
"""

from meunet.api.evaluation import Evaluation, evaluate, find_prediction
from meunet.api.prediction import PredictOptions, predict, trained_fusion
from meunet.api.training import load_training_config, train, train_cascade

__all__ = [
    "Evaluation",
    "PredictOptions",
    "evaluate",
    "find_prediction",
    "load_training_config",
    "predict",
    "train",
    "train_cascade",
    "trained_fusion",
]
