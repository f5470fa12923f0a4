"""Built-in rewards: `exact_answer` and `final_answer` (the embedded tasks), `math` (verifier), `code` (tests).

`math` and `code` import their machinery on first call, so that loading the registry stays cheap;
`preload` names that module, which reward workers import at start so no call pays for it (sympy
takes about a second, which would count against the call's time limit).
"""

from __future__ import annotations

from rlft.data.scratchpad import is_correct
from rlft.reward.names import register_reward


@register_reward("exact_answer")
def exact_answer(prompt: str, completion: str, answer: str = "", **fields) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, equals the reference answer."""
    return float(completion.strip() == str(answer).strip())


@register_reward("final_answer")
def final_answer(prompt: str, completion: str, answer: str = "", **fields) -> float:
    """1.0 when the text after the completion's last '#' equals the reference answer (the scratchpad task)."""
    return float(is_correct(completion, answer))


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
