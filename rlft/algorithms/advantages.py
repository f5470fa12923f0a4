"""Advantage estimators (docs/methods.md#advantages): rewards [groups, G] -> advantages [groups, G].

Each estimator is a baseline (what is subtracted from r_i) and a default reward scale (what the
centred rewards are divided by); `algo.advantage_scale` overrides the scale for any of them:

    group: the group's reward std (GRPO)        batch: the std of the centred rewards over the
    none:  no division (Dr. GRPO, RLOO)                whole batch (REINFORCE++'s global whitening)
"""

from __future__ import annotations

import torch

from rlft.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")
SCALES = ("group", "batch", "none")


def _std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased sample std (as TRL and verl), 0 where there is a single sample."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros(()) if dim is None else torch.zeros_like(x.narrow(dim, 0, 1))
    return x.std() if dim is None else x.std(dim=dim, keepdim=True)


def scale_advantages(centred: torch.Tensor, rewards: torch.Tensor, scale: str, std_eps: float) -> torch.Tensor:
    """Divide centred rewards [groups, G] by the group's reward std, the batch std of `centred`, or nothing."""
    if scale == "group":
        return _divide(centred, _std(rewards, dim=1) + std_eps)
    if scale == "batch":
        # group-centred values have batch mean 0 already; subtracting it keeps REINFORCE++'s exact form
        return _divide(centred - centred.mean(), _std(centred.flatten()) + std_eps)
    if scale == "none":
        return centred
    raise ValueError(f"unknown advantage scale {scale!r}; one of {SCALES}")


def _divide(centred: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # a zero std means every centred value is 0: keep them 0 (with std_eps = 0, 0/0 would poison the loss)
    return centred / torch.where(std > 0, std, torch.ones_like(std))


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, std_eps: float = 1e-6, scale: str = "group") -> torch.Tensor:
    """A_i = (r_i - mean_g r) / (std_g r + eps), std the unbiased sample std of the group."""
    return scale_advantages(rewards - rewards.mean(dim=1, keepdim=True), rewards, scale, std_eps)


@ADVANTAGES.register("dr-grpo")
def dr_grpo_advantages(rewards: torch.Tensor, std_eps: float = 1e-6, scale: str = "none") -> torch.Tensor:
    """A_i = r_i - mean_g r: Dr. GRPO drops the std so easy and hard groups are not re-weighted."""
    return scale_advantages(rewards - rewards.mean(dim=1, keepdim=True), rewards, scale, std_eps)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, std_eps: float = 1e-6, scale: str = "none") -> torch.Tensor:
    """A_i = r_i - mean_{j != i} r_j, the leave-one-out baseline (0 for groups of one)."""
    g = rewards.shape[1]
    if g == 1:
        return torch.zeros_like(rewards)
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return scale_advantages(rewards - others_mean, rewards, scale, std_eps)


@ADVANTAGES.register("reinforce++")
def reinforce_pp_advantages(rewards: torch.Tensor, std_eps: float = 1e-6, scale: str = "batch") -> torch.Tensor:
    """REINFORCE++ with a group baseline: r - mean_g r, then whitened over the whole batch."""
    return scale_advantages(rewards - rewards.mean(dim=1, keepdim=True), rewards, scale, std_eps)


def compute_advantages(rewards: torch.Tensor, algo_cfg) -> torch.Tensor:
    """Advantages [groups, G] from rewards [groups, G] with the configured estimator and scale."""
    kwargs = {"scale": algo_cfg.advantage_scale} if algo_cfg.advantage_scale else {}
    return ADVANTAGES.get(algo_cfg.advantage)(rewards, std_eps=algo_cfg.std_eps, **kwargs)
