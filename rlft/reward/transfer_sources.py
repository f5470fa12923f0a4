"""Source rewards for transfer learning (TPO) on the embedded addition task: helpful ones and a useless one.

Registered like any reward, so `transfer.sources=[digit_credit]` works; all are imperfect on
purpose. `digit_credit` gives partial credit per correct digit, `last_digit` checks only the ones
digit (a partial verifier), and `random_score` knows nothing: the control that transfer must
survive at the cost of no more than noise.
"""

from __future__ import annotations

import hashlib
import random

from rlft.reward.names import batched, register_reward


@register_reward("digit_credit")
def digit_credit(prompt: str, completion: str, answer: str = "", **fields) -> float:
    """Digits matching the reference answer, aligned from the right, over the longer of the two lengths."""
    text, answer = completion.strip(), str(answer).strip()
    if not text or not answer:
        return 0.0
    return sum(a == b for a, b in zip(reversed(text), reversed(answer))) / max(len(text), len(answer))


@register_reward("last_digit")
def last_digit(prompt: str, completion: str, answer: str = "", **fields) -> float:
    """1.0 when the completion's last character is the reference answer's last digit (a partial check)."""
    text, answer = completion.strip(), str(answer).strip()
    return float(bool(text) and bool(answer) and text[-1] == answer[-1])


@register_reward("random_score")
@batched
def random_score(prompts: list[str], completions: list[str], seed: int = 0, **fields) -> list[float]:
    """Independent uniform scores in [0, 1), seeded by the call's samples: no information about quality.

    One draw per sample, not a hash of its text: a hash gives repeated completions one shared score,
    and a group's right answer is usually its most repeated text, so ranking by a text hash would
    favour rare (mostly wrong) answers, which is harmful rather than useless.
    """
    digest = hashlib.blake2b("\0".join([str(seed), *prompts, *completions]).encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    return [rng.random() for _ in prompts]
