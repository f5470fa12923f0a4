"""Group packing: a prompt followed by several of its group's responses in one sequence, each response seeing
the prompt and itself only.

GRPO's rows repeat their group's prompt, and a micro-batch pads every row to its longest. Here a group's rows
become packed rows `[prompt | response a | response b | ...]` of at most `cap` tokens: the prompt runs once
per packed row, a response's positions continue from the prompt's end (as in its own row) and an explicit
4-D mask lets each token attend to its prompt and to the earlier tokens of its own response. Padding is left
only at the end of the shorter packed rows of a pass. The log-probs, entropy and gradients equal the
whole-row forward's up to float summation order (tests/test_shared_prompts.py).

Attention over a packed row computes all its W x W scores (the mask hides most of them), which costs about
W / (6 x hidden) of the linear layers' work; `cap` (by default the hidden size) keeps that under ~17%.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlft.learner.attention import NAME as FP32_SDPA
from rlft.learner.fused_logprob import fused_token_logprobs
from rlft.learner.logprobs import target_logprobs, token_logprobs

MIN_CAP = 64  # tiny hidden sizes would otherwise cap a packed row below one group of short responses


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


def pack_cap(model_config, max_tokens: int | None) -> int:
    """Longest packed row: the hidden size (attention's share of the work stays small), within the pass bound."""
    cap = max(MIN_CAP, int(getattr(model_config, "hidden_size", 0) or 0))
    return min(cap, max_tokens) if max_tokens else cap


def pack_units(first: list[int], lengths: list[int], group: list[int], cap: int) -> list[list[int]]:
    """The packed rows of a batch as lists of its row indices: each holds rows of one group, its prompt once plus
    their continuations within `cap` tokens (a row alone may exceed it). Rows are taken longest first, each into
    the first of its group's packed rows with room, so packed rows come out of similar length."""
    units: list[list[int]] = []
    used: list[int] = []
    open_units: dict[int, list[int]] = {}  # group -> its packed rows (indices into units)
    for r in sorted(range(len(lengths)), key=lambda i: -(lengths[i] - first[i])):
        cont = lengths[r] - first[r]
        for u in open_units.get(group[r], []):
            if used[u] + cont <= cap:
                units[u].append(r)
                used[u] += cont
                break
        else:
            open_units.setdefault(group[r], []).append(len(units))
            units.append([r])
            used.append(first[r] + cont)
    return units


def unit_lengths(units: list[list[int]], first: list[int], lengths: list[int]) -> list[int]:
    """Tokens of each packed row: its prompt once plus its rows' continuations."""
    return [first[u[0]] + sum(lengths[r] - first[r] for r in u) for u in units]


@dataclass
class PackedLayout:
    ids: torch.Tensor  # [B, W] token ids (0 in the padding at the end of shorter packed rows)
    positions: torch.Tensor  # [B, W] each token's position in its own row
    mask: torch.Tensor  # [B, 1, W, W] bool: query attends to key
    rows: torch.Tensor  # [T] for each response token: its row in the batch
    cols: torch.Tensor  # [T] ... its column in that row
    at: torch.Tensor  # [T] ... its flat index in the packed [B * W] layout
    state: torch.Tensor  # [T] flat index of the packed state that predicts it


def pack(tokens: torch.Tensor, attention_mask: torch.Tensor, targets_mask: torch.Tensor, cap: int,
         groups=None) -> PackedLayout:
    """The packed layout of right-padded rows [N, L] whose response tokens are `targets_mask` (`groups`: their
    `prompt_groups`, if the caller has them)."""
    device = tokens.device
    first_t, group_t, _ = groups or prompt_groups(tokens, attention_mask, targets_mask)
    first, group = first_t.tolist(), group_t.tolist()
    lengths = attention_mask.sum(dim=1).tolist()
    units = pack_units(first, lengths, group, cap)
    width = max(unit_lengths(units, first, lengths))
    rows_tok = tokens.tolist()
    ids, pos, seg = [], [], []  # seg: 0 prompt, k > 0 the k-th response of the packed row, -1 padding
    rows, cols, at, state = [], [], [], []
    targets = targets_mask > 0
    for b, unit in enumerate(units):
        p = first[unit[0]]
        r_ids, r_pos, r_seg = list(rows_tok[unit[0]][:p]), list(range(p)), [0] * p
        for k, r in enumerate(unit, start=1):
            start = len(r_ids)
            r_ids += rows_tok[r][p : lengths[r]]
            r_pos += range(p, lengths[r])
            r_seg += [k] * (lengths[r] - p)
            cs = targets[r, p : lengths[r]].nonzero().flatten()
            if p == 0:  # no token before the first: nothing predicts it (the whole-row forward leaves it 0 too)
                cs = cs[cs > 0]
            rows += [r] * len(cs)
            cols += (p + cs).tolist()
            at += (b * width + start + cs).tolist()
            # the first continuation token is predicted by the prompt's last state
            state += (b * width + torch.where(cs > 0, start + cs - 1, p - 1)).tolist()
        pad = width - len(r_ids)
        ids.append(r_ids + [0] * pad)
        pos.append(r_pos + [0] * pad)
        seg.append(r_seg + [-1] * pad)
    seg_t = torch.tensor(seg, device=device)
    col = torch.arange(width, device=device)
    causal = col[None, :] <= col[:, None]
    # a token sees the earlier tokens of its own segment and, in a response, the prompt; padding sees itself
    same = seg_t[:, :, None] == seg_t[:, None, :]
    sees_prompt = (seg_t[:, :, None] > 0) & (seg_t[:, None, :] == 0)
    mask = (causal[None] & (same | sees_prompt)) | torch.eye(width, dtype=torch.bool, device=device)[None]
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return PackedLayout(as_long(ids), as_long(pos), mask[:, None], as_long(rows), as_long(cols), as_long(at),
                        as_long(state))


SDPA_LIKE = ("sdpa", FP32_SDPA)  # attentions that take a boolean 4-D mask


def packable(model) -> bool:
    """Whether the model's attention takes the explicit 4-D mask packing needs (SDPA or eager)."""
    return (getattr(model.config, "_attn_implementation", None) or "eager") in (*SDPA_LIKE, "eager")


def model_mask(model, mask: torch.Tensor, positions: torch.Tensor):
    """The 4-D mask as the model's attention takes it: bool for SDPA, additive for eager, per layer type for
    models with sliding-window layers (None: an attention this path cannot drive; run rows whole)."""
    if not packable(model):
        return None
    config = model.config
    attn = config._attn_implementation or "eager"

    def as_model(m: torch.Tensor) -> torch.Tensor:
        if attn in SDPA_LIKE:
            return m
        dtype = next(model.parameters()).dtype
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, torch.finfo(dtype).min)

    types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None) if "sliding_attention" in types else None
    if window is None:
        return as_model(mask)
    near = (positions[:, None, :, None] - positions[:, None, None, :]) < window
    return {"full_attention": as_model(mask), "sliding_attention": as_model(mask & near)}


def packed_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    fused_chunk: int = 0,
    targets_mask: torch.Tensor | None = None,
    cap: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logprobs` (same arguments) from the packed layout: values [N, L] at the response positions
    `targets_mask`, 0 elsewhere; packed rows of at most `cap` tokens (default `pack_cap`). Rows run whole where
    nothing is shared (no `targets_mask` to tell prompts by, or no prompt repeats) or the model's attention
    takes no explicit mask."""
    n, width = tokens.shape
    groups = prompt_groups(tokens, attention_mask, targets_mask) if targets_mask is not None else None
    repeats = groups is not None and len(groups[2]) < n
    layout = pack(tokens, attention_mask, targets_mask, cap or pack_cap(model.config, None), groups) if repeats else None
    mask = model_mask(model, layout.mask, layout.positions) if layout is not None else None
    if mask is None:
        return token_logprobs(model, tokens, attention_mask, temperature, with_entropy, entropy_grad, fused_chunk,
                              targets_mask)
    fused = fused_chunk > 0
    net = model.get_decoder() if fused else model
    out = net(input_ids=layout.ids, attention_mask=mask, position_ids=layout.positions, use_cache=False)
    states = out.last_hidden_state if fused else out.logits
    states = states.reshape(-1, states.shape[-1])[layout.state]  # [T, hidden or vocab]
    targets = layout.ids.reshape(-1)[layout.at]
    if fused:
        logprobs, entropy = fused_token_logprobs(
            states, model.get_output_embeddings().weight, targets, temperature, fused_chunk, with_entropy
        )
    else:
        logprobs, entropy = target_logprobs(states, targets, temperature, with_entropy, entropy_grad)
    where = (layout.rows, layout.cols)
    lp = torch.zeros((n, width), dtype=torch.float32, device=tokens.device).index_put(where, logprobs.float())
    ent = None
    if entropy is not None:
        ent = torch.zeros_like(lp).index_put(where, (entropy if entropy_grad else entropy.detach()).float())
    return lp, ent
