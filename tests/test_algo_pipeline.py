"""The algorithm options through the real Trainer and Ray: TPO sources, group filtering, overlong penalty,
KL as a reward penalty and truncated IS all run together and show up in the metrics."""

from __future__ import annotations

import json

import pytest

from rlft.config import resolve_config

pytestmark = pytest.mark.slow


def test_tpo_group_filtering_and_kl_reward_run_end_to_end(tmp_path):
    import ray

    from rlft.pipeline.driver import train

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        cfg = resolve_config("grpo-token", None, [
            "rollout.prompts_per_step=8", "rollout.group_size=4", "data.eval_size=16", "train.steps=1",
            "train.eval_every=0", "train.progress=false", "ray.torch_threads=1", f"train.output_dir={tmp_path}",
            "train.run_name=r", "transfer.sources=[digit_credit]", "transfer.num_transferred=2",
            "transfer.num_extra=4", "algo.kl_coef=0.01", "algo.kl_mode=reward", "algo.tis_cap=2.0",
        ])
        summary = train(cfg)
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    step = records[1]
    assert step["transfer/digit_credit/picks"] >= 8 and "transfer/null/picks" in step
    assert "reward/kl_penalty" in step and "learner/tis_weight_mean" in step and step["shaping/rounds"] >= 1
    # a source prompt costs G - r + N = 6 generated samples and G = 4 target-scored ones
    assert step["samples"] == 6 * step["samples_scored"] // 4
    assert summary["samples"] == records[-1]["samples"]
