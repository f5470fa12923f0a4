"""Per-token policy-gradient losses (`algo.policy_loss`), importance ratios and the KL estimators.

All shapes are [sequences, tokens]. A policy loss is a registry entry
`(log_ratio [n, T], advantages [n, 1], algo_cfg) -> (loss [n, T], clipped [n, T] bool)`; the
aggregation weights, TIS, KL and entropy terms are applied around it (rlft/learner/loss.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from rlft.registry import Registry

PolicyLoss = Callable[[torch.Tensor, torch.Tensor, object], tuple[torch.Tensor, torch.Tensor]]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def importance_log_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, response_mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """log rho [n, T] of the current policy against the behaviour policy, per token or per sequence.

    `level="sequence"` is GSPO's ratio s_i = exp(mean_t log(pi/pi_old)) over the response tokens, in
    its token form: every token's value is s_i and its gradient s_i * grad log pi_t, so any
    aggregation of the tokens sees the sequence ratio (GSPO exactly under seq-mean-token-mean).
    """
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return log_ratio
    if level == "sequence":
        seq = (log_ratio * response_mask).sum(-1, keepdim=True) / response_mask.sum(-1, keepdim=True).clamp(min=1)
        return seq.detach() + logprobs - logprobs.detach()
    raise ValueError(f"unknown ratio level {level!r}")


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped loss l_{i,t} = -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A) and where it clipped.

    log_ratio: [n, T] float32 (see `importance_log_ratio`); advantages: [n, 1] or [n, T]. With
    `dual_clip = c`, negative-advantage tokens are also bounded by -c*A (dual-clip PPO), so one huge
    ratio cannot dominate the step.
    """
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss, (clipped > unclipped)


@POLICY_LOSSES.register("ppo-clip")
def ppo_clip_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, algo_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate with algo.clip_eps_low/high and algo.dual_clip (GRPO, DAPO, GSPO use it)."""
    return clipped_surrogate(log_ratio, advantages, algo_cfg.clip_eps_low, algo_cfg.clip_eps_high, algo_cfg.dual_clip)


@POLICY_LOSSES.register("cispo")
def cispo_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, algo_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1): l = -sg(clip(rho, 1-eps_low, 1+eps_high)) * A * rho / sg(rho).

    The clip bounds the importance weight, not the update: every token keeps a gradient
    -clip(rho) * A * grad log pi, where PPO's clip zeroes it. algo.dual_clip c caps the weight at c
    for negative advantages.
    """
    ratio = torch.exp(log_ratio)
    weight = ratio.detach().clamp(1.0 - algo_cfg.clip_eps_low, 1.0 + algo_cfg.clip_eps_high)
    if algo_cfg.dual_clip is not None:
        weight = torch.where(advantages < 0, weight.clamp(max=algo_cfg.dual_clip), weight)
    loss = -advantages * weight * ratio / ratio.detach()
    return loss, weight != ratio.detach()


def truncated_is_weights(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, response_mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """min(pi_old / pi_rollout, cap) per token [n, T], no gradient (TIS; 1 outside the response).

    Corrects for samples drawn by a policy other than the learner's behaviour policy: an engine
    whose numerics differ from the learner's, or weights a few updates stale (async rollout).
    """
    log_w = torch.where(response_mask > 0, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
    return torch.exp(log_w.detach()).clamp(max=cap)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi: k1, k2 or k3 (Schulman's estimators)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        # exp(-x) - 1 + x >= 0, unbiased and low-variance; clamp keeps exp finite early in training.
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown KL estimator {estimator!r}")
