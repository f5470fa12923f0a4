"""Per-token log-probs (and entropy) of a causal LM on packed prompt+response rows."""

from __future__ import annotations

import torch


def token_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(tokens[:, t] | tokens[:, :t]) as [N, L] float32 aligned with `tokens` (column 0 is 0).

    Logits are divided by the sampling temperature so the values match the engine's sampling
    log-probs. Entropy [N, L] of the same distributions when `with_entropy` (else None), carrying
    gradient only when `entropy_grad` (an entropy bonus); as a metric it costs no autograd memory.
    """
    logits = model(input_ids=tokens, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    logprobs = torch.nn.functional.pad(target - log_z, (1, 0))
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = torch.softmax(logits, dim=-1)
            entropy = torch.nn.functional.pad(log_z - (probs * logits).sum(-1), (1, 0))
    return logprobs, entropy
