"""Fetching weights without hanging: probe the hub once, go cache-only when it is unreachable.

Without this, huggingface_hub retries an unreachable host for about a minute per file before
failing. We probe the host with a short TCP connect; when it does not answer we force the hub
client into offline mode, so cached weights still load and missing ones fail at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from typing import Iterator

from mmcoa.errors import WeightsUnavailableError

HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    """True when the user asked the hub libraries to stay offline."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@functools.cache
def host_reachable(host: str = HUB_HOST, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_is_offline() -> bool:
    return offline_requested() or not host_reachable()


@contextlib.contextmanager
def _forced_hub_offline(enabled: bool) -> Iterator[None]:
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = previous or enabled
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


@contextlib.contextmanager
def fetching_weights(what: str, how_to_provide: str) -> Iterator[bool]:
    """Run a weight download in cache-only mode when offline; turn any failure into one line.

    Yields whether the hub is offline (callers pass ``local_files_only`` to transformers).
    """
    offline = hub_is_offline()
    try:
        with _forced_hub_offline(offline):
            yield offline
    except WeightsUnavailableError:
        raise
    except Exception as error:  # the hub clients raise many types; all mean "no weights"
        reason = "not in the local cache and the hub is unreachable" if offline else _first_line(error)
        raise WeightsUnavailableError(
            f"cannot obtain weights for {what}: {reason}; {how_to_provide}"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def quiet_transformers_progress(quiet: bool = True):
    """Hide transformers' progress bars ("Loading weights", "Writing model shards") for the
    duration, restoring the previous state."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    if not quiet or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_disabled:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


@contextlib.contextmanager
def pretrained_source(what: str, source: str) -> Iterator[bool]:
    """Around transformers ``from_pretrained(source, local_files_only=...)`` calls: yields the
    ``local_files_only`` to pass (a local directory, or a hub that cannot be reached), turns a
    missing download into a one-line error naming ``what``, and keeps progress bars quiet."""
    local = os.path.isdir(source)
    hint = (
        "the directory must hold config.json, the weights and the tokenizer files"
        if local
        else f"download {source} on a machine with internet, or pass a local directory"
    )
    with fetching_weights(what, hint) as offline, quiet_transformers_progress():
        yield local or offline
