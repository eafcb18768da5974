"""What meunet may replace or delete, and a lock per output.

meunet replaces or deletes only a path that carries its own marker:

- a folder it made (a Zarr store, a folder of TIFF slices, a run folder)
  holds ``.meunet.json`` (tool, version, command, time);
- a file it wrote (``x.nii.gz``, ``x.tif``, ``x.png``, ...) has a hidden
  sidecar ``.x.nii.gz.meunet.json`` beside it that also records the file's
  size and modification time, so a file later replaced by someone else's no
  longer counts as meunet's;
- an HDF5 dataset it wrote carries the attribute ``meunet``; adding a new
  dataset to an existing HDF5 file replaces nothing.

:func:`prepare_output` is called by every command before it writes, after
its inputs are opened and checked: it refuses an existing path without the
marker (``overwrite=True`` allows it), and always refuses an output that is,
lies inside, or contains one of the command's inputs. :func:`remove_owned` is
the one way meunet deletes a folder. :class:`OutputLock` (a ``.NAME.lock``
file beside the output, holding host and PID; :mod:`meunet.data.io.locks`) keeps a second writer out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meunet.data.io.atomic import atomic_path
from meunet.data.io.locks import OutputLock, writer_info
from meunet.data.io.locks import split_output as _split
from meunet.errors import MeunetError

MARKER = ".meunet.json"
SUFFIX = ".meunet.json"  # of a file's sidecar: .NAME.meunet.json
H5_ATTR = "meunet"

__all__ = [
    "MARKER",
    "OutputLock",
    "claim_output",
    "is_owned",
    "mark",
    "marker_info",
    "prepare_output",
    "remove_owned",
]


def _sidecar(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{SUFFIX}")


def mark(path: str | Path, command: str = "meunet") -> None:
    """Mark ``path`` (a folder or a file meunet has just written) as meunet's."""
    path, dataset = _split(path)
    if dataset is not None:
        return  # an HDF5 dataset is marked by its attribute, written with it
    info = writer_info(command)
    if os.path.isdir(path):
        target = os.path.join(path, MARKER)
    else:
        st = os.stat(path)
        info.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        target = _sidecar(path)
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        json.dump(info, f)


def marker_info(path: str | Path) -> dict[str, Any] | None:
    """The marker of a path meunet made (a dict), or None."""
    path, _ = _split(path)
    target = os.path.join(path, MARKER) if os.path.isdir(path) else _sidecar(path)
    try:
        with open(target) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("tool") != "meunet":
        return None
    if not os.path.isdir(path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (info.get("size"), info.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            return None  # the file changed since meunet wrote it: no longer ours
    return info


def _h5_dataset_state(file_path: str, dataset: str) -> str:
    """``"absent"``, ``"ours"`` or ``"foreign"`` for a dataset of an existing HDF5 file."""
    import h5py

    try:
        with h5py.File(file_path, "r") as f:
            if dataset not in f:
                return "absent"
            return "ours" if H5_ATTR in f[dataset].attrs else "foreign"
    except OSError as e:
        raise MeunetError(
            f"{file_path}: exists and is not a readable HDF5 file ({e}); meunet adds its output "
            "to HDF5 files only: choose another --output"
        ) from None


def is_owned(path: str | Path) -> bool:
    """Whether ``path`` exists and carries meunet's marker (see the module docs)."""
    file_path, dataset = _split(path)
    if dataset is not None:
        return os.path.isfile(file_path) and _h5_dataset_state(file_path, dataset) == "ours"
    return os.path.lexists(file_path) and marker_info(file_path) is not None


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _overlaps(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same path, or one lies inside the other."""
    return (
        a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)
    )


def _input_paths(inputs: Iterable[Any]) -> list[tuple[str, str | None]]:
    from meunet.data.io import split_region

    out = []
    for item in inputs:
        text = split_region(str(getattr(item, "path", item)))[0]  # a region is its volume's file
        file_part, dataset = _split(text)
        out.append((file_part, dataset))
    return out


def check_not_input(path: str | Path, inputs: Iterable[Any]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs``.

    Paths are compared resolved (symbolic links followed). For HDF5, another
    dataset of an input's file is a different output.
    """
    out_file, out_ds = _split(path)
    real_out = _real(out_file)
    for in_file, in_ds in _input_paths(inputs):
        if not _overlaps(real_out, _real(in_file)):
            continue
        if real_out == _real(in_file) and out_ds is not None and in_ds is not None:
            a, b = "/" + out_ds.strip("/"), "/" + in_ds.strip("/")
            if not _overlaps(a, b):
                continue  # two datasets of one HDF5 file
        real_in = _real(in_file)
        if real_out == real_in:
            how = "is"
        elif len(real_out) > len(real_in):
            how = "lies inside"
        else:
            how = "holds"
        raise MeunetError(
            f"{path}: {how} the input {in_file}; writing there would destroy the input: "
            "choose another output path"
        )


def _writable_folder(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MeunetError(
            f"{path}: {probe} is a file, not a folder: choose an output path in a folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MeunetError(
            f"{path}: cannot write in {probe} (permission denied): choose an output in a folder "
            "you can write to, or change its permissions"
        )


def _empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def prepare_output(
    path: str | Path,
    inputs: Iterable[Any] = (),
    overwrite: bool = False,
    folder: bool | None = None,
) -> None:
    """Check that meunet may write ``path``; call it after opening the inputs.

    The output may be written when it does not exist, is an empty folder, or
    carries meunet's marker. An existing path without the marker is refused
    unless ``overwrite``: then a folder (or a file where a folder is to be
    written) is deleted here, and a file is left to be replaced when the new
    one is complete. An output that is, contains or lies inside an input is
    refused whatever ``overwrite`` says.

    Args:
        path: The output (``file.h5:/dataset`` for HDF5).
        inputs: The command's inputs (paths or volumes).
        overwrite: Replace an existing path that meunet did not write.
        folder: The output is a folder (Zarr, TIFF slices, run folder);
            default: from the volume format its name implies.

    Raises:
        MeunetError: naming the path and the way out.
    """
    text = str(path)
    if folder is None:
        folder = is_folder_output(text)
    check_not_input(text, inputs)
    file_path, dataset = _split(text)
    _writable_folder(file_path)
    if dataset is not None or (not folder and _is_h5(file_path)):
        if os.path.isdir(file_path):
            raise MeunetError(
                f"{file_path}: is a folder, not an HDF5 file: choose another --output"
            )
        if os.path.exists(file_path):
            state = _h5_dataset_state(file_path, dataset or _default_h5_dataset())
            if state == "foreign" and not overwrite:
                raise MeunetError(
                    f"{text}: the dataset /{dataset or _default_h5_dataset()} exists and was not "
                    "written by meunet; pass --overwrite to replace it, or name another dataset "
                    f"as {file_path}:/NAME"
                )
        return
    if not os.path.lexists(file_path) or _empty_dir(file_path) or marker_info(file_path):
        if folder and os.path.isfile(file_path):  # our own file where a folder goes
            os.remove(file_path)
            unmark(file_path)
        return
    if os.path.isdir(file_path) and not folder:
        raise MeunetError(
            f"{file_path}: is a folder; this output is a single file: choose another path"
        )
    if not overwrite:
        kind = "folder" if os.path.isdir(file_path) else "file"
        raise MeunetError(
            f"{file_path}: a {kind} that meunet did not write is there; pass --overwrite to "
            "replace it, or choose another output path"
        )
    if os.path.isdir(file_path) and not os.path.islink(file_path):
        shutil.rmtree(file_path)
    elif folder:
        os.remove(file_path)


def is_folder_output(path: str | Path) -> bool:
    """Whether a volume written to ``path`` is a folder (Zarr, a folder of TIFF slices)."""
    from meunet.data.io import detect_format

    text = str(path)
    try:
        fmt = detect_format(text, must_exist=False)
    except MeunetError:
        return False
    return fmt == "zarr" or (fmt == "tiff" and not text.lower().endswith((".tif", ".tiff")))


def _is_h5(path: str) -> bool:
    return path.lower().endswith((".h5", ".hdf5", ".hdf"))


def _default_h5_dataset() -> str:
    from meunet.data.io.hdf5_io import DEFAULT_DATASET

    return DEFAULT_DATASET


def unmark(path: str) -> None:
    """Drop the marker of a file meunet made (after removing the file itself)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(_sidecar(path))


def make_folder(path: str | Path, command: str = "meunet") -> Path:
    """Create ``path`` (and its parents) as a folder of meunet's, or keep it if it is one.

    An existing empty folder is adopted; an existing folder with anything
    else in it and no marker is refused (run :func:`prepare_output` first
    where ``--overwrite`` applies).
    """
    path = Path(str(path).rstrip("/") or str(path))
    if path.is_dir() and marker_info(path):
        return path
    if path.exists() and not _empty_dir(str(path)):
        raise MeunetError(
            f"{path}: exists and was not made by meunet; choose another path (meunet writes "
            "only into a new or empty folder, or one it made). If meunet 0.1, which did not "
            f'mark its folders, made it: echo \'{{"tool": "meunet"}}\' > {shlex.quote(str(path / MARKER))}'
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        mark(path, command)
    except PermissionError:
        raise MeunetError(
            f"{path}: cannot create it (permission denied): choose a folder you can write to"
        ) from None
    return path


def remove_owned(path: str | Path) -> None:
    """Delete a folder or file that carries meunet's marker; refuse anything else.

    A missing path or an empty folder is fine. This is the one place meunet
    deletes a folder.
    """
    text = str(path).rstrip("/") or str(path)
    if not os.path.lexists(text):
        return
    if _empty_dir(text):
        os.rmdir(text)
        return
    if marker_info(text) is None:
        raise MeunetError(
            f"{text}: was not written by meunet (no {MARKER} marker), so meunet will not delete "
            "it; move it away or choose another output path"
        )
    if os.path.isdir(text) and not os.path.islink(text):
        shutil.rmtree(text)
    else:
        os.remove(text)
        unmark(text)


@contextlib.contextmanager
def claim_output(
    path: str | Path,
    inputs: Iterable[Any] = (),
    overwrite: bool = False,
    folder: bool | None = None,
    command: str = "meunet",
) -> Iterator[None]:
    """Lock ``path``, then :func:`prepare_output` it; hold the lock for the ``with`` block.

    Call it once the inputs are opened and checked.
    """
    inputs = list(inputs)
    check_not_input(path, inputs)  # before the lock file is made beside it
    _writable_folder(_split(path)[0])
    with OutputLock(path, command):
        prepare_output(path, inputs, overwrite, folder)
        yield


def write_text(
    path: str | Path,
    text: str,
    inputs: Iterable[Any] = (),
    overwrite: bool = False,
    command: str = "meunet",
) -> Path:
    """Write a small text output (a table, a report) as meunet writes any output.

    Claimed and locked (:func:`claim_output`), written under a temporary
    name, renamed when complete, and marked.
    """
    from meunet.data.io.atomic import atomic_path

    path = Path(path)
    with claim_output(path, inputs, overwrite, folder=False, command=command):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
        mark(path, command)
    return path
