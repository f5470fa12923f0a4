"""Advantage estimators (DESIGN 4.1): rewards [groups, G] -> advantages [groups, G]."""

from __future__ import annotations

import torch

from rlft.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g r) / (std_g r + eps); std is the unbiased sample std, as in TRL and verl."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + std_eps)


@ADVANTAGES.register("dr-grpo")
def dr_grpo_advantages(rewards: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i - mean_g r: Dr. GRPO drops the std so easy and hard groups are not re-weighted."""
    return rewards - rewards.mean(dim=1, keepdim=True)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i - mean_{j != i} r_j, the leave-one-out baseline (0 for groups of one)."""
    g = rewards.shape[1]
    if g == 1:
        return torch.zeros_like(rewards)
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return rewards - others_mean


@ADVANTAGES.register("reinforce++")
def reinforce_pp_advantages(rewards: torch.Tensor, std_eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ with a group baseline: r - mean_g r, then whitened over the whole batch."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    flat = centered.flatten()
    std = flat.std() if flat.numel() > 1 else torch.zeros(())
    return (centered - flat.mean()) / (std + std_eps)
