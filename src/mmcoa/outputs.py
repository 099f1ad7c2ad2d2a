"""Output locations, checked before any work: a run must not end in a failed write.

Every command that writes calls :func:`check_output` on its output as soon as its settings are
read. The check writes nothing that stays: it creates and removes a probe file in the nearest
folder that exists (the writes create the missing folders below it, as they always have).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mmcoa.errors import MmcoaError


def check_output(path: str | os.PathLike, *, directory: bool, flag: str = "--output") -> None:
    """Raise a one-line :class:`MmcoaError` unless ``path`` (a folder when ``directory``, else a
    file) can be written; ``flag`` is how the message names the setting."""
    need = "a directory" if directory else "a file name such as results.json"
    if not os.fspath(path):
        raise MmcoaError(f"{flag} is empty; give {need}")
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise MmcoaError(f"{flag} {str(path)!r} is a file; give a directory")
    if not directory and path.is_dir():
        raise MmcoaError(f"{flag} {str(path)!r} is a directory; give {need}")
    _probe(nearest_existing(path if directory else path.parent), path, flag)


def nearest_existing(path: Path) -> Path:
    """``path`` or the closest of its parents that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, path: Path, flag: str) -> None:
    """Create and remove a file in ``folder``, or say in one line why ``path`` cannot be written."""
    if not folder.is_dir():
        raise MmcoaError(
            f"{flag} {str(path)!r} cannot be written: {str(folder)!r} is a file, not a directory"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".mmcoa-probe-", dir=folder)
    except OSError as error:
        raise MmcoaError(
            f"{flag} {str(path)!r} cannot be written: {folder}: {error.strerror or type(error).__name__}"
        ) from None
    os.close(fd)
    os.unlink(name)
