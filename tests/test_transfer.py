"""TPO (docs/methods.md#transfer-tpo): group composition, win statistics with ties, UCB arm choice and the null arm's bar."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlft.algorithms.transfer import NULL_ARM, UCBArms, compose_group, win_credit
from rlft.config import resolve_config
from rlft.errors import ConfigError
from rlft.pipeline.shaping import GroupSampler
from rlft.reward.registry import load_reward


def test_group_is_the_plain_samples_then_the_sources_top_r_extras():
    samples = ["p0", "p1", "e0", "e1", "e2", "e3", "e4"]
    group, transferred = compose_group(samples, [0.1, 0.9, 0.5, 0.9, 0.0], plain=2, r=3)
    assert group == ["p0", "p1", "e1", "e3", "e2"]  # equal scores keep sample order (e1 before e3)
    assert transferred == [False, False, True, True, True]


def test_win_credit_counts_strict_wins_and_losses_and_ignores_ties():
    flags = [False, False, True, True]
    assert win_credit([0, 0, 1, 0], flags) == 1.0  # only a transferred sample is right
    assert win_credit([1, 0, 0, 0], flags) == 0.0  # a plain sample beats every transferred one
    assert win_credit([1, 0, 1, 0], flags) is None  # both sides found the best: no evidence
    assert win_credit([0, 0, 0, 0], flags) is None


def test_a_source_that_picks_at_random_wins_half_the_decided_groups():
    rng = random.Random(0)
    arms = UCBArms(["random"])
    for _ in range(4000):
        p = rng.random()  # prompts of every difficulty
        samples = [float(rng.random() < p) for _ in range(4 + 16)]
        group, flags = compose_group(samples, [rng.random() for _ in range(16)], plain=4, r=4)
        arms.record("random", win_credit(group, flags))
    rate = arms.wins["random"] / arms.n["random"]
    assert abs(rate - 0.5) < 0.05 and rate < 0.55


def test_untried_sources_come_first_then_the_best_ucb_score():
    arms = UCBArms(["a", "b"], beta=1.0, null_bar=0.55, refresh_prompts=1)
    assert arms.choose(1) == ["a"]
    arms.record("a", 0.0)
    assert arms.choose(1) == ["b"]  # 'b' untried: +inf
    arms.record("b", 1.0)
    assert arms.score("a") == pytest.approx(0 + 1.0) and arms.score("b") == pytest.approx(1 + 1.0)
    assert arms.choose(1) == ["b"]


def test_null_arm_takes_over_when_no_source_clears_the_bar():
    arms = UCBArms(["useless"], beta=1.0, null_bar=0.55, refresh_prompts=1)
    for k in range(500):  # win rate 0.5: 0.5 + 1 / sqrt(500) = 0.545 < 0.55
        arms.record("useless", float(k % 2))
    assert arms.choose(3) == [NULL_ARM] * 3
    assert arms.metrics()["transfer/null/picks"] == 3 and arms.metrics()["transfer/useless/win_rate"] == 0.5


def test_ties_count_no_outcome_and_the_choice_refreshes_every_k_prompts():
    arms = UCBArms(["a", "b"], refresh_prompts=4)
    arms.record("a", None)
    assert arms.n["a"] == 0
    first = arms.choose(3)
    arms.record("a", 0.0)  # 'a' now scores 1.0 < inf of 'b', but the choice holds until 4 prompts passed
    assert first + arms.choose(3) == ["a"] * 4 + ["b"] * 2


def fake_generate(prompt_ids, params, stream=False):
    # sample j of a prompt answers str(j % 10); the answer field is '7'
    return [[{"token_ids": [5, 6], "logprobs": [-1.0, -1.0], "text": str(j % 10), "finish_reason": "stop"}
             for j in range(params.n)] for _ in prompt_ids]


def fake_score(rows, groups):
    return torch.tensor([[float(c["text"] == row["answer"]) for c in g] for row, g in zip(rows, groups)]), {}


class OneTask:
    def train_batch(self, step, size):
        return [{"prompt": f"{step}-{i}", "answer": "7"} for i in range(size)]


def test_tpo_sampler_builds_groups_from_the_chosen_sources_picks_and_scores_the_target():
    cfg = resolve_config("grpo", None, [
        "rollout.group_size=4", "rollout.prompts_per_step=2", "transfer.sources=[oracle]",
        "transfer.num_transferred=2", "transfer.num_extra=8",
    ])
    def oracle(prompts, completions, rows):
        return [float(c == r["answer"]) for c, r in zip(completions, rows)]

    sampler = GroupSampler(cfg, OneTask(), lambda s: [1], fake_generate, fake_score, sources={"oracle": oracle})
    groups, metrics = sampler.draw(step=1)
    # plain samples answer 0, 1; the extra 8 answer 2..9, the oracle ranks '7' first, then keeps order
    assert [c["text"] for c in groups.completions[0]] == ["0", "1", "7", "2"]
    assert groups.rewards[0].tolist() == [0.0, 0.0, 1.0, 0.0]  # target reward on the composed group
    assert metrics["transfer/oracle/picks"] == 2 and metrics["transfer/oracle/win_rate"] == 1.0
    assert sampler.generated["samples"] == 2 * (2 + 8) and sampler.generated["scored"] == 2 * 4


def test_transfer_config_takes_reward_specs_and_keeps_r_at_most_half_the_group():
    cfg = resolve_config("grpo-ba", None, ["transfer.sources=[digit_credit, my.py:score]"])
    assert [s.name for s in cfg.transfer.sources] == ["digit_credit", "my.py:score"]
    with pytest.raises(ConfigError, match="num_transferred"):
        resolve_config("grpo", None, ["transfer.sources=[last_digit]", "transfer.num_transferred=5"])


def test_example_sources_are_registered_and_the_random_one_is_uninformative():
    assert load_reward("digit_credit").fn("12+34=", " 46", answer="46") == 1.0
    assert load_reward("digit_credit").fn("12+34=", "36", answer="46") == 0.5
    assert load_reward("last_digit").fn("12+34=", "36", answer="46") == 1.0
    random_score = load_reward("random_score").fn
    scores = random_score(["1+1="] * 1000, ["2"] * 1000)  # the same text does not get the same score
    assert scores == random_score(["1+1="] * 1000, ["2"] * 1000) and len(set(scores)) == 1000
    assert abs(sum(scores) / 1000 - 0.5) < 0.05 and math.isclose(min(scores), 0.0, abs_tol=0.01)
