"""The fused (vocabulary-chunked) log-prob equals the plain logits path, values and gradients."""

import importlib
import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.learner import fused_logprob
from rlft.learner.fused_logprob import fused_token_logprobs


def _plain(hidden, weight, targets, temperature):
    """The plain path: full [N, V] fp32 logits, log-softmax, gather; entropy from the softmax."""
    logits = (hidden @ weight.T).float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    log_z = torch.logsumexp(logits, dim=-1)
    entropy = log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logits.gather(1, targets[:, None]).squeeze(1) - log_z, entropy


def _inputs(n=24, h=16, v=300, dtype=torch.float32):
    torch.manual_seed(0)
    hidden = torch.randn(n, h, dtype=dtype, requires_grad=True)
    weight = (torch.randn(v, h, dtype=dtype) / 2).requires_grad_()
    return hidden, weight, torch.randint(0, v, (n,))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fused_logprob_and_entropy_equal_plain_path_with_gradients(temperature):
    hidden, weight, targets = _inputs()
    g_lp, g_ent = torch.randn(24), torch.randn(24)
    lp, ent = _plain(hidden, weight, targets, temperature)
    want = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), (hidden, weight))
    flp, fent = fused_token_logprobs(hidden, weight, targets, temperature, chunk_size=64, with_entropy=True)
    assert flp.dtype == torch.float32 and flp.shape == (24,)
    got = torch.autograd.grad((flp * g_lp).sum() + (fent * g_ent).sum(), (hidden, weight))
    assert torch.allclose(flp, lp, atol=1e-5) and torch.allclose(fent, ent, atol=1e-5)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


def test_fused_logprob_passes_gradcheck_in_float64():
    hidden, weight, targets = _inputs(n=5, h=4, v=23, dtype=torch.float64)

    def fn(h, w):
        lp, ent = fused_token_logprobs(h, w, targets, 0.8, chunk_size=7, with_entropy=True)
        return lp, ent

    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_fused_logprob_does_not_depend_on_chunk_size():
    hidden, weight, targets = _inputs()
    outs = [fused_token_logprobs(hidden, weight, targets, 1.0, chunk_size=c, with_entropy=True) for c in (1, 37, 300, 4096)]
    for lp, ent in outs[1:]:
        assert torch.allclose(lp, outs[0][0], atol=1e-5) and torch.allclose(ent, outs[0][1], atol=1e-5)


def test_fused_logprob_without_entropy_returns_none_and_temperature_zero_means_one():
    hidden, weight, targets = _inputs()
    lp0, ent = fused_token_logprobs(hidden, weight, targets, 0.0, chunk_size=64)
    lp1, _ = fused_token_logprobs(hidden, weight, targets, 1.0, chunk_size=64)
    assert ent is None and torch.equal(lp0, lp1)
    lp0.sum().backward()  # only the log-prob gradient flows
    assert hidden.grad is not None and weight.grad is not None


def test_fused_logprob_from_a_models_hidden_states_equals_its_logits():
    """What the learner does with learner.logprobs='fused': last hidden states and the (tied) LM head."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    tokens = torch.randint(0, 96, (3, 9))
    hidden = model.model(input_ids=tokens).last_hidden_state[:, :-1].reshape(-1, 32)
    targets = tokens[:, 1:].reshape(-1)
    lp, _ = fused_token_logprobs(hidden, model.get_output_embeddings().weight, targets, 1.0, chunk_size=40)
    logits = model(input_ids=tokens).logits[:, :-1].float()
    want = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1).reshape(-1)
    assert torch.allclose(lp, want, atol=1e-5)
    lp.sum().backward()
    assert model.model.embed_tokens.weight.grad is not None  # through the head and the embedding


def test_fused_logprob_works_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    module = importlib.reload(fused_logprob)
    try:
        assert not module.HAS_TRITON
        hidden, weight, targets = _inputs()
        lp, _ = module.fused_token_logprobs(hidden, weight, targets, 1.0, 64)
        assert torch.allclose(lp, _plain(hidden, weight, targets, 1.0)[0], atol=1e-5)
        import rlft.optim.kernels as kernels

        assert not importlib.reload(kernels).HAS_TRITON
    finally:
        monkeypatch.undo()
        importlib.reload(fused_logprob)
        importlib.reload(sys.modules["rlft.optim.kernels"])
