"""Token log-probs with each distinct prompt run once: the group's responses attend to its cached keys/values.

GRPO samples a group of responses per prompt, and the packed rows repeat the prompt in every one of them:
on the embedded default (8 prompt tokens, 8 samples, a few response tokens) more than half the learner's
tokens are copies. Here the distinct prompts of the rows run once (left-padded, `use_cache=True`, only the
last position's logits), their keys/values are gathered to the rows (the gather's backward sums the
gradients of a prompt's responses, exactly what the repeated forward would have accumulated), and the
responses run against that cache with their true positions. The result is laid out as `token_logprobs`'
(response positions set, others 0) and equals the whole-row forward up to float summation order.

Not used with gradient checkpointing: checkpointed layers recompute their forward in backward, which would
append to the cache a second time (transformers turns the cache off there for the same reason).
"""

from __future__ import annotations

import torch

from rlft.learner.fused_logprob import fused_token_logprobs
from rlft.learner.logprobs import target_logprobs, token_logprobs


def prompt_groups(tokens: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
    """(prompt lengths [N], row -> distinct-prompt index [N], distinct prompts as token lists).

    A row's prompt is everything before its first response token (a row without one is all prompt).
    """
    lengths = attention_mask.sum(dim=1)
    has_response = response_mask.any(dim=1)
    first = torch.where(has_response, (response_mask > 0).int().argmax(dim=1), lengths)
    keys: dict[tuple[int, ...], int] = {}
    group = []
    for row, p in zip(tokens.tolist(), first.tolist()):
        group.append(keys.setdefault(tuple(row[:p]), len(keys)))
    return first, torch.tensor(group, device=tokens.device), [list(k) for k in keys]


def shared_prompt_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    fused_chunk: int = 0,
    targets_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logprobs` (same arguments), each distinct prompt run once: values [N, L] at the response positions
    `targets_mask`, 0 elsewhere. Without `targets_mask` (no response positions to tell prompts by), or where no
    prompt repeats, the rows run whole (`token_logprobs` itself)."""
    device, (n, width) = tokens.device, tokens.shape
    groups = prompt_groups(tokens, attention_mask, targets_mask) if targets_mask is not None else None
    if groups is None or len(groups[2]) == n:
        return token_logprobs(model, tokens, attention_mask, temperature, with_entropy, entropy_grad, fused_chunk,
                              targets_mask)
    first, group, prompts = groups
    plen = torch.tensor([len(p) for p in prompts], device=device)
    pmax = max(1, int(plen.max()))
    # distinct prompts, left-padded so that every prompt's last token sits in the last column
    p_ids = torch.zeros((len(prompts), pmax), dtype=tokens.dtype, device=device)
    p_mask = torch.zeros((len(prompts), pmax), dtype=attention_mask.dtype, device=device)
    for i, p in enumerate(prompts):
        if p:
            p_ids[i, pmax - len(p):] = torch.tensor(p, dtype=tokens.dtype, device=device)
            p_mask[i, pmax - len(p):] = 1
    p_pos = (p_mask.cumsum(dim=1) - 1).clamp(min=0)

    # each row's continuation: tokens[first : length], right-padded to the longest
    cont_len = attention_mask.sum(dim=1) - first
    r = max(1, int(cont_len.max()))
    cols = first[:, None] + torch.arange(r, device=device)
    valid = torch.arange(r, device=device)[None, :] < cont_len[:, None]
    cols = torch.where(valid, cols, torch.zeros_like(cols))
    r_ids = tokens.gather(1, cols) * valid
    targets = targets_mask.gather(1, cols) * valid

    fused = fused_chunk > 0
    decoder = model.get_decoder() if fused else model
    out = decoder(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                  **({} if fused else {"logits_to_keep": 1}))
    cache = out.past_key_values
    cache.batch_select_indices(group)  # [distinct, ...] -> [N, ...]; backward sums over each prompt's rows
    last = (out.last_hidden_state if fused else out.logits)[:, -1][group]  # predicts each row's first token
    out = decoder(input_ids=r_ids, attention_mask=torch.cat([p_mask[group], valid.to(p_mask.dtype)], dim=1),
                  position_ids=first[:, None] + torch.arange(r, device=device), past_key_values=cache, use_cache=True)
    states = torch.cat([last[:, None], (out.last_hidden_state if fused else out.logits)[:, :-1]], dim=1)  # [N, r, ·]

    where = targets > 0  # [N, r]: the response tokens, by their position in the continuation
    if fused:
        logprobs, entropy = fused_token_logprobs(
            states[where], model.get_output_embeddings().weight, r_ids[where], temperature, fused_chunk, with_entropy
        )
    else:
        logprobs, entropy = target_logprobs(states[where], r_ids[where], temperature, with_entropy, entropy_grad)
    rows, steps = where.nonzero(as_tuple=True)
    positions = (rows, cols[rows, steps])
    lp = torch.zeros((n, width), dtype=torch.float32, device=device).index_put(positions, logprobs.float())
    ent = None
    if entropy is not None:
        ent = torch.zeros_like(lp).index_put(positions, (entropy if entropy_grad else entropy.detach()).float())
    return lp, ent

