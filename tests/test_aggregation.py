"""Aggregation modes (docs/methods.md#aggregation) as per-response token weights, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rlft.algorithms import AGGREGATIONS

# two groups of G = 4 (B = 2): group 0 has unequal lengths and both signs, group 1 all-equal rewards
ADV = torch.tensor([[1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
LENGTHS = torch.tensor([[2.0, 6.0, 4.0, 12.0], [3.0, 3.0, 3.0, 3.0]])
L_MAX = 16


def weights(mode: str) -> torch.Tensor:
    return AGGREGATIONS.get(mode)(ADV, LENGTHS, L_MAX)


def test_seq_mean_token_mean_weights_each_token_by_one_over_bg_length():
    expected = 1.0 / (2 * 4 * LENGTHS)
    assert torch.allclose(weights("seq-mean-token-mean"), expected)


def test_token_mean_weights_every_token_by_one_over_all_tokens():
    assert torch.allclose(weights("token-mean"), torch.full_like(LENGTHS, 1 / 36))


def test_seq_mean_token_sum_norm_divides_by_bg_times_lmax():
    assert torch.allclose(weights("seq-mean-token-sum-norm"), torch.full_like(LENGTHS, 1 / (2 * 4 * 16)))


def test_balanced_weights_match_the_formula_by_hand():
    # group 0: S+ = {0, 3}, T+ = 14 -> 2 / (4 * 2 * 14); S- = {1, 2}, T- = 10 -> 2 / (4 * 2 * 10)
    # group 1: every A = 0 -> no policy-gradient weight
    expected = torch.tensor([[1 / 56, 1 / 40, 1 / 40, 1 / 56], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(weights("balanced"), expected)


def side_totals(w: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    """Total token weight of the positive and the negative side."""
    mass = w * lengths
    return float(mass[adv > 0].sum()), float(mass[adv < 0].sum())


def test_balanced_gives_each_sign_side_its_sequence_share_whatever_the_lengths():
    # one group, 2 short correct answers and 2 long wrong ones
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    lengths = torch.tensor([[2.0, 3.0, 40.0, 60.0]])
    pos, neg = side_totals(AGGREGATIONS.get("balanced")(adv, lengths, 64), adv, lengths)
    assert abs(pos - 0.5) < 1e-6 and abs(neg - 0.5) < 1e-6  # |S|/G on each side, as sequence aggregation


def test_token_mean_couples_side_weight_to_length():
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    lengths = torch.tensor([[2.0, 3.0, 40.0, 60.0]])
    pos, neg = side_totals(AGGREGATIONS.get("token-mean")(adv, lengths, 64), adv, lengths)
    assert abs(pos - 5 / 105) < 1e-6 and abs(neg - 100 / 105) < 1e-6  # long wrong answers dominate the step


def test_balanced_weighs_every_token_within_a_side_equally():
    w = weights("balanced")[0]
    assert w[0] == w[3] and w[1] == w[2]  # long and short answers of one side: same per-token weight


def test_learner_loss_gradient_per_token_is_minus_advantage_times_weight():
    # through the real batch builder and loss: on-policy (ratio 1), d loss / d log pi_{i,t} = -A_i * w_i
    from rlft.config import AlgoConfig
    from rlft.learner.loss import micro_batch_loss
    from rlft.pipeline.batch import build_train_batch

    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # A = +-s in group 0, 0 in group 1
    s = 0.5 / (1 / 3) ** 0.5
    cfg = AlgoConfig(aggregation="balanced", std_eps=0.0)
    responses = [[[7] * int(n) for n in row] for row in LENGTHS.tolist()]
    logprobs = [[[0.0] * len(r) for r in g] for g in responses]
    batch = build_train_batch([[1], [1, 2]], responses, logprobs, rewards, cfg, L_MAX, 0)
    logp = torch.zeros(batch.tokens.shape, requires_grad=True)
    loss, _ = micro_batch_loss(logp, logp.detach(), batch.response_mask, batch.advantages, batch.weights,
                               batch.token_weights, cfg)
    loss.backward()
    per_response = [float(logp.grad[i][batch.response_mask[i] > 0].unique()) for i in range(8)]
    expected = [-s / 56, s / 40, s / 40, -s / 56, 0.0, 0.0, 0.0, 0.0]
    assert per_response == pytest.approx(expected, abs=1e-6)
