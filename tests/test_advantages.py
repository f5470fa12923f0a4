"""Advantage estimators against hand-computed values on a two-group batch (one group all-equal)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algorithms import ADVANTAGES

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])


def test_grpo_divides_by_the_unbiased_group_std():
    a = ADVANTAGES.get("grpo")(REWARDS, std_eps=0.0 + 1e-12)
    s = 0.5 / math.sqrt(1 / 3)  # |r - mean| / std, std over 4 samples with n-1
    assert torch.allclose(a[0], torch.tensor([s, -s, -s, s]), atol=1e-6)


def test_all_equal_group_gets_zero_advantage_for_every_estimator():
    for name in ADVANTAGES.names():
        a = ADVANTAGES.get(name)(REWARDS, std_eps=1e-6)
        assert torch.all(a[1] == 0) or name == "reinforce++", name
        if name == "reinforce++":  # whitened over the batch: the equal group sits at minus the batch mean
            assert torch.allclose(a[1], a[1][0].expand(4))


def test_dr_grpo_only_subtracts_the_group_mean():
    a = ADVANTAGES.get("dr-grpo")(REWARDS)
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_rloo_uses_the_mean_of_the_other_samples():
    a = ADVANTAGES.get("rloo")(REWARDS)
    assert torch.allclose(a[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)


def test_reinforce_pp_whitens_group_centred_rewards_over_the_batch():
    a = ADVANTAGES.get("reinforce++")(REWARDS, std_eps=1e-12)
    s = 0.5 / math.sqrt(1 / 7)  # centred values +-0.5 (x4) and 0 (x4): mean 0, unbiased std sqrt(1/7)
    assert torch.allclose(a.flatten(), torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "dr-grpo", "rloo", "reinforce++"])
def test_group_of_one_gives_finite_advantages(name):
    a = ADVANTAGES.get(name)(torch.tensor([[1.0], [0.0]]), std_eps=1e-6)
    assert torch.isfinite(a).all()


def test_advantage_scale_batch_divides_by_the_std_of_centred_rewards_over_the_batch():
    # centred: +-0.5 (x4) in group 0, 0 (x4) in group 1: batch mean 0, unbiased std sqrt(1/7)
    a = ADVANTAGES.get("grpo")(REWARDS, std_eps=0.0, scale="batch")
    s = 0.5 / math.sqrt(1 / 7)
    assert torch.allclose(a.flatten(), torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-5)


def test_advantage_scale_group_and_none_turn_estimators_into_each_other():
    grpo = ADVANTAGES.get("grpo")(REWARDS, std_eps=1e-6)
    assert torch.allclose(ADVANTAGES.get("dr-grpo")(REWARDS, std_eps=1e-6, scale="group"), grpo)
    assert torch.allclose(ADVANTAGES.get("grpo")(REWARDS, scale="none"), ADVANTAGES.get("dr-grpo")(REWARDS))
    # rloo's +-2/3 divided by the group's reward std sqrt(1/3)
    rloo = ADVANTAGES.get("rloo")(REWARDS, std_eps=0.0 + 1e-12, scale="group")
    assert torch.allclose(rloo[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]) / math.sqrt(1 / 3), atol=1e-5)


def test_config_advantage_scale_overrides_the_estimators_default():
    from rlft.algorithms.advantages import compute_advantages
    from rlft.config import AlgoConfig

    plain = compute_advantages(REWARDS, AlgoConfig(advantage="reinforce++"))
    unscaled = compute_advantages(REWARDS, AlgoConfig(advantage="reinforce++", advantage_scale="none"))
    assert torch.allclose(unscaled, ADVANTAGES.get("dr-grpo")(REWARDS))
    assert not torch.allclose(plain, unscaled)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_zero_std_with_zero_eps_gives_zero_not_nan(scale):
    a = ADVANTAGES.get("grpo")(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), std_eps=0.0, scale=scale)
    assert torch.equal(a, torch.zeros(2, 2))
