"""The ``meunet`` subcommands, one module each, in the order ``meunet --help`` lists them.

Each module has ``HELP`` (its line in ``meunet --help``), ``DESCRIPTION``
(the text atop its own ``--help``, or None), ``add_arguments(parser)`` and
``run(args) -> int``. ``run`` decides nothing: it calls the library
(:mod:`meunet.api` for the workflow) and prints what it returns.
Options several commands share are in :mod:`meunet.cli.options`.
"""

from __future__ import annotations

from types import ModuleType

from meunet.cli.commands import (
    check,
    convert,
    crop,
    demo,
    evaluate,
    info,
    memory,
    overlay,
    phantom,
    plan,
    predict,
    resample,
    split_volume,
    train,
    train_cascade,
)

COMMANDS: dict[str, ModuleType] = {
    "phantom": phantom,
    "check": check,
    "convert": convert,
    "resample": resample,
    "split-volume": split_volume,
    "crop": crop,
    "memory": memory,
    "plan": plan,
    "train": train,
    "train-cascade": train_cascade,
    "predict": predict,
    "evaluate": evaluate,
    "overlay": overlay,
    "demo": demo,
    "info": info,
}
