"""Named registries: every algorithm, reward and optimizer is a name on the CLI and in YAML."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from rlft.errors import ConfigError

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    """The choice that looks most like `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_choice_message(key: str, value: object, choices: list[str]) -> str:
    """`key: 'x' is not one of [...]; did you mean 'y'?` — the one wording for a bad name."""
    msg = f"{key}: {value!r} is not one of {sorted(choices)}"
    hint = closest(str(value), list(choices))
    return msg + (f"; did you mean {hint!r}?" if hint else "")


class Registry(Generic[T]):
    """A name -> object table filled by a decorator, e.g. `@ADVANTAGES.register("grpo")`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """The object named `name`; a ConfigError naming the choices when there is none."""
        if name not in self._items:
            raise ConfigError(unknown_choice_message(key or self.kind, name, self.names()))
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
