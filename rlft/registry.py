"""Named registries: every algorithm, reward, optimizer and adapter kind is a name on the CLI and in YAML.

An entry may declare what it needs from the rest of the system, as words from `NEEDS` below:

    @OPTIMIZERS.register("flora", needs={"whole_matrices"})
    def build_flora(params, cfg): ...

Cross-checks (rlft/config.py) read these words, never the entries' names, so adding an entry with
a known need touches only the file that registers it. A new need is one line in `NEEDS` plus the
check or code path that honours it (a need nothing reads would be a promise nobody keeps).
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from rlft.errors import ConfigError

T = TypeVar("T")

# What an entry may need; the text says why, and is quoted in the error that refuses a combination.
NEEDS: dict[str, str] = {
    # read by rlft.config.check_learner: DeepSpeed ZeRO hands the optimizer flat 1-D slices of the parameters
    "whole_matrices": "it needs each weight's matrix shape, and ZeRO gives the optimizer flat 1-D slices",
    # read by rlft.config.check_learner: ZeRO reduces gradients into per-rank slices before any hook sees them
    "whole_gradients": "its pre-step update needs whole gradients, which ZeRO keeps in slices",
    # read by rlft.config (ZeRO, NeuZip) and the learner, which takes its forward-only branch (optim 'zo')
    "loss_closure": "it steps on loss evaluations by forward passes, not on gradients, which DeepSpeed's engine steps on",
}


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
    """A name -> object table filled by a decorator, e.g. `@ADVANTAGES.register("grpo")`, with each entry's needs."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._needs: dict[str, frozenset[str]] = {}

    def register(self, name: str, needs: Iterable[str] = ()) -> Callable[[T], T]:
        """Decorator: add the decorated object as `name`, needing the `NEEDS` words in `needs`."""

        def add(obj: T) -> T:
            self.add(name, obj, needs)
            return obj

        return add

    def add(self, name: str, obj: T, needs: Iterable[str] = ()) -> None:
        """Add `obj` as `name` (for values that are not decorated functions)."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        unknown = set(needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"{self.kind} {name!r} needs {sorted(unknown)}, not words of rlft.registry.NEEDS")
        self._items[name] = obj
        self._needs[name] = frozenset(needs)

    def get(self, name: str, key: str | None = None) -> T:
        """The object named `name`; a ConfigError naming the choices when there is none."""
        if name not in self._items:
            raise ConfigError(unknown_choice_message(key or self.kind, name, self.names()))
        return self._items[name]

    def needs(self, name: str) -> frozenset[str]:
        """What entry `name` declared it needs (empty for most)."""
        return self._needs[name]

    def names_without(self, needs: Iterable[str]) -> list[str]:
        """The entries that need none of `needs`: the alternatives to suggest when those are refused."""
        return [n for n in self.names() if not self._needs[n] & set(needs)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
