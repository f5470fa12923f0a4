"""The learner's input: what a caller (the driver) hands to `Learner.train_step`."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


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
