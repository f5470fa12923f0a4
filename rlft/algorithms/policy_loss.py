"""Per-token policy-gradient loss and the KL estimators; all shapes [sequences, tokens]."""

from __future__ import annotations

import torch


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped loss l_{i,t} = -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A) and where it clipped.

    logprobs, old_logprobs: [n, T] float32; advantages: [n, 1] or [n, T]. With `dual_clip = c`,
    negative-advantage tokens are also bounded by -c*A (dual-clip PPO), so one huge ratio cannot
    dominate the step.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss, (clipped > unclipped)


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
