"""learner.share_prompts: a group's prompt runs once per packed row, its responses packed after it
(rlft.learner.packing); log-probs, entropy, gradients and whole learner steps equal the whole-row forward's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.learner.logprobs import token_logprobs
from rlft.learner.packing import pack, pack_units, packed_logprobs, prompt_groups, unit_lengths
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


def forward_backward(model, tokens, attention, response, share, fused, temperature, cap=None):
    model.zero_grad(set_to_none=True)
    if share:
        lp, ent = packed_logprobs(model, tokens, attention, temperature, True, True, fused, response, cap=cap)
    else:
        lp, ent = token_logprobs(model, tokens, attention, temperature, True, True, fused, response)
    weights = torch.linspace(-1.0, 1.0, lp.numel()).reshape(lp.shape)
    ((lp * weights + 0.1 * ent) * response).sum().backward()
    return (lp * response).detach(), (ent * response).detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [0, 64], ids=["plain", "fused"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("cap", [None, 12], ids=["whole-groups", "groups-split"])
def test_shared_prompts_give_the_whole_row_logprobs_entropy_and_gradients(fused, temperature, attn, cap):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32, attn_implementation=attn)
    tokens, attention, response = packed_rows(RAGGED)
    whole = forward_backward(model, tokens, attention, response, False, fused, temperature)
    shared = forward_backward(model, tokens, attention, response, True, fused, temperature, cap)
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


def test_a_packed_row_holds_its_prompt_once_then_its_responses_each_seeing_the_prompt_and_itself():
    tokens, attention, response = packed_rows([(3, [2, 1]), (2, [2])])
    layout = pack(tokens, attention, response, cap=64)
    p0, a, b = tokens[0, :3].tolist(), tokens[0, 3:5].tolist(), tokens[1, 3:4].tolist()
    assert layout.ids.tolist()[0] == p0 + a + b and layout.positions.tolist()[0] == [0, 1, 2, 3, 4, 3]
    seen = layout.mask[0, 0].int().tolist()
    assert seen[4] == [1, 1, 1, 1, 1, 0] and seen[5] == [1, 1, 1, 0, 0, 1]  # b sees the prompt and itself, not a
    assert seen[2] == [1, 1, 1, 0, 0, 0]  # the prompt stays causal
    assert layout.ids.tolist()[1][:4] == tokens[2, :4].tolist() and layout.ids[1, 4:].eq(0).all()  # padded at the end


def test_groups_longer_than_the_cap_split_into_packed_rows_each_with_the_prompt():
    # a group of prompt 4 + responses 5, 4, 3, 2: cap 10 holds the prompt with 5 (then 4 fails), then 4 + 3 ...
    units = pack_units(first=[4] * 4, lengths=[9, 8, 7, 6], group=[0] * 4, cap=10)
    assert all(t <= 10 for t in unit_lengths(units, [4] * 4, [9, 8, 7, 6]))
    assert sorted(r for u in units for r in u) == [0, 1, 2, 3] and len(units) == 3
    assert pack_units([4], [30], [0], cap=10) == [[0]]  # a row alone may exceed it


def test_rows_with_distinct_prompts_run_whole_with_the_same_values():
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    tokens, attention, response = packed_rows([(5, [3]), (6, [4]), (4, [2])])
    with torch.no_grad():
        shared, _ = packed_logprobs(model, tokens, attention, targets_mask=response)
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


def test_gradient_checkpointing_packs_prompts_too_with_the_same_gradients():
    batch = grouped_batch()
    grads = []
    for checkpointing in (True, False):
        cfg = resolve_config("grpo-ba", None, ["learner.device=cpu", f"learner.gradient_checkpointing={checkpointing}"])
        learner = Learner(cfg)
        assert learner.share_prompts  # no cache to append to twice: the packed forward recomputes like any other
        learner.accumulate_gradients(batch)
        grads.append([p.grad.clone() for p in learner.params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
