"""One small registry type shared by models, datasets, attacks and (later) training methods."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from mmcoa.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → entry table whose failed lookups list the known names.

    Example::

        ATTACKS = Registry("attack")

        @ATTACKS.register("pgd")
        class PGD: ...

        ATTACKS.get("pgd") is PGD and PGD.name == "pgd"
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Add an entry under ``name`` and set its ``name`` to it (a class attribute for a
        class), so an entry always knows what it is registered as. An immutable entry (a
        frozen dataclass) must already carry that name, if it has one."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            try:
                entry.name = name
            except AttributeError:  # frozen dataclass (FrozenInstanceError), slots
                if getattr(entry, "name", name) != name:
                    raise ValueError(f"{self.kind} {entry.name!r} registered as {name!r}") from None
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
