"""From scored completion groups to the learner's tensors: advantages and aggregation weights.

`build_step_batch` is the one place a step's advantages are computed, once, after algo.kl_mode
'reward' has charged the KL to the rewards (the reference log-probs then travel in the batch).

The weights are fixed here, on the driver, for the whole batch (or each mini-batch when the
batch feeds several optimizer steps): the learner only ever computes sum(w * loss), so its
result does not depend on how it cuts the batch into micro-batches or ranks.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlft.algorithms import AGGREGATIONS
from rlft.algorithms.advantages import compute_advantages
from rlft.algorithms.policy_loss import kl_penalty
from rlft.learner.types import TrainBatch


def assign_advantages(
    batch: TrainBatch, rewards: torch.Tensor, algo_cfg, max_new_tokens: int, keep: torch.Tensor | None = None
) -> TrainBatch:
    """Fill the batch's advantages, aggregation weights and mini-batch ids from rewards [B, G] (rows group-major).

    `keep` [B, G] bool: responses that enter the loss (False: masked out, e.g. overlong filtering);
    a masked response still counts in its group's baseline but adds no token to any normaliser.
    """
    b, g = rewards.shape
    advantages = compute_advantages(rewards, algo_cfg)
    keep = torch.ones(b, g, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    lengths = batch.response_mask.sum(dim=1).view(b, g).cpu() * keep
    # groups are dealt to mini-batches in order; each mini-batch normalises on its own
    minibatch_of_group = torch.arange(b) * algo_cfg.num_minibatches // b
    weights = torch.zeros(b, g)
    token_weights = torch.zeros(b, g)
    aggregate = AGGREGATIONS.get(algo_cfg.aggregation)
    for m in range(algo_cfg.num_minibatches):
        sel = minibatch_of_group == m
        if sel.any():
            weights[sel] = aggregate(advantages[sel] * keep[sel], lengths[sel], max_new_tokens) * keep[sel]
            token_weights[sel] = keep[sel] / lengths[sel].sum().clamp(min=1)
    batch.advantages = advantages.flatten().float()
    batch.weights = weights.flatten()
    batch.token_weights = token_weights.flatten()
    batch.minibatch = minibatch_of_group.repeat_interleave(g)
    return batch


def build_step_batch(
    groups, algo_cfg, max_new_tokens: int, pad_id: int, reference: Callable[[TrainBatch], torch.Tensor]
) -> tuple[TrainBatch, dict[str, float]]:
    """The step's learner batch from its scored groups (rlft.pipeline.shaping.Groups) and its metrics.

    With algo.kl_mode 'reward', `reference(batch)` ([N, L] reference log-probs) runs once, the KL is
    subtracted from the rewards, the advantages follow, and the log-probs stay in `batch.ref_logprobs`
    for the learner's KL statistic; otherwise `reference` is not called.
    """
    batch = pack_batch(groups.prompt_ids, [[c["token_ids"] for c in g] for g in groups.completions],
                       [[c["logprobs"] for c in g] for g in groups.completions], pad_id)
    rewards, metrics = groups.rewards, {}
    if algo_cfg.kl_coef > 0 and algo_cfg.kl_mode == "reward":
        batch.ref_logprobs = reference(batch)
        penalty = kl_reward_penalty(batch, batch.ref_logprobs, algo_cfg, tuple(rewards.shape))
        rewards = rewards - penalty
        metrics["reward/kl_penalty"] = float(penalty.mean())
    return assign_advantages(batch, rewards, algo_cfg, max_new_tokens, groups.keep), metrics


def kl_reward_penalty(batch: TrainBatch, ref_logprobs: torch.Tensor, algo_cfg, shape: tuple[int, int]) -> torch.Tensor:
    """kl_coef * sum_t KL_t per response, [B, G], from the sampling and the reference log-probs [N, L]."""
    kl = kl_penalty(batch.rollout_logprobs, ref_logprobs, algo_cfg.kl_estimator) * batch.response_mask
    return algo_cfg.kl_coef * kl.sum(dim=1).view(shape)


def build_train_batch(
    prompt_ids: list[list[int]],
    responses: list[list[list[int]]],
    response_logprobs: list[list[list[float]]],
    rewards: torch.Tensor,
    algo_cfg,
    max_new_tokens: int,
    pad_id: int,
    keep: torch.Tensor | None = None,
) -> TrainBatch:
    """The learner batch of B groups of G responses each from final rewards; `rewards` and `keep` are [B, G]."""
    batch = pack_batch(prompt_ids, responses, response_logprobs, pad_id)
    return assign_advantages(batch, rewards, algo_cfg, max_new_tokens, keep)


def pack_batch(
    prompt_ids: list[list[int]], responses: list[list[list[int]]], response_logprobs: list[list[list[float]]],
    pad_id: int,
) -> TrainBatch:
    """The batch's token tensors, rows group-major; advantages and weights stay 0 until `assign_advantages`."""
    rows = [(p, r, lp) for p, group, lps in zip(prompt_ids, responses, response_logprobs) for r, lp in zip(group, lps)]
    n = len(rows)
    # one tensor per field from flat lists (a per-row loop of small tensor ops costs ~15 ms at 256 rows)
    starts = torch.tensor([len(p) for p, _, _ in rows])
    ends = starts + torch.tensor([len(r) for _, r, _ in rows])
    cols = torch.arange(int(ends.max()))
    attention = cols < ends[:, None]
    response = attention & (cols >= starts[:, None])
    tokens = torch.full(attention.shape, pad_id, dtype=torch.long)
    tokens[attention] = torch.tensor([t for p, r, _ in rows for t in (*p, *r)], dtype=torch.long)  # row-major fill
    rollout_logprobs = torch.zeros(attention.shape)
    rollout_logprobs[response] = torch.tensor([x for _, _, lp in rows for x in lp], dtype=torch.float32)
    attention_mask, response_mask = attention.long(), response.float()
    empty = torch.zeros(n)
    return TrainBatch(
        tokens=tokens, attention_mask=attention_mask, response_mask=response_mask, rollout_logprobs=rollout_logprobs,
        advantages=empty, weights=empty, token_weights=empty, minibatch=empty.long(),
    )
