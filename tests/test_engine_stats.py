"""Engine statistics: what the built-in engine reports through the rollout worker, and how they merge."""

from __future__ import annotations

import math

import pytest

from rlft.config import resolve_config
from rlft.rollout.types import ENGINE_STATS, SamplingParams, merge_engine_stats


def test_merge_adds_counts_keeps_peaks_and_weights_means_by_their_counts():
    a = {"decode_steps": 10.0, "peak_kv_bytes": 300.0, "length_predictions": 3.0, "length_pred_abs_log_error": 0.2}
    b = {"decode_steps": 5.0, "peak_kv_bytes": 100.0, "length_predictions": 1.0, "length_pred_abs_log_error": 0.6}
    merged = merge_engine_stats(a, b)
    assert merged == {"decode_steps": 15.0, "peak_kv_bytes": 300.0, "length_predictions": 4.0,
                      "length_pred_abs_log_error": pytest.approx((3 * 0.2 + 0.6) / 4)}
    assert merge_engine_stats({}, b) == b


def test_rollout_worker_ends_its_stream_with_the_engine_statistics_of_the_call():
    from rlft.pipeline.actors import RolloutWorker

    # 4 prompts x 4 samples over 4 slots, responses up to 40 tokens: lengths are predicted after 4-token probes
    cfg = resolve_config("grpo-ba", None, ["rollout.max_slots=4", "rollout.max_new_tokens=40",
                                           "rollout.length_probe_tokens=4", "ray.torch_threads=1"])
    worker = RolloutWorker(cfg, 0)
    prompts = [worker.tokenizer(f"{i}{i}+{i}=")["input_ids"] for i in range(1, 5)]
    items = list(worker.stream(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=40, seed=3)))
    *batches, (last_index, stats) = items
    groups = [(i, g) for indices, gs in batches for i, g in zip(indices, gs)]  # one message per engine step
    assert sorted(i for i, _ in groups) == [0, 1, 2, 3] and last_index is None
    assert set(stats) <= set(ENGINE_STATS)
    tokens = sum(len(c["token_ids"]) for _, g in groups for c in g)
    assert stats["generated_tokens"] == tokens
    assert stats["decode_steps"] >= (tokens - 16) / 4  # first tokens come from the prefill; then 4 slots per step
    assert stats["probe_tokens"] == 4 and stats["peak_kv_bytes"] > 0
    pairs = worker.engine.length_predictions
    assert stats["length_predictions"] == len(pairs) > 0
    assert stats["length_pred_abs_log_error"] == pytest.approx(
        sum(abs(math.log(p / a)) for p, a in pairs) / len(pairs))


def test_a_key_outside_the_table_is_refused_with_where_to_add_it():
    with pytest.raises(ValueError, match="not in rlft.rollout.types.ENGINE_STATS"):
        merge_engine_stats({}, {"made_up_count": 1.0})
