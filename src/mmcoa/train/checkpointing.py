"""The trainer's checkpoint format and writer.

``checkpoints/last.pt`` holds everything a resumed run needs (model, optimizer, schedule, RNG,
step, adversarial prompts); it is removed when the run finishes unless ``keep_resume_state``
(:func:`drop_resume_state`). ``checkpoints/epoch<N>.pt`` (``keep_epoch_checkpoints``, the points
of paper Fig. 7's curves) holds the model alone, a third of last.pt's size with AdamW state.

Saving does not hold up training: the state is copied to host memory (the only part that waits
for the device), then a background thread writes the file atomically while the next steps run.
A save waits for the previous write to end first, and the trainer waits for the last one before
it exports the run, so at most one write is in flight and an error (a full disk) surfaces at the
next save or at the end, with the previous file intact (:func:`mmcoa.files.atomic_path`).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch

from mmcoa.errors import MmcoaError
from mmcoa.files import atomic_path

CHECKPOINT_FORMAT = "mmcoa-train-v1"
RESUME_STATE = Path("checkpoints") / "last.pt"  # in the run directory
MODEL_ONLY_KEYS = ("format", "step", "model", "config", "world_size", "method")


def host_copy(value):
    """``value`` (nested dicts, lists, tuples of tensors and plain values) with every tensor
    copied to host memory, so training may go on changing the originals."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item) for item in value)
    return value


def model_only(payload: dict, extra_keys: tuple[str, ...] = ()) -> dict:
    """The part of a last.pt payload an epoch checkpoint keeps (no optimizer, schedule, RNG)."""
    return {key: payload[key] for key in MODEL_ONLY_KEYS + extra_keys if key in payload}


def drop_resume_state(run: Path) -> None:
    """Remove a finished run's ``checkpoints/last.pt`` (and the folder, when nothing else is in
    it): the weights stay in final.pt; last.pt, with AdamW's state, is three times their size."""
    (run / RESUME_STATE).unlink(missing_ok=True)
    folder = run / RESUME_STATE.parent
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def save_atomic(payload, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def trainer_step(payload) -> int | None:
    """The step stored in a loaded trainer checkpoint; None for any other payload."""
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return int(payload["step"])
    return None


def saved_step(path: Path) -> int | None:
    """The step stored in a trainer checkpoint file (None when the file is not one)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: not a checkpoint
        return None
    return trainer_step(payload)


class BackgroundWriter:
    """Writes (payload, path) pairs on one background thread, one save at a time
    (``background=False``: in the calling thread)."""

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, files: list[tuple[dict, Path]]) -> None:
        """Start writing ``files`` (payloads already on the host) after the previous write."""
        self.wait()
        if not self.background:
            self._write(files)
            self._raise()
            return
        self._thread = threading.Thread(target=self._write, args=(files,), name="mmcoa-checkpoint")
        self._thread.start()

    def wait(self, quiet: bool = False) -> None:
        """Block until the write in flight ended; raise its error if it failed (``quiet``: while
        another error propagates, only print it)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not quiet:
            self._raise()
        elif self._error is not None:
            print(f"mmcoa: error: the last checkpoint was not saved ({self._error})", file=sys.stderr)
            self._error = None

    def _write(self, files: list[tuple[dict, Path]]) -> None:
        try:
            for payload, path in files:
                save_atomic(payload, path)
        except BaseException as error:  # noqa: BLE001 - handed to the training thread
            self._error = error

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is None:
            return
        if isinstance(error, MmcoaError):
            raise error
        raise MmcoaError(
            f"saving a checkpoint failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error
