"""rollout.fast_decode: the built-in engine's lean decode step for Llama-family models on a CPU computes what
transformers' forward computes, follows weight loads, and steps aside for models it does not know."""

from __future__ import annotations

import pytest
import torch

from rlft.rollout.builtin import BuiltinEngine
from rlft.rollout.fast_decode import unsupported
from rlft.rollout.types import SamplingParams, generate

PROMPTS = ["12+34=", "7+8=", "100+250=", "a longer prompt that spans blocks: 31+4="]


def _model(kind: str, dtype=torch.float32, tied: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied, eos_token_id=2,
                 pad_token_id=0)
    if kind == "qwen2":  # q/k/v biases
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    elif kind == "llama":  # SmolLM2's family, with llama3 rope scaling and biases on every attention projection
        model = LlamaForCausalLM(LlamaConfig(**shape, attention_bias=True, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                           eos_token_id=2, pad_token_id=0))
    with torch.no_grad():  # random biases: transformers initialises them to zero, which would hide a missing one
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.to(dtype).eval()


def _run(model, tokenizer, fast: bool, params: SamplingParams):
    engine = BuiltinEngine(model, tokenizer, max_slots=6, block_size=4, fast_decode=fast)
    groups = generate(engine, [tokenizer(t)["input_ids"] for t in PROMPTS], params)
    return engine, [c for g in groups for c in g]


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_fast_decode_step_samples_what_transformers_forward_samples(tokenizer, kind, tied, temperature):
    model = _model(kind, tied=tied)
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=20, seed=4)
    fast, got = _run(model, tokenizer, True, params)
    slow, want = _run(model, tokenizer, False, params)
    assert fast.stats()["fast_decode_steps"] == fast.stats()["decode_steps"] > 0
    assert slow.stats()["fast_decode_steps"] == 0
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    for a, b in zip(got, want):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_the_fast_decode_step_over_onednn_packed_fp32_weights_samples_what_transformers_forward_samples(
        tokenizer, monkeypatch, kind):
    # the test models' weights are below the size from which fp32 weights are packed: pack them all, so the
    # packed GEMMs and the residual adds fused into them are the ones compared
    import rlft.rollout.fast_decode as fast_decode

    if not fast_decode._packable(torch.ones(1 << 20, dtype=torch.float32)):
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(fast_decode, "PACK_FP32_MIN_BYTES", 0)
    model = _model(kind, tied=False)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=4)
    fast, got = _run(model, tokenizer, True, params)
    _, want = _run(model, tokenizer, False, params)
    assert all(layer.qkv.packed and layer.o.packed and layer.down.packed for layer in fast.fast.layers)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    for a, b in zip(got, want):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_the_fast_decode_step_in_bfloat16_stays_within_bfloat16_rounding_of_transformers(tokenizer):
    model = _model("qwen2", torch.bfloat16)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=4)
    _, got = _run(model, tokenizer, True, params)
    _, want = _run(model, tokenizer, False, params)
    pairs = [(x, y) for a, b in zip(got, want) for x, y, s, t in zip(a.logprobs, b.logprobs, a.token_ids, b.token_ids)
             if s == t]
    assert len(pairs) > 0.8 * sum(len(c.token_ids) for c in want)  # the same samples, up to a rare rounding flip
    diff = torch.tensor([x - y for x, y in pairs]).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2


def test_the_fast_decode_step_follows_new_weights(tokenizer):
    model = _model("llama")
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=1)
    engine = BuiltinEngine(model, tokenizer, max_slots=6, block_size=4)
    prompts = [tokenizer(t)["input_ids"] for t in PROMPTS]
    before = generate(engine, prompts, params)
    torch.manual_seed(5)
    engine.load_weights({k: v + 0.3 * torch.randn_like(v) for k, v in model.state_dict().items()})
    after = [c.token_ids for g in generate(engine, prompts, params) for c in g]
    reference = [c.token_ids for g in generate(BuiltinEngine(model, tokenizer, max_slots=6, block_size=4,
                                                             fast_decode=False), prompts, params) for c in g]
    assert after == reference != [c.token_ids for g in before for c in g]


def test_models_outside_the_llama_family_decode_through_transformers(tokenizer):
    model = _model("gpt2")
    assert "gpt2" in unsupported(model)
    engine = BuiltinEngine(model, tokenizer, max_slots=6, block_size=4)
    assert engine.fast is None
    generate(engine, [tokenizer(PROMPTS[0])["input_ids"]], SamplingParams(n=2, max_new_tokens=4))
    assert engine.stats()["fast_decode_steps"] == 0 < engine.stats()["decode_steps"]


@pytest.mark.parametrize("flag", [True, False])
def test_rollout_fast_decode_picks_the_rollout_workers_decode_step(flag):
    from rlft.config import resolve_config
    from rlft.pipeline.actors import RolloutWorker

    cfg = resolve_config("grpo-ba", None, [f"rollout.fast_decode={str(flag).lower()}", "ray.torch_threads=1"])
    worker = RolloutWorker(cfg, 0)  # the embedded default model is a Qwen2
    prompts = [worker.tokenizer("12+34=")["input_ids"]]
    *_, (_, stats) = list(worker.stream(prompts, SamplingParams(n=2, max_new_tokens=4, seed=3)))
    assert (stats["fast_decode_steps"] == stats["decode_steps"] > 0) if flag else stats["fast_decode_steps"] == 0
