"""The built-in engine: continuous batching over any transformers causal LM, on CPU or CUDA.

Each call runs a loop of decode steps over a fixed number of slots (`max_slots` sequences at once).
A group's prompt is prefilled once and its KV blocks are shared by all of its samples; every sample
then decodes in a slot, and a freed slot is refilled at once by the scheduler (rlft.rollout.scheduler:
full-group, micro-group or Infinite-Sampling). Groups are yielded the moment their last sample ends.
Randomness is per sample (rlft.rollout.sampling), so the completions for a seed do not depend on the
scheduling mode or the number of slots.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterator

import torch

from rlft.errors import UserError
from rlft.rollout.fast_decode import FastDecoder, unsupported
from rlft.rollout.kv_cache import PAGED_SDPA, SCRATCH_BLOCK, PagedKVCache
from rlft.rollout.length_predictor import GroupLengths, LengthPredictor, prediction_stats
from rlft.rollout.sampling import sample_key, sample_tokens, uniforms
from rlft.rollout.scheduler import SlotScheduler
from rlft.rollout.types import Completion, SamplingParams

# (prompts, generated so far, logits [rows, vocab]) -> logits: a hook for constrained decoding and benchmarks
LogitsProcessor = Callable[[list[list[int]], list[list[int]], torch.Tensor], torch.Tensor]


class _Group:
    __slots__ = ("index", "prompt", "samples", "blocks", "first_logits", "unstarted", "unfinished", "lengths")

    def __init__(self, index: int, prompt: list[int], n: int, seed: int, offset: int):
        if not prompt:
            raise UserError(f"prompt {index} is empty; every prompt needs at least one token")
        self.index, self.prompt = index, prompt
        self.samples = [_Sample(self, j, sample_key(seed, offset + index, j)) for j in range(n)]
        self.blocks: list[int] = []
        self.first_logits: torch.Tensor | None = None  # next-token logits after the prompt [vocab]
        self.unstarted = self.unfinished = n
        self.lengths: GroupLengths | None = None  # what the length predictor knows of this group


class _Sample:
    __slots__ = ("group", "index", "key", "tokens", "logprobs", "blocks", "finish", "probe", "features", "predicted")

    def __init__(self, group: _Group, index: int, key: int):
        self.group, self.index, self.key = group, index, key
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.blocks: list[int] = []  # own KV blocks, after the group's prompt blocks
        self.finish: str | None = None
        self.probe = False
        self.features: torch.Tensor | None = None  # first-token features for the length predictor
        self.predicted: float | None = None  # the length (tokens) the scheduler last planned with


class BuiltinEngine:
    """Generates groups with continuous batching over `max_slots` decode slots.

    scheduling: 'full' (a group's G samples decode together), 'micro' (rounds of `micro_group_size`),
    or 'infinite' (Infinite-Sampling: continuous refill with length-aware scheduling; probes of
    `probe_tokens` tokens feed the length predictor; `kv_budget_tokens` bounds the response KV it plans to
    hold, see rlft.rollout.scheduler). `prefill_tokens` caps the padded tokens of one
    prefill forward (default: 2048 on CPU, 16384 on GPU). `fast_decode`: decode steps of Llama-family models on
    a CPU run rlft.rollout.fast_decode's lean step instead of transformers' forward (prefill always runs the
    latter). `stats()` describes the last call (decode steps, peak KV bytes, length-prediction error;
    rlft.rollout.types.ENGINE_STATS); `length_predictions` holds its (predicted, actual) lengths. `before_step`,
    if given, is called before each engine step (admissions, prefill and one decode; the rollout worker picks its
    thread count there).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        max_slots: int = 256,
        scheduling: str = "infinite",
        micro_group_size: int = 4,
        probe_tokens: int = 16,
        block_size: int = 16,
        prefill_tokens: int | None = None,
        logits_processor: LogitsProcessor | None = None,
        kv_budget_tokens: int | None = None,
        before_step: Callable[[], None] | None = None,
        fast_decode: bool = True,
    ):
        if scheduling not in ("full", "micro", "infinite"):
            raise UserError(f"rollout.scheduling must be 'full', 'micro' or 'infinite', got {scheduling!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_slots, self.scheduling, self.micro_group_size = max_slots, scheduling, micro_group_size
        self.probe_tokens = probe_tokens
        self.kv_budget_tokens = kv_budget_tokens
        self.before_step = before_step
        self.logits_processor = logits_processor
        param = next(model.parameters())
        self.device = param.device
        # CPU caches favour small prefill batches (activations spill past ~2k tokens); GPUs want large ones
        self.prefill_tokens = prefill_tokens or (2048 if self.device.type == "cpu" else 16384)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        config = model.config
        self.attn = getattr(config, "_attn_implementation", None) or "eager"
        if self.attn not in ("sdpa", "eager"):
            raise UserError(
                f"the built-in engine runs attention through explicit masks ('sdpa' or 'eager'); this model uses "
                f"{self.attn!r}: set model.attn_implementation to 'sdpa'"
            )
        types = getattr(config, "layer_types", None) or []
        self.sliding_window = getattr(config, "sliding_window", None) if "sliding_attention" in types else None
        forward_params = inspect.signature(model.forward).parameters
        self.keep_last_logits = "logits_to_keep" in forward_params
        # newer transformers name the cache argument `cache` and warn on `past_key_values`; older ones know only that
        self.cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        self.cache = PagedKVCache(self.device, param.dtype, block_size)
        # the lean decode step reads the paged cache in row chunks, which only the 'sdpa' path sets up
        self.fast = FastDecoder(model) if fast_decode and self.attn == "sdpa" and not unsupported(model) else None
        self.predictor = LengthPredictor()
        self.counters: dict[str, float] = {}
        self.length_predictions: list[tuple[float, int]] = []  # (predicted, actual) of the last call

    def stats(self) -> dict[str, float]:
        """The last call's statistics (rlft.rollout.types.ENGINE_STATS)."""
        return {**{k: float(v) for k, v in self.counters.items()}, **prediction_stats(self.length_predictions)}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    def generate_groups(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) as each group's last sample ends."""
        for batch in self.generate_group_batches(prompts, params):
            yield from batch

    @torch.inference_mode()
    def generate_group_batches(
        self, prompts: list[list[int]], params: SamplingParams
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """`generate_groups`' pairs, a list per engine step: the groups whose last sample ended in that step."""
        groups = [_Group(i, list(p), params.n, params.seed, params.prompt_index_offset) for i, p in enumerate(prompts)]
        # lengths matter when samples outnumber the slots and responses may run long next to a probe (the tail a
        # plan can save is at most a few max_new_tokens); below that, first-come refill is as good and costs nothing
        length_aware = (self.scheduling == "infinite" and len(groups) * params.n > self.max_slots
                        and params.max_new_tokens > 2 * max(self.probe_tokens, 8))
        probe = max(2, self.probe_tokens) if length_aware and self.probe_tokens else 0
        predict = (lambda g, j: self._predict(groups[g].samples[j], params)) if length_aware else None
        try:
            sched = SlotScheduler(self.scheduling, self.max_slots, len(groups), params.n, self.micro_group_size, probe,
                                  predict, self.kv_budget_tokens if length_aware else None, self.predictor.margin)
        except ValueError as e:
            raise UserError(f"{e}; raise rollout.max_slots or pick rollout.scheduling=infinite") from None
        self.cache.clear()  # blocks a caller left behind by not draining a previous call are free again
        if self.fast is not None:
            self.fast.refresh()
        self.counters = {"decode_steps": 0, "fast_decode_steps": 0, "decode_rows": 0, "prefill_forwards": 0,
                         "prefill_tokens": 0, "generated_tokens": 0, "probe_tokens": sched.probe_tokens}
        self.length_predictions = []
        # KV a run without preemption must reserve: the blocks of open prompts and parked probes, plus every
        # slot's worth of a longest response (its first max_new_tokens - 1 tokens enter the cache)
        bs = self.cache.block_size
        slot_blocks = self.max_slots * -(-max(0, params.max_new_tokens - 1) // bs)
        held = self._kv_held = {"prompt": 0, "parked": 0}
        peak_held = 0
        running: list[_Sample] = []
        step = 0
        while not sched.done:
            if self.before_step is not None:
                self.before_step()
            finished: list[_Sample] = []
            changed = True
            while changed:  # a sample may end on its first token, which frees its slot before the step
                admitted = sched.admit(step)
                if admitted:
                    self._prefill([groups[g] for g in admitted])
                    held["prompt"] += sum(len(groups[g].blocks) for g in admitted)
                    peak_held = max(peak_held, held["prompt"] + held["parked"])
                started = []
                for g, j, is_probe in sched.start(step):
                    started.append(groups[g].samples[j])
                    started[-1].probe = is_probe
                    held["parked"] -= len(started[-1].blocks)  # a parked sample resumes in its slot
                changed = False
                for sample in self._first_tokens([s for s in started if not s.tokens], params):
                    if self._finish_if_done(sample, params):
                        sched.finish(sample.group.index, sample.index, step)
                        finished.append(sample)
                        changed = True
                running += [s for s in started if s.finish is None]
            if done := self._complete(finished):
                yield [(group.index, self._completions(group)) for group in done]
            if not running:
                if sched.done:
                    break
                raise RuntimeError("the slot scheduler stalled: nothing runs, nothing can start")  # a bug, not a user error
            step += 1
            still = []
            for sample in self._decode(running, params):
                if self._finish_if_done(sample, params):
                    sched.finish(sample.group.index, sample.index, step)
                    finished.append(sample)
                elif sample.probe and len(sample.tokens) >= sched.probe_tokens:
                    sched.park(sample.group.index, sample.index, step)
                    held["parked"] += len(sample.blocks)
                    peak_held = max(peak_held, held["prompt"] + held["parked"])
                else:
                    still.append(sample)
            running = still
            if done := self._complete(finished):
                yield [(group.index, self._completions(group)) for group in done]
        self.counters["peak_kv_bytes"] = self.cache.peak_blocks * self.cache.block_bytes()
        self.counters["reserved_kv_blocks"] = peak_held + slot_blocks
        self.counters["reserved_kv_bytes"] = (peak_held + slot_blocks) * self.cache.block_bytes()
        self.counters["kv_block_bytes"] = self.cache.block_bytes()

    # --- forwards -------------------------------------------------------------------------------

    def _prefill(self, groups: list[_Group]) -> None:
        """Prompt KV into each group's blocks and the next-token logits, batched up to `prefill_tokens`."""
        groups = sorted(groups, key=lambda g: len(g.prompt))
        chunk: list[_Group] = []
        for group in groups + [None]:
            if group is not None and (not chunk or (len(chunk) + 1) * len(group.prompt) <= self.prefill_tokens):
                chunk.append(group)
                continue
            self._prefill_chunk(chunk)
            chunk = [group]

    def _prefill_chunk(self, groups: list[_Group]) -> None:
        bs, width = self.cache.block_size, max(len(g.prompt) for g in groups)
        ids, slots, pads = [], [], []
        for group in groups:
            n = len(group.prompt)
            group.blocks = [self.cache.allocate() for _ in range(-(-n // bs))]
            pad = width - n
            pads.append(pad)
            ids.append([self.pad_id] * pad + group.prompt)
            slots += [SCRATCH_BLOCK * bs + c % bs for c in range(pad)]
            slots += [group.blocks[i // bs] * bs + i % bs for i in range(n)]
        dev = self.device
        col = torch.arange(width, device=dev)
        pad = torch.tensor(pads, device=dev)[:, None]
        positions = (col[None] - pad).clamp(min=0)
        # causal over the real tokens; a padding query sees itself only (no all-masked softmax row)
        mask = (col[None, None, :] <= col[None, :, None]) & (col[None, None, :] >= pad[:, :, None])
        mask |= torch.eye(width, dtype=torch.bool, device=dev)[None]
        key_pos = positions[:, None, :]
        query_pos = positions[:, :, None]
        self.cache.write_slots = torch.tensor(slots, device=dev)
        self.cache.read_blocks = self.cache.row_chunks = None
        logits = self._forward(torch.tensor(ids, device=dev), positions, mask[:, None], query_pos[:, None], key_pos[:, None])
        for group, row in zip(groups, logits[:, -1].float()):
            group.first_logits = row
        self.counters["prefill_forwards"] += 1
        self.counters["prefill_tokens"] += sum(len(g.prompt) for g in groups)

    def _decode(self, rows: list[_Sample], params: SamplingParams) -> list[_Sample]:
        """One decode step: feed every row's last token, sample its next one."""
        bs = self.cache.block_size
        rows.sort(key=lambda s: -(len(s.group.prompt) + len(s.tokens)))  # longest first: chunks of like widths
        ids, positions, slots, tables, prefix_len, prefix_span, own = [], [], [], [], [], [], []
        for s in rows:
            n, p = len(s.tokens), len(s.group.prompt)
            if (n - 1) % bs == 0:
                s.blocks.append(self.cache.allocate())
            ids.append(s.tokens[-1])
            positions.append(p + n - 1)
            slots.append(s.blocks[(n - 1) // bs] * bs + (n - 1) % bs)
            tables.append(s.group.blocks + s.blocks)
            prefix_len.append(p)
            prefix_span.append(len(s.group.blocks) * bs)
            own.append(n)
        width = max(map(len, tables))
        dev = self.device
        table = torch.tensor([t + [SCRATCH_BLOCK] * (width - len(t)) for t in tables], device=dev)
        pos = torch.tensor(positions, device=dev)[:, None]
        p_len, span, n_own = (torch.tensor(v, device=dev)[:, None] for v in (prefix_len, prefix_span, own))
        col = torch.arange(width * bs, device=dev)[None]
        in_prefix = col < span
        mask = torch.where(in_prefix, col < p_len, (col - span) < n_own)
        key_pos = torch.where(in_prefix, col, p_len + col - span)
        self.cache.write_slots = torch.tensor(slots, device=dev)
        self.cache.read_blocks = table
        self.cache.row_chunks = _row_chunks(list(map(len, tables))) if self.attn == "sdpa" else None
        ids = torch.tensor(ids, device=dev)[:, None]
        if self.fast is not None:
            logits = self.fast(ids, pos, mask[:, None, None], self.cache)
        else:
            logits = self._forward(ids, pos, mask[:, None, None], pos[:, None, :, None], key_pos[:, None, None])
        self.counters["decode_steps"] += 1
        self.counters["fast_decode_steps"] += self.fast is not None
        self.counters["decode_rows"] += len(rows)
        self._sample(rows, logits[:, -1], params)
        return rows

    def _forward(self, ids, positions, mask, query_pos, key_pos) -> torch.Tensor:
        """Logits [rows, q or 1, vocab] under an explicit mask (a dict of masks for sliding-window models)."""
        masks = self._model_mask(mask)
        if self.sliding_window is not None:
            masks = {"full_attention": masks,
                     "sliding_attention": self._model_mask(mask & (query_pos - key_pos < self.sliding_window))}
        extra = {"logits_to_keep": 1} if self.keep_last_logits else {}
        config = self.model.config
        if self.attn == "sdpa":  # paged_sdpa reads the cache in row chunks (the model may be shared: restore)
            config._attn_implementation = PAGED_SDPA
            extra["paged_cache"] = self.cache
        try:
            return self.model(input_ids=ids, attention_mask=masks, position_ids=positions, use_cache=True,
                              **{self.cache_arg: self.cache}, **extra).logits
        finally:
            config._attn_implementation = self.attn

    def _model_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if self.attn == "sdpa":
            return mask
        dtype = self.cache.dtype  # eager attention adds the mask to the scores
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)

    # --- sampling and bookkeeping ---------------------------------------------------------------

    def _first_tokens(self, samples: list[_Sample], params: SamplingParams) -> list[_Sample]:
        """Each new sample's first token, drawn from its group's prefill logits."""
        if samples:
            self._sample(samples, torch.stack([s.group.first_logits for s in samples]), params)
            for s in samples:
                s.group.unstarted -= 1
                if s.group.unstarted == 0:
                    s.group.first_logits = None
        return samples

    def _sample(self, rows: list[_Sample], logits: torch.Tensor, params: SamplingParams) -> None:
        if self.logits_processor is not None:
            logits = self.logits_processor([s.group.prompt for s in rows], [s.tokens for s in rows], logits)
        u = None
        if params.temperature > 0:
            keys = torch.tensor([s.key for s in rows], dtype=torch.int64)
            steps = torch.tensor([len(s.tokens) for s in rows], dtype=torch.int64)
            u = uniforms(keys, steps)
        tokens, logprobs = sample_tokens(logits, params.temperature, params.top_p, u)
        for s, t, lp in zip(rows, tokens.tolist(), logprobs.tolist()):
            s.tokens.append(t)
            s.logprobs.append(lp)

    def _finish_if_done(self, s: _Sample, params: SamplingParams) -> bool:
        if s.tokens[-1] in self.eos_ids or (params.stop and self._hit_stop(s.tokens, params.stop)):
            s.finish = "stop"
        elif len(s.tokens) >= params.max_new_tokens:
            s.finish = "length"
        else:
            return False
        self.cache.release(s.blocks)
        s.blocks = []
        s.group.unfinished -= 1
        self.counters["generated_tokens"] += len(s.tokens)
        if s.group.lengths is not None:  # sibling information for the waiting samples; the error for the stats
            self.predictor.finished(s.group.lengths, s.features, len(s.tokens))
            if s.predicted is not None:
                self.length_predictions.append((s.predicted, len(s.tokens)))
                self.predictor.observe(s.predicted, len(s.tokens))
        return True

    def _predict(self, s: _Sample, params: SamplingParams) -> float:
        """Predicted length of sample `s` from its prompt, its first tokens (if probed) and its finished siblings."""
        group = s.group
        if group.lengths is None:
            group.lengths = GroupLengths(self.predictor.prompt_features(group.prompt))
        if s.tokens and s.features is None:  # a probe that just parked (parked samples are re-predicted later)
            s.features = self.predictor.sample_features(s.tokens, s.logprobs)
            group.lengths.probed.append(s.features)
        s.predicted = self.predictor.predict(group.lengths, s.features, params.max_new_tokens)
        return s.predicted

    def _complete(self, finished: list[_Sample]) -> list[_Group]:
        done = []
        for s in finished:
            if s.group.unfinished == 0 and s.group.blocks is not None:
                self._kv_held["prompt"] -= len(s.group.blocks)
                self.cache.release(s.group.blocks)
                s.group.blocks = None
                if s.group.lengths is not None:
                    self.predictor.learn(s.group.lengths)
                done.append(s.group)
        finished.clear()
        return done

    def _completions(self, group: _Group) -> list[Completion]:
        return [
            Completion(prompt_index=group.index, token_ids=s.tokens, logprobs=s.logprobs,
                       text=self.tokenizer.decode(s.tokens, skip_special_tokens=True), finish_reason=s.finish)
            for s in group.samples
        ]

    def _hit_stop(self, tokens: list[int], stop: list[str]) -> bool:
        # special tokens kept: a stop string may be one (`<|im_end|>` of chat models)
        tail = self.tokenizer.decode(tokens[-max(8, max(map(len, stop)) + 2):], skip_special_tokens=False)
        return any(s in tail for s in stop)


def _row_chunks(widths: list[int]) -> list[tuple[int, int, int]]:
    """(first row, end row, blocks) over rows sorted by decreasing width: a new chunk starts where a row needs
    at most 60 % of its chunk's width, so padding stays under ~40 % for a few extra small gathers."""
    chunks, start = [], 0
    for i in range(1, len(widths) + 1):
        if i == len(widths) or widths[i] <= 0.6 * widths[start]:
            chunks.append((start, i, widths[start]))
            start = i
    return chunks


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
