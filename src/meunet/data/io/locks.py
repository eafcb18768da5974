"""A lock per output, so that two meunet processes never write the same path.

:class:`OutputLock` is a ``.NAME.lock`` file beside the output holding the
writer's host and PID; :mod:`meunet.data.io.ownership` takes it before it
decides what may be replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from meunet.errors import MeunetError

LOCK_SUFFIX = ".lock"


def split_output(path: str | Path) -> tuple[str, str | None]:
    """``file.h5:/dataset`` -> (file, dataset); any other path -> (path, None)."""
    from meunet.data.io import split_hdf5_path

    text = str(path)
    file_part, dataset = split_hdf5_path(text)
    if file_part != text:
        return file_part.rstrip("/"), (dataset or "").strip("/") or None
    return text.rstrip("/") or text, None


def _lock_path(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{LOCK_SUFFIX}")


def writer_info(command: str) -> dict[str, Any]:
    from meunet import __version__

    return {
        "tool": "meunet",
        "version": __version__,
        "command": command,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class OutputLock:
    """Keep a second meunet process from writing the same output.

    The lock is a file ``.NAME.lock`` beside the output, created atomically
    (``O_CREAT | O_EXCL``), holding the host and PID of the writer. A lock
    whose process is gone (same host, PID not running) is stale and taken
    over; any other is refused at once, naming its holder. Nested locks of
    one process on one path are allowed (a cascade locks its output, then
    its stage 2 does). Released on leaving the ``with`` block.

    Example:
        >>> with OutputLock("pred.zarr", "predict"):   # doctest: +SKIP
        ...     write_prediction()
    """

    def __init__(self, path: str | Path, command: str = "meunet") -> None:
        self.target = split_output(path)[0]
        self.path = _lock_path(os.path.abspath(self.target))
        self.command = command

    def acquire(self) -> None:
        if _HELD.get(self.path):
            _HELD[self.path] += 1
            return
        info = {**writer_info(self.command), "host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(3):
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._stale(holder):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                if holder is None:  # being written this instant, or unreadable
                    time.sleep(0.05)
                    holder = self._holder() or {}
                    if not holder:
                        continue
                raise MeunetError(
                    f"{self.target}: another meunet process is writing it "
                    f"({holder.get('command', '?')}, PID {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('time', '?')}); wait for it to "
                    f"finish, or delete {self.path} if that process is gone"
                ) from None
            except PermissionError:
                raise MeunetError(
                    f"{self.target}: cannot write in {os.path.dirname(self.path)} (permission "
                    "denied): choose an output in a folder you can write to"
                ) from None
            except NotADirectoryError:
                raise MeunetError(
                    f"{self.target}: a parent of this path is a file, not a folder: choose "
                    "another output path"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            _HELD[self.path] = 1
            return
        raise MeunetError(f"{self.target}: could not take the lock {self.path}; try again")

    def _holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell from here
        try:
            return not _alive(int(holder["pid"]))
        except (KeyError, TypeError, ValueError):
            return False

    def release(self) -> None:
        depth = _HELD.get(self.path, 0)
        if depth > 1:
            _HELD[self.path] = depth - 1
            return
        _HELD.pop(self.path, None)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
