"""One registry mechanism for everything a config names: advantages, loss aggregations, KL estimators,
rewards and tasks.

A config says `rl.advantage="rloo"` or `data.task="gsm8k"`; the library looks the name up in the
registry of that kind. Because validation asks the same registries (`name in ADVANTAGES`), anything a user
registers (`register_advantage("mine", fn)`) is usable from a config at once, and a misspelt name fails
with the closest registered one.

Registering the same definition again (a re-run notebook cell, a reloaded module) replaces it; a
different object under a taken name is an error, so two plug-ins cannot silently shadow each other.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def same_definition(old: Any, new: Any) -> bool:
    """The same function defined again: same module and qualified name. Objects without a qualified name
    (a `functools.partial`, an instance) are the same only when they are equal."""
    names = [(getattr(f, "__module__", None), getattr(f, "__qualname__", None)) for f in (old, new)]
    if names[0][1] is None or names[1][1] is None:
        return old == new
    return names[0] == names[1]


def closest(name: str, choices: list[str]) -> str:
    """" (did you mean 'x'?)" for the closest of `choices`, or "" when none is close."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """Named objects of one kind. Iterating gives the names, sorted; `in` tests a name."""

    def __init__(self, kind: str, same: Callable[[T, T], bool] = same_definition):
        self.kind = kind
        self._same = same
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        old = self._items.get(name)
        if old is not None and old is not item and not self._same(old, item):
            raise ValueError(f"{self.kind} {name!r} is registered twice (by different definitions)")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(self.unknown(name))
        return self._items[name]

    def unknown(self, name: str) -> str:
        """The message for a name nobody registered: the closest name and every registered one."""
        names = self.names()
        hint = closest(str(name), names)
        return f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(names) or '(none)'}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The names in the order they were registered (built-ins first, as their module lists them)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
