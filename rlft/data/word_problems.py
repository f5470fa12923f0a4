"""A generated task for small instruct models: one- and two-step word problems with exact integer answers.

`data.source=word-problems`. Each problem is a short story about a person and countable things
("Anna has 12 stickers. Anna gets 7 more stickers. How many stickers does Anna have now?"):
addition, subtraction, multiplication (n bags of m), and two steps (buy, then give away).
Like the arithmetic task, the train stream is a pure function of (seed, step) and the fixed
held-out set never appears in it. SmolLM2-135M-Instruct (4-bit GGUF) answers 11 % of the held-out set
right at the start, greedy, and ~3 % of samples at temperature 0.7, but often states no answer at all:
its preset adds a small reward for stating one (docs/results/smollm2_grpo.md).
"""

from __future__ import annotations

import random

NAMES = ["Tom", "Anna", "Sam", "Lucy", "Ben", "Mia", "Leo", "Emma", "Omar", "Zoe"]
THINGS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "shells", "coins", "stamps"]


def _add(rng: random.Random, who: str, what: str) -> tuple[str, int]:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    return f"{who} has {a} {what}. {who} gets {b} more {what}. How many {what} does {who} have now?", a + b


def _sub(rng: random.Random, who: str, what: str) -> tuple[str, int]:
    a = rng.randint(10, 30)
    b = rng.randint(1, a - 1)
    return f"{who} has {a} {what} and gives away {b} of them. How many {what} does {who} have left?", a - b


def _mul(rng: random.Random, who: str, what: str) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{who} buys {a} bags with {b} {what} in each bag. How many {what} does {who} buy?", a * b


def _two_step(rng: random.Random, who: str, what: str) -> tuple[str, int]:
    a, b, c = rng.randint(5, 20), rng.randint(2, 10), rng.randint(1, 5)
    return f"{who} has {a} {what}, buys {b} more, then gives {c} to a friend. How many {what} does {who} have now?", a + b - c


KINDS = (_add, _sub, _mul, _two_step)


def make_word_problem(rng: random.Random, digits: int = 0) -> dict:
    """One problem row: {'prompt': story and question, 'answer': integer as text}; `digits` is unused."""
    kind = rng.choice(KINDS)
    text, answer = kind(rng, rng.choice(NAMES), rng.choice(THINGS))
    return {"prompt": text, "answer": str(answer)}
