"""The aggregation weight statistics: what each mode puts on long wrong answers, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algorithms import AGGREGATIONS
from rlft.algorithms.weight_stats import weight_statistics

# one group of four: right answers of 2 and 6 tokens, wrong ones of 4 and 8 (the 8 is the long wrong one)
LENGTHS = torch.tensor([[2.0, 4.0, 6.0, 8.0]])
CORRECT = torch.tensor([[True, False, True, False]])
ADVANTAGES = torch.tensor([[1.0, -1.0, 1.0, -1.0]])


def stats_for(mode: str) -> dict[str, float]:
    weights = AGGREGATIONS.get(mode)(ADVANTAGES, LENGTHS, 8).flatten()
    return weight_statistics(weights, ADVANTAGES.flatten(), LENGTHS, CORRECT)


@pytest.mark.parametrize("mode, negative, long_wrong, per_token", [
    ("seq-mean-token-mean", 0.5, 0.25, (1 / 32) / (1 / 20)),  # each answer 1/4 of the mass, thinned over its tokens
    ("token-mean", 12 / 20, 8 / 20, 1.0),  # mass follows tokens: the wrong side is longer, so it weighs more
    ("balanced", 0.5, 1 / 3, (1 / 24) / (1 / 20)),  # each side 1/2; inside the wrong side, 8 of its 12 tokens
])
def test_weight_statistics_read_each_modes_mass_on_long_wrong_answers(mode, negative, long_wrong, per_token):
    stats = stats_for(mode)
    assert stats["weights/negative_share"] == pytest.approx(negative)
    assert stats["weights/long_wrong_share"] == pytest.approx(long_wrong)
    assert stats["weights/long_wrong_token_weight"] == pytest.approx(per_token)


def test_weight_statistics_report_lengths_of_right_and_wrong_and_their_sign_correlation():
    stats = stats_for("balanced")
    assert stats["response/length_right"] == 4.0 and stats["response/length_wrong"] == 6.0
    # length minus group mean (-3, -1, 1, 3) against sign (+, -, +, -)
    assert stats["weights/length_sign_corr"] == pytest.approx(-1 / math.sqrt(5))


def test_weight_statistics_skip_weights_when_no_group_has_unequal_rewards():
    zeros = torch.zeros(4)
    stats = weight_statistics(zeros, zeros, LENGTHS, torch.ones(1, 4, dtype=torch.bool))
    assert stats == {"response/length_right": 5.0}
