"""Plugins: a lab's own methods and attacks, registered without editing mmcoa.

A plugin is a Python module (an importable name, or a ``.py`` file) that registers classes with
the registries' decorators (``@METHODS.register("my-defense")``, ``@ATTACKS.register(...)``).
``MMCOA_PLUGINS`` lists them, separated by ``os.pathsep`` (``:`` on Linux); the command line
imports them before it builds its flags, so every command, ``--help`` and suite file knows them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from mmcoa.errors import MmcoaError

ENVIRONMENT = "MMCOA_PLUGINS"


def load_plugins(spec: str | None = None) -> list[ModuleType]:
    """Import each plugin of ``spec`` (default: ``$MMCOA_PLUGINS``); a missing or failing
    plugin is one line naming it and what is accepted."""
    spec = os.environ.get(ENVIRONMENT, "") if spec is None else spec
    return [_load(entry.strip()) for entry in spec.split(os.pathsep) if entry.strip()]


def _load(entry: str) -> ModuleType:
    try:
        if entry.endswith(".py"):
            return _load_file(Path(entry).expanduser())
        return importlib.import_module(entry)
    except ModuleNotFoundError as error:
        raise MmcoaError(
            f"{ENVIRONMENT}: cannot import {entry!r} ({error}); give module names or .py files "
            f"separated by {os.pathsep!r}"
        ) from None


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise MmcoaError(f"{ENVIRONMENT}: plugin file {path} does not exist; give module names or .py files")
    name = f"mmcoa_plugin_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
