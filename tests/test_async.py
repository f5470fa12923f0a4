"""Asynchronous training (train.mode=async, docs/methods.md#asynchronous-training): staleness 0 is the synchronous
run, staleness 1 trains on batches one update old with the IS correction, and resuming gives the same metrics as
not stopping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rlft.config import resolve_config
from rlft.errors import ConfigError

SMALL = [
    "rollout.prompts_per_step=8", "rollout.group_size=4", "data.eval_size=32", "train.eval_every=3",
    "train.save_every=2", "train.progress=false", "ray.torch_threads=1", "algo.tis_cap=2.0",
]
DETERMINISTIC = ["reward/mean", "learner/pg_loss", "learner/grad_norm", "learner/entropy", "learner/tis_weight_mean",
                 "learner/tis_abs_log_ratio", "response/length_mean", "eval/accuracy"]


def test_async_with_stale_samples_and_no_tis_cap_is_a_config_error():
    with pytest.raises(ConfigError, match="algo.tis_cap"):
        resolve_config("grpo-ba", None, ["train.mode=async"])
    resolve_config("grpo-ba", None, ["train.mode=async", "train.max_staleness=0"])  # on-policy: nothing to correct


def test_on_policy_steps_outside_async_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="train.mode=async"):
        resolve_config("grpo-ba", None, ["train.on_policy_steps=10"])
    resolve_config("grpo-ba", None, ["train.mode=async", "algo.tis_cap=2", "train.on_policy_steps=10"])


def test_async_mode_splits_the_cores_between_rollout_and_learner(monkeypatch):
    from rlft.pipeline.process import torch_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert torch_threads(resolve_config("grpo-ba", None, [])) == 8
    assert torch_threads(resolve_config("grpo-ba", None, ["train.mode=async", "algo.tis_cap=2"])) == 4
    assert torch_threads(resolve_config("grpo-ba", None, ["train.mode=async", "algo.tis_cap=2", "ray.torch_threads=3"])) == 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four-step runs: sync, async with staleness 0, async with staleness 1, async with staleness 1 after two
    on-policy steps, and async 1 stopped after step 2 (its newer checkpoint and metrics removed) and resumed."""
    import ray

    from rlft.pipeline.driver import train

    root = tmp_path_factory.mktemp("async")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        common = [*SMALL, f"train.output_dir={root}", "train.steps=4"]
        train(resolve_config("grpo-ba", None, [*common, "train.run_name=sync"]))
        train(resolve_config("grpo-ba", None, [*common, "train.run_name=async0", "train.mode=async",
                                               "train.max_staleness=0"]))
        async1 = resolve_config("grpo-ba", None, [*common, "train.run_name=async1", "train.mode=async"])
        train(async1)
        train(resolve_config("grpo-ba", None, [*common, "train.run_name=warm", "train.mode=async",
                                               "train.on_policy_steps=2"]))
        shutil.copytree(root / "async1", root / "resumed")
        shutil.rmtree(root / "resumed" / "checkpoints" / "step_000004")
        train(async1, resume_dir=root / "resumed")
    finally:
        ray.shutdown()
    return {"root": root, **{name: _records(root / name) for name in ("sync", "async0", "async1", "warm", "resumed")}}


def _records(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def _assert_same(a: dict, b: dict, steps) -> None:
    for step in steps:
        for key in DETERMINISTIC:
            assert (key in a[step]) == (key in b[step]), (step, key)
            if key in a[step]:
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)


@pytest.mark.slow
def test_async_with_staleness_zero_equals_sync_step_for_step(runs):
    _assert_same(runs["sync"], runs["async0"], range(0, 5))
    assert all(runs["async0"][s]["async/staleness_max"] == 0 for s in range(1, 5))


@pytest.mark.slow
def test_async_trains_on_one_step_old_samples_with_is_correction(runs):
    staleness = [runs["async1"][s]["async/staleness_max"] for s in range(1, 5)]
    assert staleness == [0, 1, 1, 1]  # the first batch is drawn by the initial weights, then one update behind
    assert runs["async1"][1]["reward/mean"] == runs["sync"][1]["reward/mean"]
    # pi_old != mu once samples are stale (batch 2 was drawn before update 1); equal numerics at staleness 0
    for step in (2, 3, 4):
        assert runs["async1"][step]["learner/tis_abs_log_ratio"] > 10 * runs["async0"][step]["learner/tis_abs_log_ratio"]
        assert runs["async1"][step]["learner/pg_loss"] != runs["sync"][step]["learner/pg_loss"]


@pytest.mark.slow
def test_async_resume_gives_the_same_metrics_as_not_stopping(runs):
    assert sorted(runs["resumed"]) == [0, 1, 2, 3, 4]
    _assert_same(runs["async1"], runs["resumed"], (3, 4))
    assert runs["resumed"][3]["async/staleness_max"] == 1  # the in-flight batch came back from the checkpoint


@pytest.mark.slow
def test_a_draw_in_flight_carries_its_learner_batch_built_on_the_rollout_thread(runs):
    from rlft.pipeline.driver import IN_FLIGHT

    in_flight = torch.load(runs["root"] / "async1" / "checkpoints" / "step_000002" / IN_FLIGHT, weights_only=False)
    assert [d.step for d in in_flight] == [3]
    batch = in_flight[0].batch  # built when the draw ended, so the step that takes it only calls the learner
    assert batch is not None and len(batch) == len(in_flight[0].groups) * 4  # rollout.group_size in SMALL
    assert "weights/negative_share" in in_flight[0].metrics


def test_the_queue_draws_the_first_on_policy_steps_one_at_a_time_then_max_staleness_ahead():
    from rlft.pipeline.async_rollout import Draw, RolloutQueue

    drawn = []

    def draw(step, version):
        drawn.append((step, version))
        return Draw(step, version, None, {}, {}, {}, {})

    q = RolloutQueue(draw, lambda weights: None, max_staleness=2, last_step=6, on_policy_steps=3)
    for step in range(1, 7):
        q.fill(step, lambda: "w", step - 1)
        q.take(step)
    q.close(wait=True)
    # steps 1-3 by the policy after the update before them; from step 3 on, two steps ahead
    assert drawn == [(1, 0), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3)]


@pytest.mark.slow
def test_async_on_policy_steps_draw_the_first_steps_as_sync_then_one_update_behind(runs):
    _assert_same(runs["sync"], runs["warm"], (0, 1, 2))
    assert [runs["warm"][s]["async/staleness_max"] for s in range(1, 5)] == [0, 0, 1, 1]
    assert runs["warm"][3]["learner/tis_abs_log_ratio"] > 10 * runs["async0"][3]["learner/tis_abs_log_ratio"]
