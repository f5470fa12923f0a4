"""The built-in engine: exact greedy decoding, seeded sampling, continuous refill, shared prefixes,
streaming, and sampling log-probs the learner reproduces."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from rlft.learner.logprobs import token_logprobs
from rlft.rollout.builtin import BuiltinEngine
from rlft.rollout.scheduler import SlotScheduler, simulate
from rlft.rollout.types import SamplingParams, generate

MODES = ["full", "micro", "infinite"]


@pytest.fixture(scope="module")
def lm():
    """(model, tokenizer): the embedded model when it is built, else a random Qwen2 of its shape."""
    from rlft.config import ModelConfig
    from rlft.errors import UserError
    from rlft.models.loading import load_causal_lm, load_tokenizer

    try:
        return load_causal_lm(ModelConfig()).eval(), load_tokenizer(ModelConfig())
    except UserError:
        import importlib.util
        from pathlib import Path

        from transformers import Qwen2Config, Qwen2ForCausalLM

        path = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_model.py"
        spec = importlib.util.spec_from_file_location("make_tiny_model", path)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        tokenizer = script.build_tokenizer()
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=128, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return Qwen2ForCausalLM(config).eval(), tokenizer


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["12+34=", "7+8=", "100+250=", "a longer prompt that spans blocks: 31+4="]
    return [tokenizer(t)["input_ids"] for t in texts]


@pytest.mark.parametrize("mode", MODES)
def test_greedy_tokens_equal_transformers_generate(lm, mode):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    expected = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(out[0, len(p):].tolist())
    engine = BuiltinEngine(model, tokenizer, max_slots=4, scheduling=mode, micro_group_size=2, block_size=4)
    groups = generate(engine, prompts, SamplingParams(n=3, temperature=0.0, max_new_tokens=24))
    for group, tokens in zip(groups, expected):
        assert [c.token_ids for c in group] == [tokens] * 3


def test_greedy_with_eager_attention_matches_sdpa(lm, random_qwen2):
    tokenizer = lm[1]
    prompts = _prompts(tokenizer)
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=12)
    sdpa = generate(BuiltinEngine(random_qwen2, tokenizer, max_slots=4), prompts, params)
    random_qwen2.config._attn_implementation = "eager"
    try:
        eager = generate(BuiltinEngine(random_qwen2, tokenizer, max_slots=4), prompts, params)
    finally:
        random_qwen2.config._attn_implementation = "sdpa"
    assert [[c.token_ids for c in g] for g in sdpa] == [[c.token_ids for c in g] for g in eager]


def test_sampling_is_reproducible_from_the_seed_in_every_mode_and_slot_count(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    params = SamplingParams(n=6, temperature=1.0, top_p=0.95, max_new_tokens=20, seed=7)

    def tokens(**kwargs):
        return [[c.token_ids for c in g] for g in generate(BuiltinEngine(model, tokenizer, **kwargs), prompts, params)]

    reference = tokens(max_slots=24, scheduling="full")
    assert tokens(max_slots=24, scheduling="full") == reference
    assert tokens(max_slots=6, scheduling="micro", micro_group_size=3) == reference
    assert tokens(max_slots=5, scheduling="infinite", probe_tokens=3) == reference
    assert tokens(max_slots=5, scheduling="infinite", probe_tokens=3, kv_budget_tokens=40) == reference
    assert len({tuple(t) for g in reference for t in g}) > len(prompts)  # samples of a group differ
    other_seed = generate(BuiltinEngine(model, tokenizer, max_slots=24), prompts, SamplingParams(**{**vars(params), "seed": 8}))
    assert [[c.token_ids for c in g] for g in other_seed] != reference


def test_splitting_prompts_with_an_index_offset_gives_the_same_samples(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=1)
    engine = BuiltinEngine(model, tokenizer, max_slots=8)
    whole = generate(engine, prompts, params)
    tail = generate(engine, prompts[2:], SamplingParams(**{**vars(params), "prompt_index_offset": 2}))
    assert [[c.token_ids for c in g] for g in whole[2:]] == [[c.token_ids for c in g] for g in tail]


def _eos_bias(eos: int, bias: float):
    """Logits processor that makes EOS likelier, so a random model's lengths spread (mean ~1/p(EOS))."""

    def process(prompts, generated, logits):
        logits = logits.clone()
        logits[:, eos] += bias
        return logits

    return process


@pytest.mark.parametrize("mode", MODES)
def test_continuous_refill_follows_the_scheduler_step_for_step(lm, mode):
    """The engine's decode steps equal the scheduler's simulation on the lengths the engine produced."""
    model, tokenizer = lm
    prompts = _prompts(tokenizer) * 2
    engine = BuiltinEngine(model, tokenizer, max_slots=5, scheduling=mode, micro_group_size=2, probe_tokens=3,
                           logits_processor=_eos_bias(tokenizer.eos_token_id, 3.0))

    def predicted(g, j):  # a fixed stand-in for the learned predictor, so the simulation can replay it
        return float((7 * g + 3 * j) % 11 + 1)

    engine._predict = lambda sample, params: predicted(sample.group.index, sample.index)
    groups = generate(engine, prompts, SamplingParams(n=5, temperature=1.0, max_new_tokens=30, seed=2))
    lengths = [[len(c.token_ids) for c in g] for g in groups]
    assert len({n for row in lengths for n in row}) > 4  # the workload has spread
    scheduler = SlotScheduler(mode, 5, len(prompts), 5, 2, engine.stats()["probe_tokens"], predicted)
    assert engine.stats()["decode_steps"] == simulate(scheduler, lengths)["decode_steps"]
    if mode == "infinite":
        assert engine.stats()["probe_tokens"] == 3


def test_samples_share_their_prompt_blocks(lm):
    """Peak KV of G samples = one copy of the prompt + G response tails, not G prompts."""
    model, tokenizer = lm
    prompt = tokenizer("x" * 63)["input_ids"]  # 64 tokens with BOS: 4 blocks of 16
    engine = BuiltinEngine(model, tokenizer, max_slots=8, block_size=16,
                           logits_processor=lambda p, g, x: _no_eos(x, tokenizer.eos_token_id))
    generate(engine, [prompt], SamplingParams(n=8, temperature=1.0, max_new_tokens=17))
    # 16 of the 17 response tokens are fed back (the last one never is): one own block per sample
    assert engine.stats()["peak_kv_bytes"] == (4 + 8) * engine.stats()["kv_block_bytes"]


@pytest.mark.parametrize("mode", MODES)
def test_reserved_kv_is_open_prompts_parked_probes_and_a_longest_response_per_slot(lm, mode):
    """`reserved_kv_blocks`: what a run without preemption must allocate. Full-group with one group of 8 in
    8 slots: the prompt's 4 blocks + 8 x ceil(39 / 16) = 3 blocks, whatever the samples' real lengths;
    micro / infinite with 2 slots reserve 2 slots' worth and never less than what was live."""
    model, tokenizer = lm
    prompt = tokenizer("x" * 63)["input_ids"]  # 64 tokens: 4 blocks of 16
    slots = 8 if mode == "full" else 2
    engine = BuiltinEngine(model, tokenizer, max_slots=slots, scheduling=mode, micro_group_size=2, probe_tokens=3,
                           block_size=16, logits_processor=lambda p, g, x: _eos_at(x, g, tokenizer.eos_token_id, 11))
    groups = generate(engine, [prompt], SamplingParams(n=8, temperature=1.0, max_new_tokens=40, seed=1))
    assert {len(c.token_ids) for c in groups[0]} == {11}  # the reservation is for max_new_tokens, not the lengths
    stats = engine.stats()
    if mode == "infinite":  # all 8 probes (3 tokens: one block each) park before any sample continues
        assert stats["reserved_kv_blocks"] == 4 + 8 + 2 * 3
    else:
        assert stats["reserved_kv_blocks"] == 4 + slots * 3
        assert stats["peak_kv_bytes"] == (4 + slots) * stats["kv_block_bytes"]  # 10 tokens fed: one block each
    assert stats["reserved_kv_bytes"] == stats["reserved_kv_blocks"] * stats["kv_block_bytes"]
    assert stats["reserved_kv_bytes"] >= stats["peak_kv_bytes"]


def test_groups_stream_out_as_their_last_sample_ends(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    long_prompt = tuple(prompts[0])

    def lengths(prompts_, generated, logits):  # group 0 runs to the cap, the others end after 2 tokens
        logits = _no_eos(logits, tokenizer.eos_token_id)
        for row, (p, g) in enumerate(zip(prompts_, generated)):
            if tuple(p) != long_prompt and len(g) >= 1:
                logits[row, tokenizer.eos_token_id] = 1e4
        return logits

    engine = BuiltinEngine(model, tokenizer, max_slots=16, logits_processor=lengths)
    order = [i for i, _ in engine.generate_groups(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=20))]
    assert order[-1] == 0 and sorted(order) == [0, 1, 2, 3]


def test_groups_that_end_in_the_same_engine_step_come_in_one_batch(lm):
    """generate_group_batches: a list per engine step (a rollout worker sends it as one Ray message)."""
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    engine = BuiltinEngine(model, tokenizer, max_slots=64)
    one_token = SamplingParams(n=3, temperature=1.0, max_new_tokens=1, seed=2)  # every sample ends at its prefill
    batches = list(engine.generate_group_batches(prompts, one_token))
    assert len(batches) == 1 and sorted(i for i, _ in batches[0]) == list(range(len(prompts)))
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=2)
    batched = {i: [c.token_ids for c in g] for batch in engine.generate_group_batches(prompts, params) for i, g in batch}
    assert batched == {i: [c.token_ids for c in g] for i, g in engine.generate_groups(prompts, params)}


@pytest.mark.parametrize("mode", MODES)
def test_sampling_logprobs_match_the_learner_recomputation(lm, mode):
    """Engine log-probs vs rlft.learner.logprobs.token_logprobs on the same weights: |diff| < 1e-4 (float32)."""
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=5)
    engine = BuiltinEngine(model, tokenizer, max_slots=4, scheduling=mode, micro_group_size=2, probe_tokens=3)
    for prompt, group in zip(prompts, generate(engine, prompts, params)):
        for c in group:
            tokens = torch.tensor([prompt + c.token_ids])
            logprobs, _ = token_logprobs(model, tokens, torch.ones_like(tokens), temperature=params.temperature)
            recomputed = logprobs[0, len(prompt):]
            assert torch.allclose(recomputed, torch.tensor(c.logprobs), atol=1e-4, rtol=0)


def test_an_abandoned_call_leaves_no_kv_blocks_behind(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=4)
    engine = BuiltinEngine(model, tokenizer, max_slots=2)
    next(iter(engine.generate_groups(prompts, params)))  # the consumer stops after the first group
    generate(engine, prompts, params)
    fresh = BuiltinEngine(model, tokenizer, max_slots=2)
    generate(fresh, prompts, params)
    assert engine.stats()["peak_kv_bytes"] == fresh.stats()["peak_kv_bytes"]
    assert engine.cache.blocks_in_use == 0


def test_full_sampling_needs_a_group_worth_of_slots(lm):
    from rlft.errors import UserError

    model, tokenizer = lm
    engine = BuiltinEngine(model, tokenizer, max_slots=2, scheduling="full")
    with pytest.raises(UserError, match="max_slots"):
        generate(engine, _prompts(tokenizer), SamplingParams(n=4))


def _eos_at(logits, generated, eos, length):
    """EOS forced as token `length` of every row, never before."""
    logits = _no_eos(logits, eos)
    for row, g in enumerate(generated):
        if len(g) + 1 >= length:
            logits[row] = float("-inf")
            logits[row, eos] = 0.0
    return logits


def _no_eos(logits, eos):
    logits = logits.clone()
    logits[:, eos] = float("-inf")
    return logits


class _CacheNamedModel(torch.nn.Module):
    """`inner` behind a forward that takes the KV cache only as `cache` (the newer transformers' name)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.inner_arg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, paged_cache=None,
                logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, paged_cache=paged_cache, logits_to_keep=logits_to_keep,
                          **{self.inner_arg: cache})


def test_the_cache_goes_under_the_name_the_model_forward_takes_and_nothing_is_deprecated(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")  # transformers' deprecation of the old name
        warnings.filterwarnings("error", category=FutureWarning)
        engine = BuiltinEngine(model, tokenizer, max_slots=4)
        want = generate(engine, prompts, params)
        renamed = BuiltinEngine(_CacheNamedModel(model), tokenizer, max_slots=4)
        got = generate(renamed, prompts, params)
    assert renamed.cache_arg == "cache"
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
