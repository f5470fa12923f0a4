"""The embedded reasoning task: multi-operand addition written out as a scratchpad of partial sums.

A prompt adds 2 to 6 operands (the operand count drawn per problem): a first one of 1-2 digits,
then single digits. The reference completion writes one line per addition (the running sum, its
carries done), then the answer after '#':

    prompt      47+8+5+9=
    completion  47+8=55
                55+5=60
                60+9=69
                #69

so the number of steps (and the length: 8 to 53 characters) varies by problem. Only the final
answer is checked (`final_answer`), as a reasoning verifier would: a scratchpad that skips an
operand is shorter and wrong, one that repeats an operand or never stops is longer and wrong, and
a slip in a partial sum keeps the length and changes the answer.

Like the addition task, the train stream is a pure function of (seed, step) and the held-out set
is fixed (independent of the run's seed) and never appears in the train stream.
"""

from __future__ import annotations

import random

HELD_OUT_SEED = 20261129
MIN_OPERANDS, MAX_OPERANDS = 2, 6
# a 2-digit first operand keeps the problem space large (891 two-operand problems, 8019 with three) so
# the held-out set excludes a small part of each operand count; single digits after it keep steps short
MAX_FIRST, MAX_OPERAND = 99, 9
HELD_OUT_SIZE = 500  # problems kept out of every train stream (and out of the model's warm-up)
# what `data.source=scratchpad` changes unless the run sets it: the model warm-started on this task,
# a response cap with room beyond the longest reference (52 tokens with EOS) for runaway scratchpads,
# and the reward that reads the final answer
TASK_DEFAULTS = {
    "model": {"path": "embedded:scratchpad"},
    "rollout": {"max_new_tokens": 80},
    "reward": {"functions": ["final_answer"]},
}


def scratchpad(operands: list[int]) -> str:
    """The reference completion: one `total+x=new` line per operand after the first, then `#answer`."""
    lines, total = [], operands[0]
    for x in operands[1:]:
        lines.append(f"{total}+{x}={total + x}")
        total += x
    return "\n".join(lines + [f"#{total}"])


def make_problem(rng: random.Random) -> dict:
    """One row: {'prompt': '47+8+5=', 'answer': '60', 'scratchpad': '47+8=55\\n55+5=60\\n#60'}."""
    count = rng.randint(MIN_OPERANDS, MAX_OPERANDS)
    operands = [rng.randint(1, MAX_FIRST)] + [rng.randint(1, MAX_OPERAND) for _ in range(count - 1)]
    return {"prompt": "+".join(map(str, operands)) + "=", "answer": str(sum(operands)), "scratchpad": scratchpad(operands)}


def final_answer(completion: str) -> str | None:
    """The text after the completion's last '#', stripped; None when there is no '#'."""
    head, mark, tail = completion.rpartition("#")
    return tail.strip() if mark else None


def is_correct(completion: str, answer: str) -> bool:
    """Whether the completion's final answer equals the reference (the scratchpad itself is not checked)."""
    return final_answer(completion) == str(answer).strip()


def held_out_problems(count: int) -> list[dict]:
    """The fixed held-out set: `count` distinct problems."""
    rng = random.Random(HELD_OUT_SEED)
    seen: dict[str, dict] = {}
    while len(seen) < count:
        row = make_problem(rng)
        seen.setdefault(row["prompt"], row)
    return list(seen.values())


class ScratchpadTask:
    """Train batches by step and the fixed held-out set for the scratchpad task."""

    def __init__(self, eval_size: int = 500, seed: int = 0):
        self.seed = seed
        held_out = held_out_problems(max(eval_size, HELD_OUT_SIZE))
        self.eval_rows = held_out[:eval_size]  # the set is drawn in order: a smaller one is a prefix
        self._held_out = {row["prompt"] for row in held_out}

    def train_batch(self, step: int, size: int) -> list[dict]:
        """The `size` training problems of step `step` (never from the held-out set)."""
        rng = random.Random(f"scratchpad-{self.seed}-{step}")
        rows = []
        while len(rows) < size:
            row = make_problem(rng)
            if row["prompt"] not in self._held_out:
                rows.append(row)
        return rows
