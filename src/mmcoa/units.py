"""The one unit users write eps and step sizes in: 1/255 (``eps: 1`` is 1/255).

Every eps and step size a user writes, on the command line and in every YAML file (training
and suite), is in units of 1/255; inside the library (attacks, :class:`~mmcoa.train.TrainConfig`,
records' ``attack_params``) they are pixel units of [0, 1] images. :func:`from_255` converts at
that border and refuses what looks like a pixel value (``train_eps: 0.00392156862745098``
would name 0.004/255: it is refused, not run).
"""

from __future__ import annotations

from mmcoa.errors import MmcoaError

UNIT = "1/255"
SMALLEST = 0.1  # below this a value in 1/255 is almost surely a pixel value (1/255 = 0.0039)
LARGEST = 255
ACCEPTED = f"{SMALLEST:g} to {LARGEST} (units of {UNIT}: 1 means 1/255)"


def check_255(value: object, name: str) -> float:
    """``value`` (units of 1/255) if it is a number in [0.1, 255], else a one-line error; a
    value in (0, 0.1) is named as a pixel value written under the old unit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MmcoaError(f"{name} must be a number from {ACCEPTED}; got {value!r}")
    if 0 < value < SMALLEST:
        raise MmcoaError(
            f"{name} is in units of {UNIT} (the unit changed from pixels: {name} 1 "
            f"means 1/255); got {value:g}, a pixel value? write {value * 255:.4g}; "
            f"accepted: {SMALLEST:g} to {LARGEST}"
        )
    if not SMALLEST <= value <= LARGEST:
        raise MmcoaError(f"{name} must be from {ACCEPTED}; got {value:g}")
    return float(value)


def from_255(value: object, name: str) -> float:
    """``value`` given in units of 1/255 (checked by :func:`check_255`) in pixel units."""
    return check_255(value, name) / 255


def to_255(pixels: float) -> float:
    """A pixel-unit value in units of 1/255 (rounded to hide float noise: 4/255 → 4.0)."""
    return round(pixels * 255, 6)
