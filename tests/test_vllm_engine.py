"""The vLLM engine's own logic, with vllm absent: clear errors, engine arguments, weight names, seeded
per-sample requests, probes and length-aware priorities (a stand-in plays vLLM's LLMEngine)."""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from rlft.config import ModelConfig, RolloutConfig, resolve_config
from rlft.errors import ConfigError, UserError
from rlft.rollout import vllm_engine
from rlft.rollout.sampling import sample_key
from rlft.rollout.types import SamplingParams
from rlft.rollout.vllm_engine import (PROBE_PRIORITY, VLLMEngine, engine_kwargs, priority, vllm_weights,
                                      weight_buckets)


def _pretend_vllm_is_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))


def test_choosing_vllm_without_the_package_fails_at_config_time(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"rollout.engine.*pip install 'rlft\[vllm\]'"):
        resolve_config(overrides=["rollout.engine=vllm"])


def test_vllm_engine_without_a_gpu_says_so(monkeypatch):
    _pretend_vllm_is_installed(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        VLLMEngine(ModelConfig(path="/not/needed"), RolloutConfig(engine="vllm"))


def test_engine_arguments_follow_the_rollout_config(monkeypatch):
    _pretend_vllm_is_installed(monkeypatch)
    kwargs = engine_kwargs(ModelConfig(path="some/model", dtype="bfloat16"),
                           RolloutConfig(engine="vllm", scheduling="infinite", max_slots=8, gpu_memory_utilization=0.3))
    assert kwargs["model"] == "some/model" and kwargs["dtype"] == "bfloat16"
    assert kwargs["max_num_seqs"] == 8 and kwargs["gpu_memory_utilization"] == 0.3
    assert kwargs["enable_prefix_caching"] and kwargs["scheduling_policy"] == "priority"
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    assert engine_kwargs(ModelConfig(path="m"), RolloutConfig(scheduling="full"))["scheduling_policy"] == "fcfs"


def test_learner_weight_names_map_to_vllm_names():
    w = torch.zeros(2, 2)
    state = {"module.model.embed_tokens.weight": w, "_orig_mod.model.layers.0.mlp.up_proj.weight": w,
             "lm_head.weight": w, "model.layers.0.self_attn.q_proj.lora_A.weight": w}
    assert [n for n, _ in vllm_weights(state, tied_embeddings=True)] == [
        "model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"]
    assert "lm_head.weight" in [n for n, _ in vllm_weights(state, tied_embeddings=False)]


def test_weights_travel_in_bounded_buckets():
    weights = [(f"w{i}", torch.zeros(256)) for i in range(5)]  # 1 KiB each
    buckets = weight_buckets(weights, limit=2048)
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert [[n for n, _ in b] for b in weight_buckets([("big", torch.zeros(4096))], limit=1024)] == [["big"]]


def test_priorities_run_older_groups_first_then_longer_samples():
    assert priority(0, 900, 1024) < priority(0, 100, 1024) < priority(1, 1000, 1024)
    assert PROBE_PRIORITY < priority(0, 1024, 1024)


class FakeLLMEngine:
    """vLLM's LLMEngine interface: runs the lowest-priority-value request (FIFO on ties) to its end per step.
    Sample (g, j) would generate `lengths[g][j]` tokens in all (token t = 10 + t, log-prob -0.25 each)."""

    def __init__(self, lengths):
        self.lengths, self.waiting, self.added, self.arrivals = lengths, [], [], 0
        self.model_config = SimpleNamespace(hf_config=SimpleNamespace(tie_word_embeddings=True))

    def add_request(self, request_id, prompt, params, priority=0):
        self.waiting.append((priority, self.arrivals, request_id, prompt, params))
        self.added.append((request_id, prompt["prompt_token_ids"], params, priority))
        self.arrivals += 1

    def has_unfinished_requests(self):
        return bool(self.waiting)

    def step(self):
        self.waiting.sort(key=lambda r: r[:2])
        _, _, request_id, prompt, params = self.waiting.pop(0)
        g, j, done = map(int, request_id.split("-"))
        n = min(params["max_tokens"], self.lengths[g][j] - done)
        tokens = [10 + done + t for t in range(n)]
        result = SimpleNamespace(token_ids=tokens, logprobs=[{t: SimpleNamespace(logprob=-0.25)} for t in tokens],
                                 finish_reason="stop" if done + n == self.lengths[g][j] else "length")
        return [SimpleNamespace(request_id=request_id, finished=True, outputs=[result])]


class FakeLLM:
    def __init__(self, lengths):
        self.llm_engine = FakeLLMEngine(lengths)
        self.rpc, self.resets = [], 0

    def get_tokenizer(self):
        return SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))

    def collective_rpc(self, method, args=()):
        self.rpc.append((method, args))

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A `vllm` module with the two names the engine imports while generating."""
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kwargs: kwargs
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = SimpleNamespace(FINAL_ONLY="final_only")
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)


def test_infinite_requests_probe_first_then_continue_by_predicted_length(fake_vllm):
    lengths = [[3, 40, 25], [30, 2, 50]]
    llm = FakeLLM(lengths)
    cfg = RolloutConfig(scheduling="infinite", length_probe_tokens=4, max_slots=2)
    engine = VLLMEngine(ModelConfig(), cfg, llm=llm)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=64, seed=7, prompt_index_offset=10)
    prompts = [[1, 2], [1, 3, 4]]
    order = [index for index, _ in engine.generate_groups(prompts, params)]
    added = llm.llm_engine.added
    first = [a for a in added if a[0].endswith("-0")]
    assert [p for *_, p in first] == [PROBE_PRIORITY] * 6  # every sample probes first
    assert [a[2]["seed"] for a in first] == [sample_key(7, 10 + g, j) for g in range(2) for j in range(3)]
    assert all(a[2]["max_tokens"] == 4 and a[2]["n"] == 1 and a[2]["logprobs"] == 0 for a in first)
    continued = {a[0]: a for a in added if not a[0].endswith("-0")}
    assert set(continued) == {"0-1-4", "0-2-4", "1-0-4", "1-2-4"}  # samples longer than the probe
    assert continued["1-2-4"][1] == [1, 3, 4, 10, 11, 12, 13]  # prompt + probe tokens
    assert continued["1-2-4"][2]["max_tokens"] == 60
    assert sorted(order) == [0, 1]


def test_infinite_groups_complete_with_probe_and_continuation_joined(fake_vllm):
    lengths = [[3, 9]]
    engine = VLLMEngine(ModelConfig(), RolloutConfig(scheduling="infinite", length_probe_tokens=4), llm=FakeLLM(lengths))
    [(index, group)] = list(engine.generate_groups([[5]], SamplingParams(n=2, max_new_tokens=64)))
    assert index == 0
    assert [c.token_ids for c in group] == [[10, 11, 12], list(range(10, 19))]
    assert [c.finish_reason for c in group] == ["stop", "stop"]
    assert group[1].logprobs == [-0.25] * 9


def test_full_sampling_submits_every_sample_once_without_priorities(fake_vllm):
    llm = FakeLLM([[5, 70]])
    engine = VLLMEngine(ModelConfig(), RolloutConfig(scheduling="full"), llm=llm)
    [(_, group)] = list(engine.generate_groups([[5]], SamplingParams(n=2, max_new_tokens=64)))
    assert [a[0] for a in llm.llm_engine.added] == ["0-0-0", "0-1-0"]
    assert [c.finish_reason for c in group] == ["stop", "length"] and len(group[1].token_ids) == 64


def test_loading_weights_reaches_every_worker_and_drops_the_prefix_cache(fake_vllm):
    llm = FakeLLM([[1]])
    engine = VLLMEngine(ModelConfig(), RolloutConfig(), llm=llm)
    engine.load_weights({"model.norm.weight": torch.ones(4), "lm_head.weight": torch.ones(4)})
    [(method, (bucket,))] = llm.rpc
    assert method is vllm_engine._load_weights and [n for n, _ in bucket] == ["model.norm.weight"]
    assert llm.resets == 1
