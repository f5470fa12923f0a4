"""Dead and silent workers: restarted, their unfinished work re-sent with its original seeds, reported by
name and phase, counted; the run's result is the one an undisturbed run gives."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from rlft.rollout.streaming import GroupStream, StaleWeights, WorkerWatch, score_groups, wait_until_serving
from rlft.rollout.types import SamplingParams

pytestmark = pytest.mark.slow  # Ray actors that die and restart: about a minute on an idle 2-core machine


class FlakyRollout:
    """Yields each prompt's group (its text names the prompt's global index, which seeds it); the first
    incarnation dies (`die`) or goes silent (`hang`) after `after` groups, once per `marker` file."""

    def __init__(self, fault: str = "", after: int = 0, marker: str = ""):
        self.fault, self.after, self.marker = fault, after, marker
        self.weights, self.version = "initial", 0

    def stream(self, prompt_ids, params, weights_version=None):
        if weights_version is not None and weights_version != self.version:
            raise StaleWeights(f"holds {self.version}, expected {weights_version}")
        for i, prompt in enumerate(prompt_ids):
            if self.fault and i == self.after and not os.path.exists(self.marker):
                Path(self.marker).touch()
                if self.fault == "die":
                    os._exit(1)
                time.sleep(3600)
            yield i, [{"text": f"p{prompt[0]}-seed{params.seed}-{params.prompt_index_offset + i}-{j}-{self.weights}",
                       "token_ids": [j]} for j in range(params.n)]
        yield None, {"decode_steps": 1.0}

    def load_weights(self, weights, version=0):
        self.weights, self.version = weights, version

    def pid(self):
        return os.getpid()

    def peak_memory_bytes(self):
        return 0


class FlakyReward:
    def __init__(self, marker: str = ""):
        self.marker = marker

    def score(self, prompts, completions, rows):
        if self.marker and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return [float(len(c)) for c in completions], {"reward/time_s": 0.0}

    def peak_memory_bytes(self):
        return 0


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fake actors travel by value
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


PARTS = [[[10], [11], [12], [13]], [[14], [15], [16]]]
PARAMS = SamplingParams(n=2, seed=7)


def _revive_with(weights: str, version: int = 0):
    def revive(actor, phase):  # what the driver does: wait until it serves, give it the current weights
        wait_until_serving(actor, "rollout worker", 120)
        ray.get(actor.load_weights.remote(weights, version))
    return revive


def _undisturbed() -> list:
    workers = [ray.remote(FlakyRollout).remote() for _ in PARTS]
    ray.get([w.load_weights.remote("current") for w in workers])
    return GroupStream(workers, PARTS, PARAMS).collect()


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_rollout_worker_lost_mid_step_is_restarted_and_its_prompts_resent_with_original_seeds(
        local_ray, tmp_path, caplog, fault):
    flaky = ray.remote(max_restarts=1)(FlakyRollout).remote(fault, 2, str(tmp_path / "fault-once"))
    steady = ray.remote(FlakyRollout).remote()
    ray.get([w.load_weights.remote("current") for w in (flaky, steady)])
    watch = WorkerWatch(timeout_s=30.0 if fault == "hang" else None, revive=_revive_with("current"))
    with caplog.at_level(logging.WARNING, logger="rlft"):
        groups = GroupStream([flaky, steady], PARTS, PARAMS, watch=watch).collect()
    assert groups == _undisturbed()  # same completions, same order; the restarted worker got the weights
    if fault == "die":
        assert watch.counts == {"restarts": 1, "timeouts": 0}
        assert "rollout worker 0 died during rollout" in caplog.text
    else:
        assert watch.counts == {"restarts": 1, "timeouts": 1}
        assert "rollout worker 0 gave no reply in 30 s during rollout" in caplog.text


def test_reward_worker_death_is_restarted_and_its_chunk_scored_again(local_ray, tmp_path):
    rows = [{"prompt": f"q{i}"} for i in range(4)]
    groups = [[{"text": "x" * (i + j)} for j in range(2)] for i in range(4)]
    steady, _ = score_groups([ray.remote(FlakyReward).remote()], rows, groups, range(4))
    flaky = ray.remote(max_restarts=1)(FlakyReward).remote(str(tmp_path / "die-once"))
    watch = WorkerWatch(revive=lambda actor, phase: wait_until_serving(actor, "reward worker", 120))
    rewards, _ = score_groups([flaky], rows, groups, range(4), watch)
    assert rewards.tolist() == steady.tolist() and watch.counts["restarts"] == 1


def test_worker_without_a_way_back_fails_loudly(local_ray, tmp_path):
    flaky = ray.remote(max_restarts=0)(FlakyRollout).remote("die", 0, str(tmp_path / "die"))
    with pytest.raises(ray.exceptions.RayActorError):
        GroupStream([flaky], [[[1]]], PARAMS).collect()  # no watch: nothing restarts it


def test_rollout_worker_restarted_between_calls_is_caught_by_its_weights_version(local_ray):
    worker = ray.remote(max_restarts=1)(FlakyRollout).remote()
    ray.get(worker.load_weights.remote("current", 3))
    os.kill(ray.get(worker.pid.remote()), signal.SIGKILL)  # while idle: Ray restarts it with the initial weights
    watch = WorkerWatch(revive=_revive_with("current", 3), weights_version=3)
    groups = GroupStream([worker], [PARTS[0]], PARAMS, watch=watch).collect()
    assert all(g[0]["text"].endswith("-current") for g in groups) and watch.counts["restarts"] == 1


def test_learner_restarted_while_idle_refuses_the_update_and_the_save_of_the_run(local_ray, tmp_path):
    from rlft.config import resolve_config
    from rlft.learner.types import TrainBatch
    from rlft.pipeline.actors import LearnerWorker
    from rlft.pipeline.faults import LearnerLost, learner_get

    cfg = resolve_config("grpo-ba", None, ["learner.device=cpu", "ray.torch_threads=1"])
    learner = ray.remote(max_restarts=1)(LearnerWorker).remote(cfg)
    life = ray.get(learner.incarnation.remote())
    n, width = 4, 6
    mask = torch.ones(n, width)
    mask[:, :3] = 0  # 3 prompt tokens, 3 response tokens
    batch = TrainBatch(tokens=torch.randint(3, 20, (n, width)), attention_mask=torch.ones(n, width, dtype=torch.long),
                       response_mask=mask, rollout_logprobs=torch.zeros(n, width), advantages=torch.tensor([1., -1, 1, -1]),
                       weights=torch.full((n,), 1 / 12), token_weights=torch.full((n,), 1 / 12),
                       minibatch=torch.zeros(n, dtype=torch.long))
    assert "learner/pg_loss" in learner_get(learner.train_step.remote(batch, life), learner, "learner step", 120)
    stepped = ray.get(learner.__ray_call__.remote(lambda self: self.state_dict()))
    os.kill(ray.get(learner.__ray_call__.remote(lambda self: os.getpid())), signal.SIGKILL)  # while idle
    wait_until_serving(learner, "the learner", 120)
    with pytest.raises(LearnerLost, match="restarted while idle .* learner step"):
        learner_get(learner.train_step.remote(batch, life), learner, "learner step", 120)
    with pytest.raises(LearnerLost, match="checkpoint save"):
        learner_get(learner.save.remote(str(tmp_path / "ckpt"), life), learner, "checkpoint save", 120)
    assert not (tmp_path / "ckpt").exists()
    # the refused step left the restarted learner as it started (its weights are the initial ones, not the run's)
    fresh = ray.get(learner.__ray_call__.remote(lambda self: self.state_dict()))
    assert ray.get(learner.incarnation.remote()) != life
    assert any(not torch.equal(fresh[k], stepped[k]) for k in fresh)  # not the first incarnation's weights
    assert "learner/pg_loss" in learner_get(learner.train_step.remote(batch, ray.get(learner.incarnation.remote())),
                                            learner, "learner step", 120)


def test_lost_learner_rolls_back_to_the_last_checkpoint_then_stops_past_max_restarts(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    from rlft.errors import UserError
    from rlft.pipeline import checkpoint as ckpt
    from rlft.pipeline import driver
    from rlft.pipeline.faults import LearnerLost

    monkeypatch.setattr(driver, "wait_until_serving", lambda actor, name, timeout: None)
    ckpt.commit_checkpoint(tmp_path, 2, ckpt.staging_dir(tmp_path, 2), {"step": 2}, keep=2)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(5)) + '{"step": 5, "rew')  # cut by a kill
    restored = []
    stub = SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(max_restarts=1, worker_timeout_s=5.0)), run_dir=tmp_path,
        learner=object(), learner_restarts=0, state={"step": 4, "faults": {"worker_restarts": 2}}, updating=True,
        restore=lambda path: (restored.append(path.name), stub.state.update(step=2)), _check_learner=lambda: None,
    )
    driver.Trainer._roll_back(stub, LearnerLost("learner step", "died"), metrics)
    assert restored == ["step_000002"] and stub.state["step"] == 2 and stub.learner_restarts == 1
    assert stub.state["faults"] == {"worker_restarts": 2} and not stub.updating
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 1, 2]
    with pytest.raises(UserError, match=r"learner died during learner step; stopping after 1 learner restarts.*--resume"):
        driver.Trainer._roll_back(stub, LearnerLost("learner step", "died"), metrics)
