"""Streaming from rollout workers to reward workers: groups in completion order, rewards in prompt order,
scoring that starts before the batch has finished decoding."""

from __future__ import annotations

import sys
import time

import pytest
import ray

from rlft.rollout.streaming import GroupStream, score_groups
from rlft.rollout.types import SamplingParams


class FakeRollout:
    """Yields its prompts' groups in a given completion order, `delay` seconds apart.

    With `scored` (a Signal actor) it holds back its last group until a reward call has happened,
    at most `wait_s` seconds: whether scoring began while decoding went on is then a fact it
    records, not a race between timestamps on a busy machine.
    """

    def __init__(self, order: list[int], delay: float, scored=None, wait_s: float = 60.0):
        self.order, self.delay, self.scored, self.wait_s = order, delay, scored, wait_s
        self.scored_before_last = None

    def stream(self, prompt_ids, params):
        for k, index in enumerate(self.order):
            time.sleep(self.delay)
            if self.scored is not None and k == len(self.order) - 1:
                deadline = time.time() + self.wait_s
                while not ray.get(self.scored.is_set.remote()) and time.time() < deadline:
                    time.sleep(0.05)
                self.scored_before_last = ray.get(self.scored.is_set.remote())
            yield index, [{"text": f"{prompt_ids[index][0]}:{j}:{params.prompt_index_offset}", "token_ids": [j]}
                          for j in range(params.n)]

    def scoring_began_before_the_last_group(self):
        return self.scored_before_last


class Signal:
    def __init__(self):
        self.value = False

    def set(self):
        self.value = True

    def is_set(self):
        return self.value


class FakeReward:
    def __init__(self, scored=None):
        self.scored = scored

    def score(self, prompts, completions, rows):
        if self.scored is not None:
            ray.get(self.scored.set.remote())
        return [float(len(c)) + rows[i]["k"] for i, c in enumerate(completions)], {"reward/time_s": 0.0, "reward/x": 1.0}


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fake actors travel by value
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


def test_groups_arrive_in_completion_order_and_are_kept_in_prompt_order(local_ray):
    workers = [ray.remote(FakeRollout).remote([2, 0, 1], 0.0), ray.remote(FakeRollout).remote([1, 0], 0.0)]
    parts = [[[10], [11], [12]], [[13], [14]]]
    stream = GroupStream(workers, parts, SamplingParams(n=2))
    arrived = [index for index, _ in stream]
    assert sorted(arrived) == [0, 1, 2, 3, 4]
    assert arrived.index(2) < arrived.index(0)  # worker 0 finished prompt 2 first
    assert [g[0]["text"] for g in stream.groups] == ["10:0:0", "11:0:0", "12:0:0", "13:0:3", "14:0:3"]  # offsets


def test_scoring_starts_before_decoding_ends_and_rewards_keep_prompt_order(local_ray):
    rows = [{"prompt": str(i), "k": 100.0 * i} for i in range(8)]
    scored = ray.remote(Signal).remote()
    rollout = ray.remote(FakeRollout).remote([7, 6, 5, 4, 3, 2, 1, 0], 0.0, scored)
    rewarders = [ray.remote(FakeReward).remote(scored) for _ in range(2)]
    stream = GroupStream([rollout], [[[i] for i in range(8)]], SamplingParams(n=3))
    rewards, metrics = score_groups(rewarders, rows, stream.groups, (index for index, _ in stream))
    assert rewards.shape == (8, 3)
    assert rewards[:, 0].tolist() == [len(f"{i}:0:0") + 100.0 * i for i in range(8)]
    assert ray.get(rollout.scoring_began_before_the_last_group.remote())  # a chunk was scored mid-decoding
    assert metrics["reward/x"] == pytest.approx(1.0)


def test_rewards_do_not_depend_on_the_completion_order(local_ray):
    rows = [{"prompt": str(i), "k": float(i)} for i in range(6)]
    rewarders = [ray.remote(FakeReward).remote()]
    results = []
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4]):
        stream = GroupStream([ray.remote(FakeRollout).remote(order, 0.0)], [[[i] for i in range(6)]], SamplingParams(n=2))
        results.append(score_groups(rewarders, rows, stream.groups, (index for index, _ in stream))[0])
    assert results[0].equal(results[1])
