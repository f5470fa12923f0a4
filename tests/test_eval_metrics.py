"""pass@k and maj@k against hand-computed values."""

from __future__ import annotations

import pytest

from rlft.eval.metrics import maj_at_k, pass_at_k, summarize


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (4, 0, 2, 0.0),
    (4, 3, 2, 1.0),  # fewer than k wrong samples: some k-subset always holds a right one
    (1, 1, 1, 1.0),
    (200, 1, 100, 0.5),
])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_maj_at_k_votes_over_the_first_k_answers():
    answers = ["\\frac{1}{2}", "3", "\\dfrac{1}{2}", "3", "3"]
    correct = [True, False, True, False, False]
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k(answers, correct, 3) == 1.0  # \dfrac{1}{2} and \frac{1}{2} are one vote
    assert maj_at_k(answers, correct, 5) == 0.0  # '3' wins 3 to 2
    assert maj_at_k(["3", "\\frac12", None, None], [False, True, False, False], 4) == 0.0  # tie: the earliest
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_summarize_averages_over_problems_and_skips_k_above_n():
    correct = [[True, False], [False, False], [True, True]]
    answers = [["1", "2"], ["5", "5"], ["7", "7"]]
    metrics = summarize(correct, [1, 2, 4], answers)
    assert metrics == pytest.approx({"pass@1": (0.5 + 0 + 1) / 3, "maj@1": 2 / 3, "pass@2": 2 / 3, "maj@2": 2 / 3})
