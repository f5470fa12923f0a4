"""Built-in rewards: `exact_answer` and `final_answer` (the embedded tasks), `math` (verifier), `code` (tests).

`math` and `code` import their machinery on first call, so that loading the registry stays cheap;
`preload` names that module, which reward workers import at start so no call pays for it (sympy
takes about a second, which would count against the call's time limit).
"""

from __future__ import annotations

from rlft.data.scratchpad import is_correct
from rlft.reward.names import batched, register_reward


# The two embedded tasks' rewards are batched: a string comparison cannot hang, so one call per chunk of a step
# replaces a round trip to a worker process per sample (~90 us each, most of the reward worker's time)


@register_reward("exact_answer")
@batched
def exact_answer(prompts: list[str], completions: list[str], answer: list | None = None, **fields) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals the reference answer."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, _answers(answer, len(completions)))]


@register_reward("final_answer")
@batched
def final_answer(prompts: list[str], completions: list[str], answer: list | None = None, **fields) -> list[float]:
    """1.0 when the text after the completion's last '#' equals the reference answer (the scratchpad task)."""
    return [float(is_correct(c, a)) for c, a in zip(completions, _answers(answer, len(completions)))]


def _answers(column: list | None, n: int) -> list[str]:
    """The rows' reference answers as strings ('' where a row has none)."""
    return ["" if a is None else str(a) for a in (column if column is not None else [None] * n)]


@register_reward("math")
def math_answer(prompt: str, completion: str, **fields) -> float:
    """1.0 when the completion's final answer (\\boxed{}, ####, 'the answer is') equals the row's `answer`."""
    from rlft.reward.math_verifier import math_reward

    return math_reward(prompt, completion, **fields)


math_answer.preload = "rlft.reward.math_verifier"


@register_reward("math_format")
def math_format(prompt: str, completion: str, **fields) -> float:
    """1.0 when the completion states a final answer `math` can read (right or wrong); weight 0 to only log it."""
    from rlft.reward.math_verifier import extract_answer

    return float(extract_answer(completion) is not None)


math_format.preload = "rlft.reward.math_verifier"


@register_reward("code")
def code_tests(prompt: str, completion: str, **fields) -> float:
    """1.0 when the completion passes the row's unit tests (`test` + `entry_point`, or `tests`) in the sandbox."""
    from rlft.reward.code_reward import code_reward

    return code_reward(prompt, completion, **fields)


code_tests.preload = "rlft.reward.code_reward"
