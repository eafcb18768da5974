"""Errors a user can act on.

Every error meunet raises on bad input is a :class:`MeunetError` whose message
names what was wrong (the file, the case) and how to fix it. The command line
prints the message alone, without a traceback.
"""

from __future__ import annotations


class MeunetError(Exception):
    """Base class for errors caused by input a user can fix."""


class VolumeError(MeunetError):
    """A volume file is missing, unreadable, corrupt or of an unsupported kind."""


class RegionError(VolumeError):
    """A region (a case's ``bbox:``, a crop box) reaches outside its volume."""


class FormatError(VolumeError):
    """A file or folder of a kind meunet does not read (or, for an output, write)."""


class SpecError(MeunetError):
    """A dataset specification (``dataset.yaml``) is invalid."""


class SettingError(MeunetError, ValueError):
    """A value meunet cannot use: an option, a setting, an argument, or a value in a file.

    Also a ``ValueError``, as Python code calling meunet expects of a bad value.
    """
