"""The built-in engine: batched sampling over a transformers causal LM with its KV cache, CPU or GPU."""

from __future__ import annotations

from typing import Iterator

import torch
from transformers import DynamicCache

from rlft.rollout.sampling import sample_tokens
from rlft.rollout.types import Completion, SamplingParams


class BuiltinEngine:
    """Generates groups with left-padded static batches of at most `max_slots` sequences."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_slots: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_slots = max_slots
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    @torch.inference_mode()
    def generate_groups(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        groups_per_batch = max(1, self.max_slots // params.n)
        for start in range(0, len(prompts), groups_per_batch):
            indices = list(range(start, min(start + groups_per_batch, len(prompts))))
            rows = [prompts[i] for i in indices for _ in range(params.n)]
            completions = self._generate_batch(rows, params, generator)
            for k, index in enumerate(indices):
                group = completions[k * params.n : (k + 1) * params.n]
                for c in group:
                    c.prompt_index = index
                yield index, group

    def _generate_batch(self, rows: list[list[int]], params: SamplingParams, generator) -> list[Completion]:
        n, width = len(rows), max(len(r) for r in rows)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding keeps every row's last prompt token in the last column
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out_tokens: list[list[int]] = [[] for _ in range(n)]
        out_logprobs: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        eos = torch.tensor(self.eos_ids, device=self.device)
        step_ids, step_pos = input_ids, position_ids
        for _ in range(params.max_new_tokens):
            logits = self.model(
                input_ids=step_ids, attention_mask=attention_mask, position_ids=step_pos,
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
            tokens, logprobs = sample_tokens(logits, params.temperature, params.top_p, generator)
            tokens = torch.where(done, torch.full_like(tokens, self.pad_id), tokens)
            tok_list, lp_list, done_list = tokens.tolist(), logprobs.tolist(), done.tolist()
            for i in range(n):
                if not done_list[i]:
                    out_tokens[i].append(tok_list[i])
                    out_logprobs[i].append(lp_list[i])
            newly_done = torch.isin(tokens, eos) & ~done
            if params.stop:
                for i in range(n):
                    if not done_list[i] and self._hit_stop(out_tokens[i], params.stop):
                        newly_done[i] = True
            for i in newly_done.nonzero().flatten().tolist():
                finish[i] = "stop"
            done |= newly_done
            if bool(done.all()):
                break
            step_ids = tokens[:, None]
            step_pos = step_pos[:, -1:] + 1
            attention_mask = torch.cat([attention_mask, torch.ones((n, 1), dtype=attention_mask.dtype, device=self.device)], 1)
        return [
            Completion(
                prompt_index=-1, token_ids=out_tokens[i], logprobs=out_logprobs[i],
                text=self.tokenizer.decode(out_tokens[i], skip_special_tokens=True), finish_reason=finish[i],
            )
            for i in range(n)
        ]

    def _hit_stop(self, tokens: list[int], stop: list[str]) -> bool:
        tail = self.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
        return any(s in tail for s in stop)


def _eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config (may be a list) and the tokenizer."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    if not ids:
        raise ValueError("the tokenizer and model define no EOS token; set tokenizer.eos_token")
    return sorted(set(ids))
