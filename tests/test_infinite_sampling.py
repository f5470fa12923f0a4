"""Infinite-Sampling scheduling on known lengths (no model): plan quality, continuous refill, micro rounds,
probes, bounded admission, and the online length predictor."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from rlft.rollout.length_predictor import GroupLengths, LengthPredictor
from rlft.rollout.scheduler import SlotScheduler, lpt_makespan, simulate


def _optimum(lengths: list[float], slots: int) -> float:
    best = math.inf
    for assignment in itertools.product(range(slots), repeat=len(lengths)):
        loads = [0.0] * slots
        for length, s in zip(lengths, assignment):
            loads[s] += length
        best = min(best, max(loads))
    return best


def test_lpt_plan_is_within_grahams_bound_of_the_brute_force_optimum():
    rng = random.Random(0)
    ratios = []
    for _ in range(200):
        slots, n = rng.randint(2, 3), rng.randint(2, 7)
        lengths = [rng.randint(1, 100) for _ in range(n)]
        ratio = lpt_makespan(lengths, [0.0] * slots) / _optimum(lengths, slots)
        assert ratio <= 4 / 3 - 1 / (3 * slots) + 1e-9
        ratios.append(ratio)
    assert sum(ratios) / len(ratios) < 1.03  # and usually optimal


def test_lpt_plan_accounts_for_the_slots_current_loads():
    assert lpt_makespan([5, 5], [10.0, 0.0, 0.0]) == 10.0
    assert lpt_makespan([8, 4], [6.0, 0.0]) == 10.0


def _workload(groups: int, size: int, seed: int = 0) -> list[list[int]]:
    """Lengths 16..1024 tokens: a per-prompt scale (log-uniform) times a per-sample spread."""
    rng = random.Random(seed)
    rows = []
    for _ in range(groups):
        scale = math.exp(rng.uniform(math.log(24), math.log(600)))
        rows.append([int(min(1024, max(16, scale * math.exp(rng.gauss(0, 0.6))))) for _ in range(size)])
    return rows


def test_micro_rounds_wait_for_their_longest_sample():
    lengths = [[2, 9, 4, 4]]
    result = simulate(SlotScheduler("micro", 2, 1, 4, 2), lengths)
    assert result["decode_steps"] == (9 - 1) + (4 - 1)  # two rounds; a first token needs no decode step


def test_full_groups_hold_their_slots_until_the_group_ends():
    lengths = [[3, 10], [3, 3]]
    result = simulate(SlotScheduler("full", 2, 2, 2, 2), lengths)
    assert result["decode_steps"] == 9 + 2
    assert result["group_completed_at"] == [9, 11]


def test_infinite_refills_every_freed_slot_at_once():
    lengths = _workload(4, 32, seed=1)
    slots = 8
    result = simulate(SlotScheduler("infinite", slots, 4, 32, 8), lengths)
    work = sum(n - 1 for row in lengths for n in row)
    # list scheduling: no slot idles while a sample waits, so makespan <= work / slots + the longest sample
    assert result["decode_steps"] <= work / slots + max(max(row) for row in lengths)
    assert result["utilisation"] > 0.9


def test_infinite_sampling_cuts_decode_steps_against_micro_groups():
    lengths = _workload(8, 32, seed=2)
    micro = simulate(SlotScheduler("micro", 8, 8, 32, 8), lengths)["decode_steps"]
    infinite = simulate(SlotScheduler("infinite", 8, 8, 32, 8), lengths)["decode_steps"]
    assert infinite <= 0.6 * micro  # >= 40 % fewer decode steps (the paper reports up to 45 %)


def test_length_aware_refill_shortens_the_tail_against_fifo():
    """With exact predictions, plan + SJF refill beats first-come refill on few, widely spread samples."""
    gains = []
    for trial in range(20):
        lengths = _workload(1, 32, seed=100 + trial)
        fifo = simulate(SlotScheduler("infinite", 8, 1, 32, 8), lengths)["decode_steps"]
        exact = simulate(SlotScheduler("infinite", 8, 1, 32, 8, predict=lambda g, j: lengths[g][j]), lengths)
        gains.append(fifo / exact["decode_steps"])
        lower_bound = max(sum(n - 1 for n in lengths[0]) / 8, max(lengths[0]) - 1)
        assert exact["decode_steps"] <= (4 / 3) * lower_bound + 1
    assert sum(gains) / len(gains) > 1.05


def test_probes_run_before_any_sample_continues():
    lengths = [[50] * 6]
    events = []

    class Recording(SlotScheduler):
        def start(self, now):
            started = super().start(now)
            events.extend(probe for _, _, probe in started)
            return started

    simulate(Recording("infinite", 3, 1, 6, 3, probe_tokens=4, predict=lambda g, j: 50.0), lengths)
    assert events[:6] == [True] * 6 and not any(events[6:])


def test_infinite_admission_keeps_few_prompts_open_and_streams_groups():
    lengths = _workload(12, 32, seed=4)
    scheduler = SlotScheduler("infinite", 8, 12, 32, 8, probe_tokens=8, predict=lambda g, j: lengths[g][j])
    result = simulate(scheduler, lengths)
    assert result["peak_open_groups"] <= 4  # prompt KV of a few groups, not of the batch
    done_at = sorted(result["group_completed_at"])
    assert done_at[len(done_at) // 2] < 0.75 * result["decode_steps"]  # half the groups stream out early


def test_kv_budget_bounds_the_peak_when_lengths_are_predicted_exactly():
    lengths = _workload(8, 32, seed=1)
    exact = lambda g, j: float(lengths[g][j])  # noqa: E731
    free = simulate(SlotScheduler("infinite", 8, 8, 32, 8, probe_tokens=16, predict=exact), lengths)
    budget = free["peak_kv_tokens"] // 2
    assert budget >= 32 * 16 + max(map(max, lengths))  # room for a group's probes and the longest sample
    bounded = simulate(SlotScheduler("infinite", 8, 8, 32, 8, probe_tokens=16, predict=exact, kv_budget=budget), lengths)
    assert bounded["peak_kv_tokens"] <= budget
    assert free["decode_steps"] <= bounded["decode_steps"]  # the memory is paid for in steps


def test_kv_budget_trades_steps_for_memory_and_never_stalls():
    lengths = _workload(4, 32, seed=2)
    exact = lambda g, j: float(lengths[g][j])  # noqa: E731
    runs = [simulate(SlotScheduler("infinite", 8, 4, 32, 8, probe_tokens=16, predict=exact, kv_budget=b), lengths)
            for b in (None, 4000, 2000, 1)]  # 1 token: below any sample, so past its probe one runs at a time
    peaks = [r["peak_kv_tokens"] for r in runs]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]
    assert all(step > 0 for step in runs[-1]["group_completed_at"])  # every group completed
    assert runs[-1]["decode_steps"] >= sum(n - 16 for row in lengths for n in row)  # serial past the probes


def test_kv_budget_is_ignored_outside_infinite_sampling():
    lengths = _workload(2, 8, seed=3)
    for mode in ("full", "micro"):
        plain = simulate(SlotScheduler(mode, 8, 2, 8, 4), lengths)
        assert simulate(SlotScheduler(mode, 8, 2, 8, 4, kv_budget=1), lengths) == plain


def test_scheduler_rejects_rounds_larger_than_the_slots():
    with pytest.raises(ValueError, match="slots"):
        SlotScheduler("full", 4, 1, 8, 4)


def test_length_predictor_learns_prompt_and_first_token_effects_online():
    """Lengths = prompt scale x first-token effect x noise: the online model beats a constant guess."""
    rng = random.Random(5)
    weights = {t: rng.gauss(0, 1) for t in range(50)}
    predictor = LengthPredictor()
    errors, constant = [], []
    for step in range(12):
        for _ in range(8):
            prompt = [rng.randrange(50, 90) for _ in range(rng.randint(3, 30))]
            scale = rng.uniform(3.0, 6.0)  # not predictable from the prompt: learned from finished siblings
            group = GroupLengths(predictor.prompt_features(prompt))
            samples = []
            for _ in range(16):
                first = [rng.randrange(50) for _ in range(8)]
                log_len = scale + 0.4 * sum(weights[t] for t in first) / math.sqrt(8) + rng.gauss(0, 0.2)
                x = predictor.sample_features(first, [-1.0] * 8)
                group.probed.append(x)
                samples.append((x, max(1, round(math.exp(log_len)))))
            for x, length in samples:
                if step >= 8:
                    errors.append(abs(math.log(predictor.predict(group, x, 10**6) / length)))
                    constant.append(abs(4.5 - math.log(length)))
                predictor.finished(group, x, length)
            predictor.learn(group)
    assert sum(errors) / len(errors) < 0.5 * sum(constant) / len(constant)


def test_length_predictor_ignores_first_tokens_that_say_nothing():
    """First tokens unrelated to the length (a random model, say): the prequential gain turns the overfitted
    token regression off, so probing costs no accuracy against predicting from prompt and siblings alone."""
    rng = random.Random(7)
    predictor = LengthPredictor()
    with_tokens, without = [], []
    for step in range(10):
        for _ in range(4):
            prompt = [rng.randrange(50, 90) for _ in range(rng.randint(3, 30))]
            scale = rng.uniform(3.0, 6.0)
            group = GroupLengths(predictor.prompt_features(prompt))
            samples = []
            for _ in range(16):
                x = predictor.sample_features([rng.randrange(50) for _ in range(8)], [-1.0] * 8)
                group.probed.append(x)
                samples.append((x, max(1, round(math.exp(scale + rng.gauss(0, 0.5))))))
            for x, length in samples:
                if step >= 5:
                    with_tokens.append(abs(math.log(predictor.predict(group, x, 10**6) / length)))
                    without.append(abs(math.log(predictor.predict(group, None, 10**6) / length)))
                predictor.finished(group, x, length)
            predictor.learn(group)
    assert predictor.sample_model.gain < 0.2
    assert sum(with_tokens) / len(with_tokens) < 1.03 * sum(without) / len(without)
