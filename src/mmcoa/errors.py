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
