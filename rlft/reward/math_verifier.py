"""Math answers: extraction from a completion and equivalence to a reference answer.

Extraction looks for, in order, the last `\\boxed{...}` (nested braces; `\\fbox` too), GSM8K's
`#### N`, and the last "the (final) answer is ...". Equivalence first compares numerals written with a
base subscript (`2516_8`, by value and base), then tries an exact numeric fast
path (integers, decimals, thousands separators, simple fractions), then math-verify (sympy-based:
fractions vs decimals, \\dfrac, \\left/\\right, units and \\text{}, degrees, sets, `x = 3`) under a
time limit. (This module is not named math_verify so that it never shadows the library.)
"""

from __future__ import annotations

import functools
import math
import re
import threading
from fractions import Fraction

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
GSM8K = re.compile(r"####\s*(.+)")
ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*[:=]?\s*", re.IGNORECASE)
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
FRACTION = re.compile(r"([-+]?)\\[dt]?frac\{([-+]?\d+)\}\{(\d+)\}|([-+]?\d+)/(\d+)")
# a numeral with a base subscript: 2516_8, 4210_{5}, A3_{16}
BASED = re.compile(r"([0-9A-Za-z]+)_\{?\(?(\d+)\)?\}?")
# \text{4.5}, \textbf{4.5}, \mathrm{4.5}: a wrapper that changes nothing about the answer
TEXT_WRAPPED = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def extract_answer(text: str) -> str | None:
    """The final answer written in `text`, as a string, or None when it states none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    gsm = GSM8K.findall(text)
    if gsm:
        return _clean(gsm[-1])
    said = list(ANSWER_IS.finditer(text))
    if said:
        rest = text[said[-1].end() :].split("\n", 1)[0]
        return _clean(rest) or None
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces matched, escaped `\\{` `\\}` skipped), or None."""
    matches = list(BOXED.finditer(text))
    for match in reversed(matches):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth, i = 0, start
            while i < len(text):
                ch = text[i]
                if ch == "\\":
                    i += 2  # an escaped character, e.g. \{ in a set
                    continue
                depth += ch == "{"
                depth -= ch == "}"
                if depth == 0:
                    return text[start + 1 : i]
                i += 1
        else:  # `\boxed 5`
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                return token.group(0)
    return None


def _clean(answer: str) -> str:
    """Strip the sentence around an answer: '$\\frac12$.' -> '\\frac12', '**42**' -> '42'."""
    previous = None
    while answer != previous:  # '**3.5**.' needs both, in turn
        previous = answer
        answer = re.sub(r"[.。]$", "", answer.strip().strip("*").strip())
    if answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    elif answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    return answer


def answers_equal(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether `pred` states the same mathematical answer as `gold` (both LaTeX or plain text)."""
    based = _base_verdict(pred, gold)
    if based is not None:
        return based
    fast = _numeric_verdict(pred, gold)
    if fast is not None:
        return fast
    limit = _signal_limit(timeout_s)
    gold_parsed, pred_parsed = _parse(gold, limit), _parse(pred, limit)
    if not gold_parsed or not pred_parsed:
        return normalize_answer(pred) == normalize_answer(gold)
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=limit))


def reference_answer(answer: object = None, solution: str | None = None) -> str:
    """The gold answer of a row: GSM8K's text after '####', MATH's `answer`, or the boxed one in `solution`."""
    if answer is not None and str(answer).strip():
        if isinstance(answer, float) and answer.is_integer():
            return str(int(answer))  # AMC files store 27.0
        text = str(answer)
        gsm = GSM8K.findall(text)
        return _clean(gsm[-1]) if gsm else text.strip()
    if solution:
        boxed = last_boxed(solution)
        if boxed is not None:
            return boxed.strip()
    raise ValueError("the row has no reference answer: give it an 'answer' field (or a 'solution' with \\boxed{})")


def math_reward(prompt: str, completion: str, answer: object = None, solution: str | None = None,
                timeout_s: float = 5.0, **fields) -> float:
    """1.0 when the completion's final answer equals the row's reference answer, else 0.0."""
    gold = reference_answer(answer, solution)
    pred = extract_answer(completion)
    return float(pred is not None and answers_equal(pred, gold, timeout_s))


def _numeric_verdict(pred: str, gold: str) -> bool | None:
    """True/False when both are plain numbers and the verdict is certain; None to ask math-verify."""
    a, b = _as_number(pred), _as_number(gold)
    if a is None or b is None:
        return None
    if a[0] == b[0]:
        return True
    # two integers, fractions or decimals that differ are different answers; only an exact value
    # against a decimal (1/3 vs 0.3333) may be a rounded form, which math-verify judges
    return False if a[1] == b[1] else None


def _base_verdict(pred: str, gold: str) -> bool | None:
    """True/False when either side is a numeral with a base subscript (`2516_8`); None otherwise.

    math-verify reads `2516_9` as a subscripted symbol and drops the base, so `2516_9` would equal
    `2516_8`. Here two subscripted numerals are equal when their values are; a bare numeral is read
    in the base the other side names (the problem asked for that base, so `2516` answers `2516_8`);
    a subscripted prediction against a gold written in decimal is compared by value (`1010_2` = 10).
    """
    a, b = _as_based(pred), _as_based(gold)
    if a is None and b is None:
        return None
    if a is None or b is None:
        bare, based = (pred, b) if a is None else (gold, a)
        text = _unwrap(bare).strip().strip("$").replace(" ", "")
        if not re.fullmatch(r"[0-9A-Za-z]+", text):
            return False  # math-verify would drop the base, so it cannot judge this pair
        if b is not None:  # the gold names the base; a bare prediction is read in it
            return _digits_value(text, b[1]) == b[0]
        return text.isdigit() and int(text) == a[0]  # subscripted prediction vs a decimal gold
    return a[0] == b[0]


def _as_based(text: str) -> tuple[int, int] | None:
    """(value, base) of a numeral written with a base subscript, e.g. '2516_8' -> (1358, 8)."""
    match = BASED.fullmatch(_unwrap(text).strip().strip("$").replace(" ", ""))
    if not match:
        return None
    base = int(match.group(2))
    value = _digits_value(match.group(1), base)
    return None if value is None else (value, base)


def _digits_value(digits: str, base: int) -> int | None:
    """The value of `digits` read in `base` (2..36), or None when a digit is out of range."""
    if not 2 <= base <= 36:
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def _unwrap(text: str) -> str:
    """'\\text{4.5}' -> '4.5': text wrappers removed, keeping what they wrap."""
    previous = None
    while text != previous:
        previous, text = text, TEXT_WRAPPED.sub(r"\1", text)
    return text


def _as_number(text: str) -> tuple[Fraction, bool] | None:
    """(value, exact) for '1,234', '-0.5', '50%', '\\frac{1}{2}', '3/4', '\\text{4.5}'; exact is False for decimals."""
    text = _unwrap(text.strip()).strip().strip("$").replace("\\!", "").replace("{,}", ",").replace(" ", "")
    text = re.sub(r"^\\?\$", "", text).removesuffix("\\%").removesuffix("%")
    if NUMBER.fullmatch(text):
        return Fraction(text.replace(",", "")), "." not in text
    match = FRACTION.fullmatch(text)
    if match:
        if match.group(2):  # \frac{a}{b}
            sign, num, den = match.group(1), match.group(2), match.group(3)
        else:  # a/b
            sign, num, den = "", match.group(4), match.group(5)
        if int(den) != 0:
            value = Fraction(int(num), int(den))
            return (-value if sign == "-" else value), True
    return None


@functools.lru_cache(maxsize=8192)
def _parse(text: str, limit: int | None) -> tuple:
    # references repeat across a group's samples, so parsed ones are cached (sympy objects are immutable)
    return tuple(parse(f"\\boxed{{{text}}}", [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=limit))


def _signal_limit(timeout_s: float) -> int | None:
    """math-verify's time limit uses SIGALRM, which only the main thread may set; elsewhere the caller
    (a reward worker process, killed at its deadline) is the limit."""
    return max(1, math.ceil(timeout_s)) if threading.current_thread() is threading.main_thread() else None


def normalize_answer(text: str) -> str:
    """A comparison key: whitespace, \\left/\\right, \\! \\, and $ removed; \\dfrac and \\tfrac read as \\frac."""
    text = re.sub(r"\s+|\\left|\\right|\\!|\\,|\$", "", text)
    return text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
