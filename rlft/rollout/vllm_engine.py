"""The vLLM engine behind the RolloutEngine interface (CUDA; optional extra: pip install 'rlft[vllm]').

Every sample is its own vLLM request (n=1) seeded from (seed, prompt, sample) as in the built-in
engine, so results do not depend on batching; automatic prefix caching computes a group's prompt
once. `max_num_seqs` = rollout.max_slots bounds the concurrent sequences (set it to g for the
paper's micro-group memory bound). vLLM always batches continuously; 'infinite' adds what
Infinite-Sampling needs on top of it: each sample first decodes `length_probe_tokens` tokens as
a probe at top priority, then continues (prompt + probe, cached) with a vLLM priority from the
length predictor: oldest group first, longest predicted first (lower value runs earlier).

Log-probs are vLLM's 'processed_logprobs': the temperature-scaled distribution, as the learner
recomputes them. With top_p < 1, vLLM renormalises over the kept tokens, so they differ from the
learner's by log(kept mass); rlft's built-in engine reports the untruncated value.
"""

from __future__ import annotations

import importlib.util
from typing import Iterator

import torch

from rlft.errors import UserError
from rlft.rollout.length_predictor import GroupLengths, LengthPredictor, prediction_stats
from rlft.rollout.sampling import sample_key
from rlft.rollout.types import Completion, SamplingParams

PROBE_PRIORITY = -(2**31)  # probes run before any continuation: they are the shortest jobs
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")  # DDP/DeepSpeed, torch.compile, PEFT
_BUCKET_BYTES = 512 * 2**20


def check_vllm_available() -> None:
    """A UserError that says what to do when vllm or a CUDA GPU is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError("rollout.engine=vllm needs the vllm package: pip install 'rlft[vllm]' on a machine with a "
                        "CUDA GPU (or use rollout.engine=builtin)")
    if not torch.cuda.is_available():
        raise UserError("rollout.engine=vllm needs a CUDA GPU and none is visible (use rollout.engine=builtin)")


def engine_kwargs(model_cfg, rollout_cfg) -> dict:
    """Keyword arguments of vllm.LLM for this run."""
    from rlft.models.loading import resolve_model_path

    return {
        "model": resolve_model_path(model_cfg.path),
        "dtype": model_cfg.dtype,
        "trust_remote_code": model_cfg.trust_remote_code,
        "gpu_memory_utilization": rollout_cfg.gpu_memory_utilization,
        "max_num_seqs": rollout_cfg.max_slots,
        "enable_prefix_caching": True,
        "scheduling_policy": "priority" if rollout_cfg.scheduling == "infinite" else "fcfs",
        "enable_sleep_mode": True,  # colocated runs free the GPU for the learner between rollouts
        "logprobs_mode": "processed_logprobs",
    }


def vllm_weights(state: dict[str, torch.Tensor], tied_embeddings: bool) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs that vLLM's model.load_weights takes from the learner's state dict: wrapper
    prefixes stripped, adapter tensors dropped, and lm_head dropped when it is tied to the embeddings."""
    out = []
    for name, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if "lora_" in name or (tied_embeddings and name == "lm_head.weight"):
            continue
        out.append((name, tensor))
    return out


def weight_buckets(weights: list[tuple[str, torch.Tensor]], limit: int = _BUCKET_BYTES) -> list[list]:
    """Consecutive runs of `weights` of at most `limit` bytes each (a larger tensor travels alone)."""
    buckets, current, size = [], [], 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            buckets.append(current)
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    return buckets + ([current] if current else [])


def _load_weights(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs on every vLLM worker through collective_rpc."""
    worker.model_runner.model.load_weights(weights=weights)


def request_params(params: SamplingParams, max_tokens: int, seed: int) -> dict:
    """Keyword arguments of vllm.SamplingParams for one sample's request."""
    return {
        "n": 1, "temperature": params.temperature, "top_p": params.top_p, "max_tokens": max_tokens,
        "stop": list(params.stop), "include_stop_str_in_output": True, "seed": seed, "logprobs": 0,
        "skip_special_tokens": True,
    }


def priority(group_rank: int, predicted_tokens: float, max_new_tokens: int) -> int:
    """vLLM priority of a continuation (lower runs earlier): oldest group first, then longest predicted."""
    return group_rank * (max_new_tokens + 1) - int(round(min(predicted_tokens, max_new_tokens)))


class _Sample:
    __slots__ = ("group", "index", "key", "tokens", "logprobs", "finish", "features", "predicted")

    def __init__(self, group: int, index: int, key: int):
        self.group, self.index, self.key = group, index, key
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish: str | None = None
        self.features = None
        self.predicted: float | None = None


class VLLMEngine:
    """Generates groups with vLLM; `llm` may be given (tests pass a stand-in with vLLM's interface)."""

    def __init__(self, model_cfg, rollout_cfg, llm=None):
        if llm is None:
            check_vllm_available()
            from vllm import LLM

            llm = LLM(**engine_kwargs(model_cfg, rollout_cfg))
        self.llm = llm
        self.rollout_cfg = rollout_cfg
        hf_config = getattr(getattr(llm.llm_engine, "model_config", None), "hf_config", None)
        self.tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.predictor = LengthPredictor()
        self.counters: dict[str, float] = {}
        self.length_predictions: list[tuple[float, int]] = []  # (predicted, actual) of the last call

    def stats(self) -> dict[str, float]:
        """The last call's statistics (rlft.rollout.types.ENGINE_STATS); a vLLM engine step also runs the
        prefill chunks it schedules, and counts as one decode step."""
        return {**{k: float(v) for k, v in self.counters.items()}, **prediction_stats(self.length_predictions)}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """New weights into every vLLM worker; the prefix cache is dropped (it holds KV of the old weights)."""
        for bucket in weight_buckets(vllm_weights(state, self.tied_embeddings)):
            self.llm.collective_rpc(_load_weights, args=(bucket,))
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """Free the GPU for a colocated learner (level 1 keeps the weights in CPU memory)."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def generate_groups(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) as each group's last request finishes."""
        from vllm import SamplingParams as VLLMParams
        from vllm.sampling_params import RequestOutputKind

        r = self.rollout_cfg
        infinite = r.scheduling == "infinite"
        probe = r.length_probe_tokens if infinite and params.max_new_tokens > 2 * r.length_probe_tokens else 0
        offset = params.prompt_index_offset
        samples = [[_Sample(i, j, sample_key(params.seed, offset + i, j)) for j in range(params.n)]
                   for i in range(len(prompts))]
        lengths = [GroupLengths(self.predictor.prompt_features(p)) for p in prompts] if infinite else None
        unfinished = [params.n] * len(prompts)
        engine = self.llm.llm_engine
        self.counters = {"decode_steps": 0, "generated_tokens": 0, "probe_tokens": probe}
        self.length_predictions = []

        def submit(s: _Sample, first: bool) -> None:
            if first:
                budget = probe or params.max_new_tokens
                rank = PROBE_PRIORITY if probe else (
                    priority(s.group, self._predict(s, lengths[s.group], params), params.max_new_tokens) if infinite
                    else 0)
                seed = s.key
            else:  # the continuation of a probe: prompt + probe tokens, mostly served from the prefix cache
                budget = params.max_new_tokens - len(s.tokens)
                rank = priority(s.group, self._predict(s, lengths[s.group], params), params.max_new_tokens)
                seed = sample_key(s.key, len(s.tokens), 0)
            request = {"prompt_token_ids": prompts[s.group] + s.tokens}
            kwargs = {"priority": rank} if infinite else {}
            vllm_params = VLLMParams(**request_params(params, budget, seed), output_kind=RequestOutputKind.FINAL_ONLY)
            engine.add_request(f"{s.group}-{s.index}-{len(s.tokens)}", request, vllm_params, **kwargs)

        for group in samples:
            for s in group:
                submit(s, first=True)
        while engine.has_unfinished_requests():
            self.counters["decode_steps"] += 1
            for output in engine.step():
                if not output.finished:
                    continue
                group, index, _ = map(int, output.request_id.split("-"))
                s = samples[group][index]
                result = output.outputs[0]
                s.tokens += list(result.token_ids)
                s.logprobs += _sampled_logprobs(result)
                if probe and result.finish_reason == "length" and len(s.tokens) < params.max_new_tokens:
                    s.features = self.predictor.sample_features(s.tokens, s.logprobs)
                    lengths[group].probed.append(s.features)
                    submit(s, first=False)
                    continue
                s.finish = "length" if result.finish_reason == "length" else "stop"
                self.counters["generated_tokens"] += len(s.tokens)
                unfinished[group] -= 1
                if infinite:
                    self.predictor.finished(lengths[group], s.features, len(s.tokens))
                    if s.predicted is not None:
                        self.length_predictions.append((s.predicted, len(s.tokens)))
                if unfinished[group] == 0:
                    if infinite:
                        self.predictor.learn(lengths[group])
                    yield group, [self._completion(c) for c in samples[group]]

    def _predict(self, s: _Sample, group: GroupLengths, params: SamplingParams) -> float:
        s.predicted = self.predictor.predict(group, s.features, params.max_new_tokens)
        return s.predicted

    def _completion(self, s: _Sample) -> Completion:
        tokenizer = self.llm.get_tokenizer()
        return Completion(prompt_index=s.group, token_ids=s.tokens, logprobs=s.logprobs,
                          text=tokenizer.decode(s.tokens, skip_special_tokens=True), finish_reason=s.finish)


def _sampled_logprobs(result) -> list[float]:
    """The log-prob of each sampled token from a vLLM CompletionOutput (logprobs=0 asks for just those)."""
    return [float(entry[token].logprob) for token, entry in zip(result.token_ids, result.logprobs)]
