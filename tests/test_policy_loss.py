"""The clipped surrogate, dual clip, GSPO's sequence ratio, truncated IS and KL against hand-computed values."""

from __future__ import annotations

import math

import torch

from rlft.algorithms.policy_loss import clipped_surrogate, importance_log_ratio, kl_penalty, truncated_is_weights
from rlft.config import AlgoConfig
from rlft.learner.loss import micro_batch_loss


def loss_for(ratio: float, adv: float, low=0.2, high=0.2, dual=None) -> float:
    loss, _ = clipped_surrogate(torch.tensor([[math.log(ratio)]]), torch.tensor([[adv]]), low, high, dual)
    return float(loss)


def test_positive_advantage_is_clipped_above_one_plus_eps_high():
    assert abs(loss_for(1.5, 1.0) - (-1.2)) < 1e-6
    assert abs(loss_for(1.5, 1.0, high=0.28) - (-1.28)) < 1e-6  # clip-higher
    assert abs(loss_for(1.1, 1.0) - (-1.1)) < 1e-6  # inside the trust region: unclipped


def test_negative_advantage_is_clipped_below_one_minus_eps_low():
    assert abs(loss_for(0.5, -1.0) - 0.8) < 1e-6
    assert abs(loss_for(0.5, -1.0, low=0.4) - 0.6) < 1e-6


def test_dual_clip_bounds_negative_advantage_losses():
    assert abs(loss_for(5.0, -1.0) - 5.0) < 1e-5
    assert abs(loss_for(5.0, -1.0, dual=3.0) - 3.0) < 1e-6
    assert abs(loss_for(5.0, 1.0, dual=3.0) - (-1.2)) < 1e-6  # positive advantages unaffected


def test_gradient_of_unclipped_loss_is_minus_advantage_times_ratio():
    logp = torch.zeros(1, 1, requires_grad=True)
    log_ratio = importance_log_ratio(logp, torch.zeros(1, 1), torch.ones(1, 1))
    loss, _ = clipped_surrogate(log_ratio, torch.tensor([[2.0]]), 0.2, 0.2)
    loss.sum().backward()
    assert abs(float(logp.grad) - (-2.0)) < 1e-6


# one response of 2 tokens (log-ratios 0.1 and -0.3) and a padding column that must not count
LOGP_OLD = torch.zeros(1, 3)
MASK = torch.tensor([[1.0, 1.0, 0.0]])


def test_sequence_ratio_is_the_geometric_mean_of_token_ratios_on_every_token():
    logp = torch.tensor([[0.1, -0.3, 5.0]])
    log_ratio = importance_log_ratio(logp, LOGP_OLD, MASK, "sequence")
    assert torch.allclose(log_ratio[0, :2], torch.tensor([-0.1, -0.1]))  # (0.1 - 0.3) / 2


def test_sequence_ratio_gradient_matches_gspo_under_seq_mean_token_mean():
    # GSPO: loss_i = -A * s_i with s_i = exp(mean_t log ratio); the token form weighted 1/|o_i| must agree
    adv = 1.5
    logp = torch.tensor([[0.1, -0.3, 0.0]], requires_grad=True)
    loss, _ = clipped_surrogate(importance_log_ratio(logp, LOGP_OLD, MASK, "sequence"), torch.tensor([[adv]]), 0.2, 0.2)
    (loss * MASK / 2).sum().backward()
    direct = logp.detach().clone().requires_grad_(True)
    (-adv * torch.exp((direct * MASK).sum() / 2)).backward()
    assert torch.allclose(logp.grad, direct.grad, atol=1e-6)
    assert abs(float(logp.grad[0, 0]) - (-adv * math.exp(-0.1) / 2)) < 1e-6


def test_sequence_ratio_clips_the_whole_response_together():
    # token ratios exp(0.5) and exp(-0.1): one token is inside the trust region, but the sequence ratio
    # exp(0.2) > 1.2 with A > 0 is clipped, so no token of the response gets a gradient
    logp = torch.tensor([[0.5, -0.1, 0.0]], requires_grad=True)
    log_ratio = importance_log_ratio(logp, LOGP_OLD, MASK, "sequence")
    loss, clipped = clipped_surrogate(log_ratio, torch.tensor([[1.0]]), 0.2, 0.2)
    (loss * MASK).sum().backward()
    assert bool(clipped[0, 0]) and bool(clipped[0, 1])
    assert torch.all(logp.grad == 0)


def test_truncated_is_weights_by_hand():
    old = torch.tensor([[-1.0, math.log(0.5), math.log(3.0), 7.0]])
    rollout = torch.tensor([[-1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # prompt token, two response tokens, padding
    w = truncated_is_weights(old, rollout, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 0.5, 2.0, 1.0]]))  # pi_old/pi_rollout = 0.5 and 3 -> capped at 2


def test_tis_scales_the_policy_loss_and_needs_rollout_logprobs():
    logp = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    one = torch.ones(1)
    cfg = AlgoConfig(tis_cap=2.0)
    rollout = torch.tensor([[math.log(2.0), math.log(4.0)]])  # weights 0.5 and 0.25
    loss, stats = micro_batch_loss(logp, logp, mask, one, one, one, cfg, rollout_logprobs=rollout)
    assert abs(float(loss) - (-(0.5 + 0.25))) < 1e-6  # -A * ratio(1) * w per token, token weight 1
    assert abs(stats["tis_weight_mean"] - 0.75) < 1e-6
    try:
        micro_batch_loss(logp, logp, mask, one, one, one, cfg)
    except ValueError as e:
        assert "rollout_logprobs" in str(e)
    else:
        raise AssertionError("tis_cap without rollout log-probs must fail")


def test_kl_mode_reward_logs_the_kl_but_keeps_it_out_of_the_loss():
    logp, ref = torch.zeros(1, 1), torch.full((1, 1), -1.0)
    zero, one = torch.zeros(1), torch.ones(1)
    mask = torch.ones(1, 1)
    as_loss, _ = micro_batch_loss(logp, logp, mask, zero, one, one, AlgoConfig(kl_coef=0.5), ref_logprobs=ref)
    as_reward, stats = micro_batch_loss(
        logp, logp, mask, zero, one, one, AlgoConfig(kl_coef=0.5, kl_mode="reward"), ref_logprobs=ref
    )
    k3 = math.exp(-1) - 1 + 1
    assert abs(float(as_loss) - 0.5 * k3) < 1e-6 and float(as_reward) == 0.0 and abs(stats["kl"] - k3) < 1e-6


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log(pi/ref) = 1
    assert abs(float(kl_penalty(logp, ref, "k1")) - 1.0) < 1e-6
    assert abs(float(kl_penalty(logp, ref, "k2")) - 0.5) < 1e-6
    assert abs(float(kl_penalty(logp, ref, "k3")) - (math.exp(-1) - 1 + 1)) < 1e-6
    assert float(kl_penalty(ref, ref, "k3")) == 0.0
