"""optim.zo_offload (ZO2, docs/methods.md#zeroth-order-update): the block schedule and the deferred update, on CPU (no GPU here)."""

from __future__ import annotations

import copy

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.optim.zo import ZerothOrder, perturbed
from rlft.optim.zo2 import ZO2Offload, block_schedule

TOKENS = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))


def test_zo2_schedule_uploads_next_block_while_computing_and_offloads_previous():
    n = 4
    ticks = block_schedule(n)
    when = {event: t for t, tick in enumerate(ticks) for event in tick}
    for i in range(n):
        assert when[("upload", i)] < when[("compute", i)] < when[("offload", i)]
        if i + 1 < n:
            assert when[("upload", i + 1)] == when[("compute", i)]  # the next block uploads during this compute
        if i >= 1:
            assert when[("offload", i - 1)] == when[("compute", i)]  # the previous block leaves during it
    assert all(len({op for op, _ in tick}) == len(tick) for tick in ticks)  # one operation per stream per tick
    assert sorted(when) == sorted((op, i) for op in ("upload", "compute", "offload") for i in range(n))


def _model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def _loss_of_hidden(model):
    decoder = model.get_decoder()

    def loss(hidden: torch.Tensor) -> float:
        logits = model.get_output_embeddings()(decoder.norm(hidden))[:, :-1]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), TOKENS[:, 1:].flatten()).item()

    return loss


def _resident_loss(model, opt):
    """The same blockwise forward as ZO2's (causal attention, no padding mask), all weights resident."""
    decoder = model.get_decoder()
    positions = torch.arange(TOKENS.shape[1])[None].expand_as(TOKENS)

    def loss_at(perturb) -> float:
        with perturbed(model, opt.index, perturb):
            hidden = decoder.embed_tokens(TOKENS)
            rope = decoder.rotary_emb(hidden, positions)
            for block in decoder.layers:
                hidden = block(hidden, attention_mask=None, position_ids=positions, position_embeddings=rope)
            return _loss_of_hidden(model)(hidden)

    return loss_at


def test_zo2_offloaded_steps_with_deferred_update_equal_resident_steps():
    resident, offloaded = _model(), _model()
    settings = dict(lr=1e-2, eps=1e-3, weight_decay=0.1, perturbations=2, seed=3)
    opt_r, opt_o = ZerothOrder(resident.parameters(), **settings), ZerothOrder(offloaded.parameters(), **settings)
    zo2 = ZO2Offload(offloaded, opt_o, torch.device("cpu"))
    history = []
    for _ in range(3):
        history.append(copy.deepcopy(resident.state_dict()))
        with torch.no_grad():
            stats_r = opt_r.step(_resident_loss(resident, opt_r))
        stats_o = zo2.step(TOKENS, _loss_of_hidden(offloaded))
        assert stats_o == stats_r  # same losses at the same perturbed weights
    # between steps the blocks on the CPU are one update behind; the device parts are current
    behind = offloaded.state_dict()
    for key, value in behind.items():
        expected = (history[-1] if key.startswith("model.layers.") else resident.state_dict())[key]
        assert torch.equal(value, expected), key
    zo2.flush()
    for (key, a), b in zip(resident.state_dict().items(), offloaded.state_dict().values()):
        assert torch.equal(a, b), key
    # every step walks the blocks in schedule order, each block crossing once
    per_step = [event for tick in block_schedule(3) for event in tick]
    assert zo2.events == per_step * 3


def test_zo2_learner_step_matches_resident_zo_step_and_needs_zo():
    import pytest

    from rlft.config import resolve_config
    from rlft.errors import ConfigError
    from rlft.learner.learner import Learner
    from test_optim_zo import ZO, _batch

    torch.set_num_threads(1)
    resident = Learner(resolve_config("grpo-ba", None, ZO))
    offloaded = Learner(resolve_config("grpo-ba", None, [*ZO, "optim.zo_offload=true"]))
    batch = _batch(resident.cfg.algo)
    m_r, m_o = resident.train_step(batch), offloaded.train_step(batch)
    # same perturbations; the losses differ only by the attention kernel (causal vs padding mask) rounding
    assert m_o["learner/zo/projected_grad_mean"] == pytest.approx(m_r["learner/zo/projected_grad_mean"], rel=1e-2)
    for (key, a), b in zip(resident.state_dict().items(), offloaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="set optim.name=zo"):
        resolve_config("grpo-ba", None, ["optim.zo_offload=true"])
