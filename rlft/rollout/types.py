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


class RolloutEngine(Protocol):
    """A generator of completion groups over a model whose weights the learner updates."""

    def generate_groups(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) for each prompt, each group as soon as it is complete."""
        ...

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the model's weights (names as in the policy's state_dict)."""
        ...


def generate(engine: RolloutEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
    """All groups, in prompt order."""
    groups: list[list[Completion] | None] = [None] * len(prompts)
    for index, group in engine.generate_groups(prompts, params):
        groups[index] = group
    return groups  # type: ignore[return-value]
