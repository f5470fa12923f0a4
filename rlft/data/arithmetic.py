"""The embedded default task: seeded addition problems `a+b=` with exact integer answers.

Both operands have exactly `digits` digits (3 by default: 100+100 .. 999+999), the classic
"3-digit addition" of small-transformer studies.

The train stream is a pure function of (seed, step), so a resumed run sees the same prompts as
an uninterrupted one; the held-out set is fixed (independent of the run's seed) and never
appears in the train stream.
"""

from __future__ import annotations

import random
from typing import Callable

HELD_OUT_SEED = 20260521


def make_problem(rng: random.Random, digits: int) -> dict:
    """One problem row: {'prompt': '123+456=', 'answer': '579'}."""
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def held_out_problems(count: int, digits: int, make: Callable[[random.Random, int], dict] = make_problem) -> list[dict]:
    """The fixed held-out set: `count` distinct problems."""
    rng = random.Random(HELD_OUT_SEED + digits)
    seen: dict[str, dict] = {}
    while len(seen) < count:
        row = make(rng, digits)
        seen.setdefault(row["prompt"], row)
    return list(seen.values())


class ArithmeticTask:
    """Train batches by step and the held-out set for the addition task (or another generator, `make`)."""

    def __init__(
        self, digits: int = 3, eval_size: int = 500, seed: int = 0, format_prompt: Callable[[dict], str] | None = None,
        make: Callable[[random.Random, int], dict] = make_problem,
    ):
        self.digits = digits
        self.seed = seed
        self.format_prompt = format_prompt
        self.make = make
        raw_eval = held_out_problems(eval_size, digits, make)
        self._held_out = {row["prompt"] for row in raw_eval}
        self.eval_rows = [self._formatted(row) for row in raw_eval]

    def _formatted(self, row: dict) -> dict:
        return {**row, "prompt": self.format_prompt(row)} if self.format_prompt else row

    def train_batch(self, step: int, size: int) -> list[dict]:
        """The `size` training problems of step `step` (never from the held-out set)."""
        rng = random.Random(f"arithmetic-{self.seed}-{step}")
        rows = []
        while len(rows) < size:
            row = self.make(rng, self.digits)
            if row["prompt"] not in self._held_out:
                rows.append(self._formatted(row))
        return rows
