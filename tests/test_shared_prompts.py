"""learner.share_prompts: each distinct prompt runs once and its rows' responses attend to its cached
keys/values; log-probs, entropy, gradients and whole learner steps equal the whole-row forward's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.learner.logprobs import token_logprobs
from rlft.learner.shared_prompts import prompt_groups, shared_prompt_logprobs
from rlft.learner.types import TrainBatch

TINY = "rlft/models/tiny"


def packed_rows(spec, seed=0):
    """Rows [prompt | response | pad] from [(prompt length, [response lengths of its rows])], prompts random."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for plen, responses in spec:
        prompt = torch.randint(3, 128, (plen,), generator=g)
        rows += [(prompt, torch.randint(3, 128, (r,), generator=g)) for r in responses]
    width = max(len(p) + len(r) for p, r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    response = torch.zeros(len(rows), width)
    for i, (p, r) in enumerate(rows):
        tokens[i, : len(p)], tokens[i, len(p) : len(p) + len(r)] = p, r
        attention[i, : len(p) + len(r)] = 1
        response[i, len(p) : len(p) + len(r)] = 1
    return tokens, attention, response


# prompts of different lengths (left padding of the distinct prompts), responses of different lengths
# (right padding), a group of one, and a row whose response is empty
RAGGED = [(5, [4, 1, 6]), (8, [2, 7]), (3, [5, 5, 1, 3]), (6, [3]), (4, [0, 2])]


def forward_backward(model, tokens, attention, response, share, fused, temperature):
    model.zero_grad(set_to_none=True)
    logprobs = shared_prompt_logprobs if share else token_logprobs
    lp, ent = logprobs(model, tokens, attention, temperature, True, True, fused, response)
    weights = torch.linspace(-1.0, 1.0, lp.numel()).reshape(lp.shape)
    ((lp * weights + 0.1 * ent) * response).sum().backward()
    return (lp * response).detach(), (ent * response).detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [0, 64], ids=["plain", "fused"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompts_give_the_whole_row_logprobs_entropy_and_gradients(fused, temperature):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    tokens, attention, response = packed_rows(RAGGED)
    whole = forward_backward(model, tokens, attention, response, False, fused, temperature)
    shared = forward_backward(model, tokens, attention, response, True, fused, temperature)
    torch.testing.assert_close(shared[0], whole[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(shared[1], whole[1], atol=2e-5, rtol=0)
    for a, b in zip(shared[2], whole[2]):
        torch.testing.assert_close(a, b, atol=1e-4 * max(1.0, float(b.abs().max())), rtol=0)


def test_prompts_are_grouped_by_their_tokens_wherever_their_rows_are():
    tokens = torch.tensor([[5, 6, 7, 0], [9, 9, 7, 8], [5, 6, 8, 8], [5, 6, 7, 7]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    response = torch.tensor([[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]).float()
    first, group, prompts = prompt_groups(tokens, attention, response)
    assert first.tolist() == [2, 2, 2, 3]
    # rows 0 and 2 share the prompt [5, 6] although row 1 lies between; row 3's prompt is [5, 6, 7]
    assert group.tolist() == [0, 1, 0, 2]
    assert prompts == [[5, 6], [9, 9], [5, 6, 7]]


def test_rows_with_distinct_prompts_run_whole_with_the_same_values():
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    tokens, attention, response = packed_rows([(5, [3]), (6, [4]), (4, [2])])
    with torch.no_grad():
        shared, _ = shared_prompt_logprobs(model, tokens, attention, targets_mask=response)
        whole, _ = token_logprobs(model, tokens, attention, targets_mask=response)
    assert torch.equal(shared, whole)  # no prompt repeats: the plain forward, bit for bit


def grouped_batch(groups=4, size=4, prompt_len=6, seed=0) -> TrainBatch:
    tokens, attention, response = packed_rows([(prompt_len, [1 + (i * 3 + j) % 5 for j in range(size)])
                                               for i in range(groups)], seed)
    n = tokens.shape[0]
    g = torch.Generator().manual_seed(seed + 1)
    tokens_out = response.sum()
    return TrainBatch(
        tokens=tokens, attention_mask=attention, response_mask=response,
        rollout_logprobs=-torch.rand(tokens.shape, generator=g) * response,
        advantages=torch.randn(n, generator=g), weights=torch.full((n,), 1.0 / float(tokens_out)),
        token_weights=torch.full((n,), 1.0 / float(tokens_out)), minibatch=torch.zeros(n, dtype=torch.long),
    )


def test_a_learner_step_with_shared_prompts_equals_the_step_without():
    batch = grouped_batch()
    grads, states, stats = [], [], []
    for share in (True, False):
        cfg = resolve_config("grpo-ba", None, ["learner.device=cpu", "optim.lr=1e-3", f"learner.share_prompts={share}",
                                               "learner.micro_batch_size=8", "algo.tis_cap=2.0"])
        learner = Learner(cfg)
        learner.accumulate_gradients(batch)
        grads.append([p.grad.clone() for p in learner.params])
        learner.optimizer.zero_grad(set_to_none=True)
        stats.append(learner.train_step(batch))
        states.append(learner.state_dict())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    for key in ("learner/pg_loss", "learner/grad_norm", "learner/entropy"):
        assert stats[0][key] == pytest.approx(stats[1][key], rel=1e-4, abs=1e-6), key
    for name in states[0]:
        # Adam's first step moves a weight by lr * g / (|g| + eps): about lr whatever |g| is, except where |g| is
        # near eps, and there a float-rounding difference in g moves it by a few % of lr
        torch.testing.assert_close(states[0][name], states[1][name], atol=5e-5, rtol=0)


def test_gradient_checkpointing_runs_rows_whole_and_still_learns():
    cfg = resolve_config("grpo-ba", None, ["learner.device=cpu", "learner.gradient_checkpointing=true"])
    learner = Learner(cfg)
    assert not learner.share_prompts  # the checkpointed recompute would append to the prompts' cache twice
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    stats = learner.train_step(grouped_batch())
    assert stats["learner/nonfinite_steps"] == 0.0
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())
