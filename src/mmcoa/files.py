"""Atomic file writes: every output (records, checkpoints, reports, plots) is written to a
temporary file beside its destination and renamed into place, so a reader never sees half a
file and an interrupted run leaves no partial output."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from mmcoa.errors import MmcoaError

FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over a size limit


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write to; renamed onto ``path`` when the block
    ends, removed if it raises. The file gets the usual mode (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if _disk_full(error, path.parent):
            kept = "the previous file is intact" if path.exists() else "nothing was written"
            reason = os.strerror(_errno(error)) if _errno(error) else "the disk is full"
            raise MmcoaError(
                f"no space left to write {path} ({reason}); {kept}; "
                f"free some space and run again (training: --resume)"
            ) from error
        raise


def _errno(error: BaseException) -> int | None:
    """The errno of an OSError, also when a writer (torch.save) wrapped it in another error."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a write failed for want of space. torch.save reports a full disk as a bare
    RuntimeError of its zip writer, so when the error carries no errno a 1 MiB probe write in
    the same folder decides."""
    if isinstance(error, (KeyboardInterrupt, MmcoaError)):
        return False
    if _errno(error) is not None:
        return _errno(error) in FULL_DISK
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0" * 2**20)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as probe_error:
        return probe_error.errno in FULL_DISK
    return False


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, payload: object) -> None:
    """Write JSON (indented, one final newline) to a temporary file beside ``path`` and rename
    it into place, so a reader never sees half a file and an interrupted run leaves no partial
    output."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_tensors(path: str | os.PathLike, what: str, expected: str = "") -> object:
    """``torch.load`` of ``path`` (CPU, weights only), or one :class:`MmcoaError` line naming
    ``what`` it is (e.g. ``"prompt file runs/x/prompt.pt"``) and, when given, what was
    ``expected``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        hint = f"; expected {expected}" if expected else ""
        raise MmcoaError(f"{what} is corrupt or unreadable ({type(error).__name__}){hint}") from error
