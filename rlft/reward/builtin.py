"""Built-in rewards for the embedded task and simple answer checks."""

from __future__ import annotations

from rlft.reward.registry import register_reward


@register_reward("exact_answer")
def exact_answer(prompt: str, completion: str, answer: str = "", **fields) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, equals the reference answer."""
    return float(completion.strip() == str(answer).strip())
