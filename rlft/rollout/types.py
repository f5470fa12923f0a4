"""What crosses the rollout boundary: sampling parameters in, completions out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch


@dataclass
class SamplingParams:
    """How to sample one group per prompt. Lengths are counted in tokens."""

    n: int = 1  # completions per prompt (the group size G)
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 16
    stop: list[str] = field(default_factory=list)  # a response ends after the first of these strings
    seed: int = 0  # sample j of prompt i draws its randomness from (seed, prompt_index_offset + i, j)
    prompt_index_offset: int = 0  # global index of prompts[0], so splitting prompts between workers changes nothing


@dataclass
class Completion:
    """One sampled response. `logprobs[t]` is log pi(token_ids[t]) under the sampling temperature."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


# The statistics an engine reports for its last `generate_groups` call (`RolloutEngine.stats()`), one table
# for every engine: key -> (how values merge, what it counts and its unit). An engine reports the keys it
# measures, under these names; a new key is a row here. The driver merges a step's values over its
# generate calls and its rollout workers, and over the run for the summary, with `merge_engine_stats`:
# "sum" adds, "max" keeps the largest (per-worker peaks: workers have their own memory), and a key name
# means a mean weighted by that key's count. They reach metrics.jsonl and summary.json as rollout/<key>.
ENGINE_STATS: dict[str, tuple[str, str]] = {
    "decode_steps": ("sum", "decode forward passes (each one token for every running sample)"),
    "fast_decode_steps": ("sum", "decode passes run by the lean Llama-family step on a CPU (rollout.fast_decode)"),
    "decode_rows": ("sum", "sample-tokens those passes decoded (rows summed over passes)"),
    "prefill_forwards": ("sum", "forward passes over prompts"),
    "prefill_tokens": ("sum", "prompt tokens prefilled, once per group (its samples share them)"),
    "generated_tokens": ("sum", "response tokens generated"),
    "probe_tokens": ("max", "tokens a sample decodes before its length is predicted (0: no prediction)"),
    "peak_kv_bytes": ("max", "most KV-cache bytes in use at once in one worker"),
    "kv_block_bytes": ("max", "bytes of one KV block (block_size tokens, all layers, keys and values)"),
    "reserved_kv_blocks": ("max", "reserved_kv_bytes in KV blocks"),
    "reserved_kv_bytes": ("max", "KV bytes one worker would reserve to run the call without preemption "
                                 "(open prompts, parked probes, max_new_tokens per slot)"),
    "kv_capacity_bytes": ("max", "KV bytes the engine's pool can hold in one worker (vLLM: its sized cache)"),
    "requests": ("sum", "generation requests sent to the engine (vLLM: a probe and its continuation are two)"),
    "borrowed_core_steps": ("sum", "engine steps a rollout worker ran on the idle learner's cores too "
                                   "(ray.lend_idle_cores)"),
    "length_predictions": ("sum", "length predictions the scheduler acted on whose sample then finished"),
    "length_pred_abs_log_error": ("length_predictions", "mean |ln predicted - ln actual length| of those "
                                                        "predictions (0.1: about 10 % off)"),
}


def merge_engine_stats(total: dict[str, float], stats: dict[str, float]) -> dict[str, float]:
    """`total` with `stats` merged in by each key's rule in ENGINE_STATS (a new dict)."""
    out = dict(total)
    for key, value in stats.items():
        if key not in ENGINE_STATS:  # a programmer's error: the engine reports a key the table does not define
            raise ValueError(f"engine statistic {key!r} is not in rlft.rollout.types.ENGINE_STATS; add its row there")
        rule = ENGINE_STATS[key][0]
        if key not in out:
            out[key] = value
        elif rule == "sum":
            out[key] += value
        elif rule == "max":
            out[key] = max(out[key], value)
        else:  # a mean weighted by the counts in `rule`; merged before the counts themselves add up below
            old, new = total.get(rule, 0.0), stats.get(rule, 0.0)
            out[key] = (out[key] * old + value * new) / (old + new) if old + new else out[key]
    return out


class RolloutEngine(Protocol):
    """A generator of completion groups over a model whose weights the learner updates."""

    def generate_groups(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) for each prompt, each group as soon as it is complete."""
        ...

    def generate_group_batches(
        self, prompts: list[list[int]], params: SamplingParams
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """`generate_groups`' pairs, a list per engine step (the groups that ended in it): a rollout worker sends
        each list in one message, not one per group."""
        ...

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the model's weights (names as in the policy's state_dict)."""
        ...

    def stats(self) -> dict[str, float]:
        """Statistics of the last `generate_groups` call, keys and units as in ENGINE_STATS (those it measures)."""
        ...


def generate(engine: RolloutEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
    """All groups, in prompt order."""
    groups: list[list[Completion] | None] = [None] * len(prompts)
    for index, group in engine.generate_groups(prompts, params):
        groups[index] = group
    return groups  # type: ignore[return-value]
