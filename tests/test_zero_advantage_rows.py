"""learner.skip_zero_advantage_rows: rows whose loss has no gradient (a group of equal rewards) are not run,
and the update is the same as running them; with a KL loss or an entropy bonus every row runs."""

from __future__ import annotations

import pytest
import torch

from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.learner.loss import drop_zero_gradient_rows
from rlft.pipeline.batch import build_train_batch

# four groups of G = 3: mixed rewards, all right, mixed, all wrong
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
LENGTHS = [[1, 9, 3], [2, 5, 2], [7, 1, 4], [3, 8, 6]]
PROMPT_LENGTHS = [3, 6, 4, 5]


@pytest.fixture(scope="module")
def model_dir(small_qwen2_dir):
    return small_qwen2_dir


def make_batch(algo_cfg, rewards=REWARDS):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 100, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    responses = [[torch.randint(4, 100, (n,), generator=gen).tolist() for n in group] for group in LENGTHS]
    # behaviour log-probs a little off the policy's, so TIS and the ratio statistics are not trivial
    logprobs = [[[-4.0 - 0.1 * i] * n for i, n in enumerate(group)] for group in LENGTHS]
    return build_train_batch(prompts, responses, logprobs, rewards, algo_cfg, max_new_tokens=10, pad_id=0)


def step(model_dir, skip: bool, overrides: list[str], rewards=REWARDS, steps: int = 2):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = resolve_config("grpo-ba", None, [f"model.path={model_dir}", "learner.device=cpu",
                                           f"learner.skip_zero_advantage_rows={str(skip).lower()}", *overrides])
    learner = Learner(cfg)
    batch = make_batch(cfg.algo, rewards)
    metrics = [learner.train_step(batch) for _ in range(steps)]
    return [p.detach().clone() for p in learner.params], metrics


OPTIONS = {
    "plain": [],
    "tis-two-minibatches": ["algo.tis_cap=2.0", "algo.num_minibatches=2"],
    "token-mean": ["algo.aggregation=token-mean"],
}


@pytest.mark.parametrize("options", list(OPTIONS))
def test_skipping_zero_advantage_rows_gives_the_same_update(model_dir, options):
    skipped_params, skipped = step(model_dir, True, OPTIONS[options])
    full_params, full = step(model_dir, False, OPTIONS[options])
    for a, b in zip(skipped_params, full_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert skipped[0]["learner/skipped_rows"] == 6.0  # the all-right and the all-wrong group
    assert full[0]["learner/skipped_rows"] == 0.0
    for s, f in zip(skipped, full):
        assert s["learner/pg_loss"] == pytest.approx(f["learner/pg_loss"], abs=1e-6)
        assert s["learner/grad_norm"] == pytest.approx(f["learner/grad_norm"], rel=1e-4)


def test_statistics_of_a_skipping_step_are_token_means_over_the_rows_it_ran(model_dir):
    # on-policy (one mini-batch, no TIS): the ratio is 1 on every token, so its token-mean is 1 only if the
    # token weights of the rows that ran were rescaled to sum to one
    _, metrics = step(model_dir, True, [], steps=1)
    assert metrics[0]["learner/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics[0]["learner/entropy"] > 0


@pytest.mark.parametrize("options", [["algo.entropy_coef=0.01"], ["algo.kl_coef=0.1"]], ids=["entropy-bonus", "kl-loss"])
def test_every_row_runs_when_the_loss_has_a_kl_term_or_an_entropy_bonus(model_dir, options):
    _, metrics = step(model_dir, True, options, steps=1)
    assert metrics[0]["learner/skipped_rows"] == 0.0


def test_rows_are_skipped_when_the_kl_is_charged_to_the_rewards(model_dir):
    cfg = resolve_config("grpo-ba", None, [f"model.path={model_dir}", "algo.kl_coef=0.1", "algo.kl_mode=reward"])
    batch = make_batch(cfg.algo)
    part, dropped = drop_zero_gradient_rows(batch, cfg.algo)
    assert dropped == 6 and len(part) == 6


def test_a_mini_batch_of_equal_reward_groups_only_still_takes_its_optimizer_step(model_dir):
    # mini-batch 1 holds only equal-reward groups: it keeps one row, so AdamW still moves on its momentum
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    cfg = resolve_config("grpo-ba", None, [f"model.path={model_dir}", "algo.num_minibatches=2"])
    batch = make_batch(cfg.algo, rewards)
    if not bool((batch.advantages[batch.minibatch == 1] == 0).all()):
        pytest.skip("the mini-batch split did not put both equal-reward groups together")
    part, dropped = drop_zero_gradient_rows(batch, cfg.algo)
    assert sorted(part.minibatch.unique().tolist()) == [0, 1] and dropped == 5
    skipped_params, _ = step(model_dir, True, ["algo.num_minibatches=2"], rewards=rewards)
    full_params, _ = step(model_dir, False, ["algo.num_minibatches=2"], rewards=rewards)
    for a, b in zip(skipped_params, full_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
