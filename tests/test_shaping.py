"""Batch shaping: overlong penalty and filtering, group filtering's drop-and-refill with its cap, KL as reward."""

from __future__ import annotations

import torch

from rlft.config import AlgoConfig, resolve_config
from rlft.pipeline.batch import build_train_batch, kl_reward_penalty
from rlft.pipeline.shaping import GroupSampler, informative_groups, overlong_shaping, sampling_seed


def completion(length: int, truncated: bool = False, text: str = "") -> dict:
    return {"token_ids": [5] * length, "logprobs": [-0.5] * length, "text": text,
            "finish_reason": "length" if truncated else "stop"}


def test_soft_overlong_penalty_ramps_over_the_last_buffer_tokens():
    # L = 10, buffer 0.2 -> C = 2 tokens: 0 up to 8 tokens, -0.5 at 9, -1 (x overlong_penalty) at 10
    group = [[completion(n, truncated=n == 10) for n in (3, 8, 9, 10)]]
    rewards, keep = overlong_shaping(group, torch.ones(1, 4), AlgoConfig(overlong="penalty", overlong_penalty=0.5), 10)
    assert torch.allclose(rewards, torch.tensor([[1.0, 1.0, 0.75, 0.5]]))
    assert bool(keep.all())


def test_overlong_filter_masks_truncated_responses_out_of_every_normaliser():
    group = [[completion(2), completion(10, truncated=True), completion(5), completion(6)]]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    for aggregation, expected in [
        ("token-mean", [1 / 13, 0.0, 1 / 13, 1 / 13]),  # 2 + 5 + 6 kept tokens
        # S+ = {0, 3}: 2 / (4 * 8); S- = {2} (the truncated one is out): 1 / (4 * 5)
        ("balanced", [1 / 16, 0.0, 1 / 20, 1 / 16]),
    ]:
        cfg = AlgoConfig(overlong="filter", aggregation=aggregation)
        shaped, keep = overlong_shaping(group, rewards, cfg, 10)
        assert keep.tolist() == [[True, False, True, True]] and torch.equal(shaped, rewards)
        tokens, logprobs = [[c["token_ids"] for c in group[0]]], [[c["logprobs"] for c in group[0]]]
        batch = build_train_batch([[1, 4]], tokens, logprobs, shaped, cfg, 10, 0, keep)
        assert torch.allclose(batch.weights, torch.tensor(expected)), aggregation
        assert batch.token_weights[1] == 0 and batch.advantages[1] < 0  # still in its group's baseline


def test_informative_groups_are_those_with_unequal_rewards():
    assert informative_groups(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.0]])) == [1, 3]


class FakeTask:
    """Prompts 'q<step>-<i>': a prefix-stable stream per step, like the real tasks."""

    def train_batch(self, step: int, size: int) -> list[dict]:
        return [{"prompt": f"q{step}-{i}", "answer": str(i)} for i in range(size)]


def fake_rollout(informative: callable, g: int = 4):
    """generate/score functions: prompt i's group has unequal rewards when informative(i)."""
    calls = []

    def generate(prompt_ids, params, stream=False):
        calls.append(len(prompt_ids))
        return [[completion(3, text=str(j)) for j in range(params.n)] for _ in prompt_ids]

    def score(rows, groups):
        out = []
        for row, group in zip(rows, groups):
            i = int(row["prompt"].split("-")[1])
            out.append([float(informative(i) and j == 0) for j in range(len(group))])
        return torch.tensor(out), {"reward/failure_rate": 0.0}

    return generate, score, calls


def sampler_for(overrides, informative):
    cfg = resolve_config("grpo", None, ["rollout.prompts_per_step=4", "rollout.group_size=4", *overrides])
    generate, score, calls = fake_rollout(informative)
    return GroupSampler(cfg, FakeTask(), lambda s: [ord(c) for c in s], generate, score), calls


def test_group_filtering_drops_equal_groups_and_refills_from_fresh_prompts():
    sampler, calls = sampler_for(["algo.filter_groups=true"], informative=lambda i: i % 2 == 1)
    groups, metrics = sampler.draw(step=7)
    assert [row["prompt"] for row in groups.rows] == ["q7-1", "q7-3", "q7-5", "q7-7"]
    assert metrics["shaping/rounds"] == 2 and metrics["shaping/kept_groups"] == 4
    assert calls == [4, 4] and sampler.generated["samples"] == 32 and sampler.generated["scored"] == 32
    assert metrics["train/equal_reward_groups"] == 0.5  # statistics of the first round, before dropping


def test_group_filtering_stops_at_the_round_cap_and_trains_on_what_it_has():
    sampler, calls = sampler_for(
        ["algo.filter_groups=true", "algo.filter_groups_max_rounds=2"], informative=lambda i: i == 2
    )
    groups, metrics = sampler.draw(step=1)
    assert len(groups) == 1 and calls == [4, 4, 4] and metrics["shaping/rounds"] == 3
    sampler, _ = sampler_for(["algo.filter_groups=true"], informative=lambda i: False)
    assert len(sampler.draw(step=1)[0]) == 0  # nothing to learn: the driver skips the update


def test_without_group_filtering_every_group_is_kept():
    sampler, calls = sampler_for([], informative=lambda i: False)
    groups, metrics = sampler.draw(step=1)
    assert len(groups) == 4 and calls == [4] and "shaping/rounds" not in metrics


def test_kl_reward_penalty_sums_the_estimator_over_each_response():
    cfg = AlgoConfig(kl_coef=0.1, kl_estimator="k1", kl_mode="reward")
    batch = build_train_batch([[1]], [[[4, 5], [6]]], [[[-1.0, -2.0], [-0.5]]], torch.tensor([[1.0, 0.0]]), cfg, 4, 0)
    ref = torch.tensor([[0.0, -1.5, -1.0], [0.0, -1.0, 0.0]])  # columns: prompt, response tokens, padding
    penalty = kl_reward_penalty(batch, ref, cfg, (1, 2))
    assert torch.allclose(penalty, torch.tensor([[0.1 * ((-1.0 + 1.5) + (-2.0 + 1.0)), 0.1 * (-0.5 + 1.0)]]))


def test_the_first_generate_call_keeps_the_plain_seed_and_others_differ():
    assert sampling_seed(3, 10) == 3 * 1_000_003 + 10
    seeds = {sampling_seed(3, 10, k, part) for k in range(4) for part in range(2)}
    assert len(seeds) == 8
