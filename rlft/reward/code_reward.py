"""Code answers: turn a completion and a row's unit tests into one program for the sandbox.

Two row formats: HumanEval's `prompt` + `test` (defines `check(candidate)`) + `entry_point`, and a
`tests` field (a list of assert statements, or one string of test code) that runs after the code.
"""

from __future__ import annotations

import re

from rlft.reward.sandbox import SandboxLimits, run_python

FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The code in a completion: its first fenced block that defines something, else the text itself."""
    blocks = FENCE.findall(completion)
    if not blocks:
        return completion
    defining = [b for b in blocks if re.search(r"^\s*(def|class) ", b, re.MULTILINE)]
    return (defining or blocks)[0]


def build_program(prompt: str, completion: str, test: str | None = None, entry_point: str | None = None,
                  tests: list[str] | str | None = None) -> str:
    """The program that passes (runs to its end) exactly when the completion passes the row's tests."""
    code = extract_code(completion)
    if test and entry_point:
        if re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
            # a whole function: keep the prompt's imports and helpers when the prompt is code
            body = (prompt + "\n\n" if _is_python(prompt) else "") + code
        else:  # a continuation of the prompt's function body, as base models write it
            body = prompt + code
        return f"{body}\n\n{test}\n\ncheck({entry_point})\n"
    if tests:
        checks = "\n".join(tests) if isinstance(tests, (list, tuple)) else str(tests)
        return f"{code}\n\n{checks}\n"
    raise ValueError("the row has no unit tests: give it 'test' and 'entry_point' (HumanEval) or 'tests'")


def code_reward(prompt: str, completion: str, test: str | None = None, entry_point: str | None = None,
                tests: list[str] | str | None = None, timeout_s: float = 5.0, memory_mb: int = 1024,
                **fields) -> float:
    """1.0 when the completion passes the row's unit tests in the sandbox, else 0.0."""
    program = build_program(prompt, completion, test, entry_point, tests)
    return float(run_python(program, SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)).passed)


def _is_python(text: str) -> bool:
    try:
        compile(text, "<prompt>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True
