"""Every aggregation mode (and the loss options around it) gives the same gradient however the learner
cuts a mini-batch into micro-batches: the normalisers are global, fixed when the batch is built."""

from __future__ import annotations

import pytest
import torch

from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.pipeline.batch import build_train_batch

# three groups of G = 3: mixed rewards with very unequal lengths, all-equal rewards, mixed again
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
LENGTHS = [[1, 9, 3], [2, 2, 2], [7, 1, 4]]
PROMPT_LENGTHS = [3, 6, 4]


@pytest.fixture(scope="module")
def model_dir(small_qwen2_dir):
    return small_qwen2_dir


def make_batch(algo_cfg):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 100, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    responses = [[torch.randint(4, 100, (n,), generator=gen).tolist() for n in group] for group in LENGTHS]
    logprobs = [[[0.0] * n for n in group] for group in LENGTHS]
    return build_train_batch(prompts, responses, logprobs, REWARDS, algo_cfg, max_new_tokens=10, pad_id=0)


def gradients(learner: Learner, batch, old, ref, micro_batch_size: int) -> list[torch.Tensor]:
    learner.cfg.learner.micro_batch_size = micro_batch_size
    learner.optimizer.zero_grad(set_to_none=True)
    learner.accumulate_gradients(batch, old, ref)
    return [p.grad.clone() for p in learner.params]


OPTIONS = {
    "plain": [],
    # GSPO ratio, TIS, dual clip, KL as a loss and an entropy bonus, all at once
    "all-options": ["algo.ratio_level=sequence", "algo.tis_cap=1.5", "algo.dual_clip=3.0", "algo.kl_coef=0.1",
                    "algo.entropy_coef=0.01"],
}


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm", "balanced"])
def test_aggregation_gradient_is_microbatch_invariant(model_dir, aggregation, options):
    torch.set_num_threads(1)
    overrides = [f"model.path={model_dir}", f"algo.aggregation={aggregation}", *OPTIONS[options]]
    cfg = resolve_config("grpo", None, overrides)
    learner = Learner(cfg)
    batch = make_batch(cfg.algo)
    gen = torch.Generator().manual_seed(2)
    current = learner._frozen_logprobs(learner.model, batch)
    # a behaviour policy a little away from the current one, so ratios differ from 1 and some clip
    old = current + 0.3 * torch.randn(current.shape, generator=gen) * batch.response_mask
    batch.rollout_logprobs = old + 0.3 * torch.randn(current.shape, generator=gen) * batch.response_mask
    ref = learner._frozen_logprobs(learner.ref_model, batch) if learner.ref_model is not None else None
    full = gradients(learner, batch, old, ref, len(batch))
    assert any(g.abs().sum() > 0 for g in full)
    for size in (1, 3, 4):
        for a, b in zip(full, gradients(learner, batch, old, ref, size)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (aggregation, options, size)


def test_a_per_microbatch_token_mean_would_fail_this_check(model_dir, monkeypatch):
    # the classic bug: normalising by the micro-batch's own token count; the check above must see it
    import rlft.learner.learner as learner_module
    from rlft.learner.loss import micro_batch_loss

    def local_mean_loss(logprobs, old, mask, adv, weights, token_weights, *args, **kwargs):
        local = torch.full_like(weights, 1.0) / mask.sum()
        return micro_batch_loss(logprobs, old, mask, adv, local, token_weights, *args, **kwargs)

    monkeypatch.setattr(learner_module, "micro_batch_loss", local_mean_loss)
    torch.set_num_threads(1)
    cfg = resolve_config("grpo-token", None, [f"model.path={model_dir}"])
    learner = Learner(cfg)
    batch = make_batch(cfg.algo)
    full = gradients(learner, batch, None, None, len(batch))
    split = gradients(learner, batch, None, None, 3)
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(full, split))
