"""algo.kl_mode=reward: the reference runs once per step and the advantages are computed once, from the
rewards less the KL penalty."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.pipeline.batch import build_step_batch
from rlft.pipeline.shaping import Groups

REWARDS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
RESPONSES = [[[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15, 16], [17]]]


def test_kl_reward_runs_the_reference_once_and_advantages_are_grpo_of_the_penalised_rewards():
    torch.manual_seed(0)
    cfg = resolve_config("grpo", None, ["algo.kl_coef=0.1", "algo.kl_mode=reward", "learner.micro_batch_size=64"])
    learner = Learner(cfg)
    forwards = []  # reference passes over the batch (each may run the model more than once: shared prompts)
    frozen = learner._frozen_logprobs
    learner._frozen_logprobs = lambda model, b: (forwards.append(model is learner.ref_model), frozen(model, b))[1]
    completions = [[{"token_ids": r, "logprobs": [-1.0 - 0.5 * t for t in range(len(r))]} for r in g]
                   for g in RESPONSES]
    groups = Groups([{}, {}], [[1, 2, 3], [4, 3]], completions, REWARDS, torch.ones(2, 3, dtype=torch.bool))

    batch, metrics = build_step_batch(groups, cfg.algo, cfg.rollout.max_new_tokens, 0, learner.reference_logprobs)
    step = learner.train_step(batch)
    assert forwards == [True]  # once for the penalty; the learner's KL statistic reuses those log-probs
    assert "learner/kl" in step

    # by hand: penalty_i = kl_coef * sum_t k3(rollout_t - ref_t), then GRPO over each group
    ref = batch.ref_logprobs
    penalised = []
    for row, (g, j) in enumerate((g, j) for g in range(2) for j in range(3)):
        prompt_len = len(groups.prompt_ids[g])
        kl = 0.0
        for t, lp in enumerate(completions[g][j]["logprobs"]):
            x = lp - float(ref[row, prompt_len + t])
            kl += math.exp(-x) - 1 + x
        penalised.append(float(REWARDS[g, j]) - 0.1 * kl)
    want = []
    for g in range(2):
        r = penalised[3 * g: 3 * g + 3]
        mean = sum(r) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
        want += [(x - mean) / (std + cfg.algo.std_eps) for x in r]
    assert torch.allclose(batch.advantages, torch.tensor(want), atol=1e-5)
    penalty = [float(REWARDS.flatten()[i]) - penalised[i] for i in range(6)]
    assert metrics["reward/kl_penalty"] == pytest.approx(sum(penalty) / 6, rel=1e-5)


def test_without_kl_reward_the_reference_is_not_asked_for():
    cfg = resolve_config("grpo", None, ["algo.kl_coef=0.1", "algo.kl_mode=loss"])
    completions = [[{"token_ids": r, "logprobs": [-1.0] * len(r)} for r in g] for g in RESPONSES]
    groups = Groups([{}, {}], [[1, 2, 3], [4, 3]], completions, REWARDS, torch.ones(2, 3, dtype=torch.bool))

    def reference(batch):
        raise AssertionError("the reference was asked for")

    batch, metrics = build_step_batch(groups, cfg.algo, cfg.rollout.max_new_tokens, 0, reference)
    assert batch.ref_logprobs is None and metrics == {}
