"""Extra destinations for the training log (``--log tensorboard``), beside ``metrics.jsonl``.

``metrics.jsonl`` stays the source of truth: every row is written there first, and a sink only
mirrors the numbers of each step. The TensorBoard sink writes event files to
``<run>/tensorboard/`` under the tags open_clip's trainer uses (``train/loss``, ``train/lr``,
...), so ``tensorboard --logdir runs`` shows several runs side by side. A resumed run purges the
events from its first step on (TensorBoard's ``purge_step``), as it rewrites those rows of
``metrics.jsonl``, so a resumed curve has no doubled steps.

The package is the optional extra ``tensorboard`` (``pip install 'mmcoa[tensorboard]'``);
:func:`check_log_setting` refuses the setting with one line when it is missing, before a run
writes anything.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
from pathlib import Path

from mmcoa.errors import MmcoaError

SINKS = ("tensorboard",)
TENSORBOARD_DIR = "tensorboard"
_OPEN: dict[tuple[str, str], object] = {}  # (sink, run folder) -> open writer


def check_log_setting(value: str | None) -> str | None:
    """``value`` (None, or a comma-separated list of :data:`SINKS`), or a one-line error naming
    an unknown sink or a sink whose package is not installed."""
    for sink in parse_sinks(value):
        if sink not in SINKS:
            raise MmcoaError(f"log must be one of {', '.join(SINKS)} (comma-separated); got {value!r}")
        if sink == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise MmcoaError(
                "--log tensorboard needs the tensorboard package, which is not "
                "installed: pip install 'mmcoa[tensorboard]' (or pip install tensorboard)"
            )
    return value


def parse_sinks(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def write_sinks(log: str | None, run_dir: str | Path, step: int, values: dict, final: bool = False) -> None:
    """Mirror one metrics row (``step`` counted from 1) to each sink named in ``log``; the
    numbers of ``values`` become scalars ``train/<name>``. ``final`` closes the writers (the
    run's last step); each row is flushed, so a run that stops early keeps its curve too."""
    for sink in parse_sinks(log):
        writer = _writer(sink, Path(run_dir), step)
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(f"train/{name}", value, step)
        writer.flush()
    if final:
        close_sinks(run_dir)


def close_sinks(run_dir: str | Path | None = None) -> None:
    """Close the writers of ``run_dir`` (all when None)."""
    for key in [k for k in _OPEN if run_dir is None or k[1] == str(Path(run_dir))]:
        _OPEN.pop(key).close()


def _writer(sink: str, run_dir: Path, step: int):
    key = (sink, str(run_dir))
    if key not in _OPEN:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events at or after the first step this process logs are dropped, as a
        # fresh or resumed run rewrites those rows of metrics.jsonl
        _OPEN[key] = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=step)
    return _OPEN[key]


atexit.register(close_sinks)
