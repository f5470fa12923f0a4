"""From scored completion groups to the learner's tensors: advantages and aggregation weights.

The weights are fixed here, on the driver, for the whole batch (or each mini-batch when the
batch feeds several optimizer steps): the learner only ever computes sum(w * loss), so its
result does not depend on how it cuts the batch into micro-batches or ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlft.algorithms import ADVANTAGES, AGGREGATIONS


@dataclass
class TrainBatch:
    """N responses with their prompts, right-padded to L tokens."""

    tokens: torch.Tensor  # [N, L] long: prompt then response
    attention_mask: torch.Tensor  # [N, L] long
    response_mask: torch.Tensor  # [N, L] float32: 1 where tokens[t] is a response token
    rollout_logprobs: torch.Tensor  # [N, L] float32: sampling log-prob of tokens[t] (0 elsewhere)
    advantages: torch.Tensor  # [N] float32
    weights: torch.Tensor  # [N] float32: per-token weight of the policy loss (aggregation)
    token_weights: torch.Tensor  # [N] float32: per-token weight of KL/entropy (token-mean of the mini-batch)
    minibatch: torch.Tensor  # [N] long: optimizer step within this batch

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor | slice) -> "TrainBatch":
        """Rows `index`, trimmed to the longest of them."""
        part = TrainBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})
        width = int(part.attention_mask.sum(dim=1).max()) if len(part) else 0
        for f in ("tokens", "attention_mask", "response_mask", "rollout_logprobs"):
            setattr(part, f, getattr(part, f)[:, :width])
        return part


def group_advantages(rewards: torch.Tensor, algo_cfg) -> torch.Tensor:
    """Advantages [groups, G] from rewards [groups, G] with the configured estimator."""
    return ADVANTAGES.get(algo_cfg.advantage)(rewards, std_eps=algo_cfg.std_eps)


def build_train_batch(
    prompt_ids: list[list[int]],
    responses: list[list[list[int]]],
    response_logprobs: list[list[list[float]]],
    rewards: torch.Tensor,
    algo_cfg,
    max_new_tokens: int,
    pad_id: int,
) -> TrainBatch:
    """The learner batch of B groups of G responses each; `rewards` is [B, G]."""
    b, g = rewards.shape
    advantages = group_advantages(rewards, algo_cfg)
    lengths = torch.tensor([[len(r) for r in group] for group in responses], dtype=torch.float32)
    # groups are dealt to mini-batches in order; each mini-batch normalises on its own
    minibatch_of_group = torch.arange(b) * algo_cfg.num_minibatches // b
    weights = torch.zeros(b, g)
    token_weights = torch.zeros(b, g)
    aggregate = AGGREGATIONS.get(algo_cfg.aggregation)
    for m in range(algo_cfg.num_minibatches):
        sel = minibatch_of_group == m
        if sel.any():
            weights[sel] = aggregate(advantages[sel], lengths[sel], max_new_tokens)
            token_weights[sel] = 1.0 / lengths[sel].sum().clamp(min=1)

    rows = [(p, r, lp) for p, group, lps in zip(prompt_ids, responses, response_logprobs) for r, lp in zip(group, lps)]
    width = max(len(p) + len(r) for p, r, _ in rows)
    n = len(rows)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width))
    rollout_logprobs = torch.zeros((n, width))
    for i, (p, r, lp) in enumerate(rows):
        end = len(p) + len(r)
        tokens[i, :end] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, :end] = 1
        response_mask[i, len(p) : end] = 1.0
        rollout_logprobs[i, len(p) : end] = torch.tensor(lp, dtype=torch.float32)
    return TrainBatch(
        tokens=tokens,
        attention_mask=attention_mask,
        response_mask=response_mask,
        rollout_logprobs=rollout_logprobs,
        advantages=advantages.flatten().float(),
        weights=weights.flatten(),
        token_weights=token_weights.flatten(),
        minibatch=minibatch_of_group.repeat_interleave(g),
    )
