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
    # [N, L] float32: the frozen reference's log-probs, when the caller needed them first (algo.kl_mode 'reward'
    # charges the KL to the rewards before the advantages); None: the learner computes them if it has a reference
    ref_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def _map(self, fn) -> "TrainBatch":
        return TrainBatch(**{f.name: None if getattr(self, f.name) is None else fn(f.name, getattr(self, f.name))
                             for f in fields(self)})

    def to(self, device: torch.device) -> "TrainBatch":
        """The batch with every tensor on `device`."""
        return self._map(lambda name, t: t.to(device))

    def select(self, index: torch.Tensor | slice) -> "TrainBatch":
        """Rows `index`, trimmed to the longest of them."""
        part = self._map(lambda name, t: t[index])
        width = int(part.attention_mask.sum(dim=1).max()) if len(part) else 0
        return part._map(lambda name, t: t[:, :width] if t.dim() == 2 else t)
