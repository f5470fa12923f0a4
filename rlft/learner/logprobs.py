"""Per-token log-probs (and entropy) of a causal LM on packed prompt+response rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlft.learner.fused_logprob import fused_token_logprobs


def use_fused_logprobs(choice: str, model_config) -> bool:
    """learner.logprobs 'plain'/'fused' as given; 'auto': fused where the plain path's logits set the peak.

    Per token, the plain path holds ~5 fp32 copies of the vocabulary row (logits, softmax, their
    gradients); the decoder saves ~(6 x hidden + 4 x intermediate) floats per layer for backward.
    Fused is chosen when the first is at least a quarter of the second (large vocabularies, e.g.
    SmolLM2's 49152 at hidden 576, Qwen2.5's 151936), plain for small ones (the tiny model).
    """
    if choice != "auto":
        return choice == "fused"
    vocab = getattr(model_config, "vocab_size", 0) or 0
    hidden = getattr(model_config, "hidden_size", 0) or 0
    inter = getattr(model_config, "intermediate_size", None) or 4 * hidden
    layers = getattr(model_config, "num_hidden_layers", 1) or 1
    return 5 * vocab >= 0.25 * layers * (6 * hidden + 4 * inter)


def token_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    fused_chunk: int = 0,
    targets_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(tokens[:, t] | tokens[:, :t]) as [N, L] float32 aligned with `tokens` (column 0 is 0).

    Logits are divided by the sampling temperature so the values match the engine's sampling
    log-probs. Entropy [N, L] of the same distributions when `with_entropy` (else None), carrying
    gradient only when `entropy_grad` (an entropy bonus); as a metric it costs no autograd memory.

    `fused_chunk > 0` computes them from the last hidden states and the LM head in vocabulary chunks
    of that many tokens, never holding the [N, L, vocab] logits, and only where `targets_mask`
    [N, L] is set (the response tokens); other positions are 0.
    """
    if fused_chunk > 0:
        return _fused(model, tokens, attention_mask, temperature, with_entropy, entropy_grad, fused_chunk, targets_mask)
    logits = model(input_ids=tokens, attention_mask=attention_mask, use_cache=False).logits
    return logprobs_from_logits(logits, tokens, temperature, with_entropy, entropy_grad)


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """token_logprobs' values from the model's logits [N, L, vocab] (ZO2 runs the model block by block)."""
    logprobs, entropy = target_logprobs(logits[:, :-1], tokens[:, 1:], temperature, with_entropy, entropy_grad)
    return F.pad(logprobs, (1, 0)), (F.pad(entropy, (1, 0)) if entropy is not None else None)


def target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T)[target] in fp32 for logits [..., vocab] and targets [...], and the entropy of the
    same distributions when `with_entropy` (with gradient only when `entropy_grad`)."""
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_z
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logprobs, entropy


def _fused(model, tokens, attention_mask, temperature, with_entropy, entropy_grad, chunk, targets_mask):
    hidden = model.get_decoder()(input_ids=tokens, attention_mask=attention_mask, use_cache=False).last_hidden_state
    where = (targets_mask[:, 1:] > 0) if targets_mask is not None else torch.ones_like(tokens[:, 1:], dtype=torch.bool)
    head = model.get_output_embeddings().weight
    logprobs, entropy = fused_token_logprobs(
        hidden[:, :-1][where], head, tokens[:, 1:][where], temperature, chunk, with_entropy
    )
    out = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    out[:, 1:][where] = logprobs  # scatter back to [N, L]; autograd flows through the index_put
    ent_out = None
    if entropy is not None:
        ent_out = torch.zeros_like(out)
        ent_out[:, 1:][where] = entropy if entropy_grad else entropy.detach()
    return out, ent_out
