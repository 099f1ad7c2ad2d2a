"""User-facing errors.

Every mistake a user can make (an unknown name, an out-of-range number, a missing file) raises a
:class:`MmcoaError` whose message is one line saying what was wrong and what is accepted. The CLI
prints that line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class MmcoaError(ValueError):
    """A problem with the user's input or environment, explained in one line."""


class UnknownNameError(MmcoaError):
    """A registry lookup failed; the message lists the known names."""


class WeightsUnavailableError(MmcoaError):
    """Pretrained weights could not be found locally nor downloaded."""


class DatasetUnavailableError(MmcoaError):
    """A dataset is not on disk where it was looked for."""


class BadImageError(MmcoaError):
    """An image file of a dataset cannot be decoded (truncated, corrupt, not an image).
    ``what`` names the image and the decoder's complaint, without the advice the message adds
    (a DataLoader worker's re-raise passes only a message: then ``what`` is that message)."""

    def __init__(self, message: str, what: str | None = None):
        super().__init__(message)
        self.what = what or message


def one_line(error: BaseException) -> str:
    """The error's message as one line. A DataLoader worker's error arrives re-raised with the
    worker's traceback in its message ("Caught X in DataLoader worker process 0. Original
    Traceback ..."); its last line holds the original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(error).__name__
