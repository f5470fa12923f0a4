"""ray.lend_idle_cores: in async mode on a CPU the rollout worker uses the learner's cores while the learner
idles, and only its own share while the learner computes."""

from __future__ import annotations

import os

import pytest
import torch

from rlft.config import resolve_config
from rlft.pipeline.process import LearnerBusy, lends_idle_cores
from rlft.rollout.types import SamplingParams

ASYNC = ["train.mode=async", "algo.tis_cap=2.0"]


@pytest.fixture
def flag(tmp_path):
    path = tmp_path / "busy"
    path.write_bytes(b"\0")
    return str(path)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_lending_applies_to_async_cpu_runs_with_automatic_threads_and_one_builtin_rollout_worker():
    assert lends_idle_cores(resolve_config("grpo-ba", None, ASYNC), on_gpu=False)
    for off in (["train.mode=sync"], ASYNC + ["ray.torch_threads=1"], ASYNC + ["ray.lend_idle_cores=false"],
                ASYNC + ["rollout.num_workers=2"], ASYNC + ["rollout.engine=vllm"]):
        assert not lends_idle_cores(resolve_config("grpo-ba", None, off), on_gpu=False), off
    assert not lends_idle_cores(resolve_config("grpo-ba", None, ASYNC), on_gpu=True)


def test_the_flag_is_seen_through_another_mapping_and_cleared_however_the_block_ends(flag):
    writer, reader = LearnerBusy(flag), LearnerBusy(flag)
    with writer.held():
        assert reader.is_set()
    assert not reader.is_set()
    with pytest.raises(RuntimeError), writer.held():
        raise RuntimeError("a step that fails")
    assert not reader.is_set()
    assert LearnerBusy.open(None) is None and LearnerBusy.open(flag + "-on-another-node") is None


def test_the_learner_is_busy_exactly_while_it_steps(flag, monkeypatch):
    from rlft.learner.learner import Learner
    from rlft.pipeline.actors import LearnerWorker

    seen = []
    monkeypatch.setattr(Learner, "train_step", lambda self, batch: seen.append(LearnerBusy(flag).is_set()) or {})
    worker = LearnerWorker(resolve_config("grpo-ba", None, ASYNC + ["learner.device=cpu"]), flag)
    worker.train_step(None, worker.life)
    assert seen == [True] and not LearnerBusy(flag).is_set()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to lend")
def test_rollout_worker_borrows_the_idle_learners_cores_and_gives_them_back_when_it_computes(flag, threads):
    from rlft.pipeline.actors import RolloutWorker

    worker = RolloutWorker(resolve_config("grpo-ba", None, ASYNC), 0, flag)
    assert worker.own_threads == (os.cpu_count() or 1) // 2
    prompts = [worker.tokenizer(f"{i}{i}+{i}=")["input_ids"] for i in range(1, 5)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    stats = list(worker.stream(prompts, params))[-1][1]
    assert stats["borrowed_core_steps"] == stats["decode_steps"] > 0  # every engine step
    assert torch.get_num_threads() == os.cpu_count()
    with LearnerBusy(flag).held():
        stats = list(worker.stream(prompts, params))[-1][1]
        assert stats["borrowed_core_steps"] == 0 and torch.get_num_threads() == worker.own_threads
