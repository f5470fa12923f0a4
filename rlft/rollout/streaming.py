"""Groups from the rollout workers the moment they complete, and their rewards from the reward workers
while the rest of the batch is still decoding.

`GroupStream` runs the rollout workers' prompts (each worker a Ray streaming generator) and yields
(prompt index, group) in completion order (a worker's last item, (None, engine stats), goes to `stats`); `score_groups` sends each fixed chunk of consecutive
prompts to a reward worker as soon as its last group has arrived. Chunks are fixed by prompt index,
never by arrival, so the reward calls, and the rewards, are the same however the decoding interleaves.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import ray
import torch

from rlft.rollout.types import SamplingParams


class GroupStream:
    """Iterates (prompt index, completion dicts) over all rollout workers as groups complete;
    afterwards `groups` holds every group in prompt order."""

    def __init__(self, workers: list, parts: list[list[list[int]]], params: SamplingParams,
                 stats: list[dict[str, float]] | None = None):
        """`parts[i]`: the consecutive prompts (token ids) of worker i; each worker's engine statistics for
        this call (rlft.rollout.types.ENGINE_STATS) are appended to `stats` when its stream ends."""
        self.groups: list[list[dict] | None] = [None] * sum(map(len, parts))
        self.stats = stats if stats is not None else []
        self._pending: dict = {}  # ObjectRefGenerator -> offset of its first prompt
        offset = 0
        for worker, part in zip(workers, parts):
            if part:
                part_params = dataclasses.replace(params, prompt_index_offset=params.prompt_index_offset + offset)
                self._pending[worker.stream.remote(part, part_params)] = offset
            offset += len(part)

    def __iter__(self) -> Iterator[tuple[int, list[dict]]]:
        while self._pending:
            ready, _ = ray.wait(list(self._pending), num_returns=1)
            stream = ready[0]
            try:
                index, group = ray.get(next(stream))
            except StopIteration:
                del self._pending[stream]
                continue
            if index is None:
                self.stats.append(group)
                continue
            index += self._pending[stream]
            self.groups[index] = group
            yield index, group

    def collect(self) -> list[list[dict]]:
        """Every group, in prompt order (consumes what is left of the stream)."""
        for _ in self:
            pass
        return self.groups  # type: ignore[return-value]


def score_groups(
    rewarders: list, rows: list[dict], groups: list[list[dict] | None], arrivals: Iterable[int]
) -> tuple[torch.Tensor, dict]:
    """Rewards [prompts, G] in prompt order and the reward metrics. `groups` fills up as `arrivals` yields
    prompt indices (a GroupStream's `groups` and indices, or a finished list and its range); each chunk of
    consecutive prompts goes to a reward worker as soon as its last group is in."""
    chunk = max(1, -(-len(rows) // (4 * len(rewarders))))  # ~4 chunks per reward worker: overlap, few calls
    chunks = [list(range(start, min(start + chunk, len(rows)))) for start in range(0, len(rows), chunk)]
    missing = [len(c) for c in chunks]
    futures: list = [None] * len(chunks)
    for index in arrivals:
        c = index // chunk
        missing[c] -= 1
        if missing[c] == 0:
            part = [(rows[i]["prompt"], s["text"], rows[i]) for i in chunks[c] for s in groups[i]]
            worker = rewarders[c % len(rewarders)]
            futures[c] = worker.score.remote([p for p, _, _ in part], [t for _, t, _ in part], [r for _, _, r in part])
    results = ray.get(futures)
    sizes = [sum(len(groups[i]) for i in c) for c in chunks]
    total = sum(sizes)
    metrics: dict[str, float] = {}
    for (_, part_metrics), size in zip(results, sizes):
        for k, v in part_metrics.items():  # counts add up; per-sample means are re-weighted by chunk size
            counted = k.endswith(("failures", "timeouts", "worker_restarts")) or k == "reward/time_s"
            metrics[k] = metrics.get(k, 0.0) + (v if counted else v * size / total)
    rewards = torch.tensor([r for values, _ in results for r in values], dtype=torch.float32)
    return rewards.view(len(rows), -1), metrics
