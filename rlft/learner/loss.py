"""Loss assembly for one micro-batch: sum(w * l) + kl_coef * KL - entropy_coef * H."""

from __future__ import annotations

import torch

from rlft.algorithms.policy_loss import POLICY_LOSSES, importance_log_ratio, kl_penalty, truncated_is_weights
from rlft.learner.types import TrainBatch


def micro_batch_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    token_weights: torch.Tensor,
    algo_cfg,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's share of the mini-batch loss, and its share of each logged statistic.

    Tensors are [n, L] except advantages, weights, token_weights [n]. Because the weights carry the
    global normalisers, these shares simply add up over micro-batches and data-parallel ranks.
    `rollout_logprobs` (the engine's sampling log-probs) are needed with `algo.tis_cap`.
    """
    log_ratio = importance_log_ratio(logprobs, old_logprobs, response_mask, algo_cfg.ratio_level)
    pg, clipped = POLICY_LOSSES.get(algo_cfg.policy_loss)(log_ratio, advantages[:, None], algo_cfg)
    per_token = token_weights[:, None] * response_mask  # token-mean weights for KL, entropy and stats
    stats: dict[str, float] = {}
    if algo_cfg.tis_cap is not None:
        if rollout_logprobs is None:
            raise ValueError("algo.tis_cap needs the rollout log-probs; pass rollout_logprobs to micro_batch_loss")
        tis = truncated_is_weights(old_logprobs, rollout_logprobs, response_mask, algo_cfg.tis_cap)
        pg = pg * tis
        stats["tis_weight_mean"] = (tis * per_token).sum().item()
        stats["tis_truncated_frac"] = ((tis >= algo_cfg.tis_cap).float() * per_token).sum().item()
        # the spread of pi_old / mu: engine mismatch, plus policy drift in async mode
        stats["tis_abs_log_ratio"] = ((old_logprobs - rollout_logprobs).abs() * per_token).sum().item()
    loss = (pg * weights[:, None] * response_mask).sum()
    stats["pg_loss"] = loss.item()
    if ref_logprobs is not None:
        kl = (kl_penalty(logprobs, ref_logprobs, algo_cfg.kl_estimator) * per_token).sum()
        if algo_cfg.kl_mode == "loss":  # with kl_mode 'reward' the driver already charged it to the rewards
            loss = loss + algo_cfg.kl_coef * kl
        stats["kl"] = kl.item()
    if entropy is not None:
        mean_entropy = (entropy * per_token).sum()
        if algo_cfg.entropy_coef:
            loss = loss - algo_cfg.entropy_coef * mean_entropy
        stats["entropy"] = mean_entropy.item()
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        stats["clip_frac"] = (clipped.float() * per_token).sum().item()
        stats["ratio_mean"] = (ratio * per_token).sum().item()
        stats["ratio_max"] = (ratio * response_mask).max().item() if response_mask.any() else 1.0
    return loss, stats


def drop_zero_gradient_rows(batch: TrainBatch, algo_cfg) -> tuple[TrainBatch, int]:
    """The batch without the rows whose loss has no gradient, and how many were dropped.

    Every policy loss is the advantage times a function of the ratio, scaled by the row's weight, so a row
    with advantage x weight == 0 (a group of equal rewards under group-normalised advantages) adds exactly
    zero, unless the loss also has a KL term or an entropy bonus (then nothing is dropped). The update is the
    same without them. Each mini-batch keeps at least one row, so it still takes its optimizer step (AdamW
    moves on momentum alone, and skips parameters without a gradient). Token weights are rescaled within each
    mini-batch so the statistics they weigh stay token-means, over the rows that remain.
    """
    if algo_cfg.entropy_coef or (algo_cfg.kl_coef > 0 and algo_cfg.kl_mode == "loss"):
        return batch, 0
    live = (batch.advantages * batch.weights) != 0
    if bool(live.all()):
        return batch, 0
    tokens = batch.response_mask.sum(dim=1) * batch.token_weights
    keep = live.clone()
    scale = torch.ones_like(batch.token_weights)
    for m in batch.minibatch.unique():
        rows = batch.minibatch == m
        if not bool(keep[rows].any()):
            keep[rows.nonzero()[0]] = True
        kept = float(tokens[rows & keep].sum())
        if kept > 0:
            scale[rows] = float(tokens[rows].sum()) / kept
    index = keep.nonzero().flatten()
    part = batch.select(index)
    part.token_weights = part.token_weights * scale[index]
    return part, int(len(batch) - len(index))
