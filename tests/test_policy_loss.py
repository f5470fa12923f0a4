"""The clipped surrogate, dual clip and KL estimators against hand-computed values."""

from __future__ import annotations

import math

import torch

from rlft.algorithms.policy_loss import clipped_surrogate, kl_penalty


def loss_for(ratio: float, adv: float, low=0.2, high=0.2, dual=None) -> float:
    logp = torch.tensor([[math.log(ratio)]])
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([[adv]]), low, high, dual)
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
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([[2.0]]), 0.2, 0.2)
    loss.sum().backward()
    assert abs(float(logp.grad) - (-2.0)) < 1e-6


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log(pi/ref) = 1
    assert abs(float(kl_penalty(logp, ref, "k1")) - 1.0) < 1e-6
    assert abs(float(kl_penalty(logp, ref, "k2")) - 0.5) < 1e-6
    assert abs(float(kl_penalty(logp, ref, "k3")) - (math.exp(-1) - 1 + 1)) < 1e-6
    assert float(kl_penalty(ref, ref, "k3")) == 0.0
