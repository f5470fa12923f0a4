"""ray.lend_idle_cores: in async mode on a CPU the learner and the rollout worker each use the other's cores
while the other idles, and only their own share while it computes."""

from __future__ import annotations

import os

import pytest
import torch

from rlft.config import resolve_config
from rlft.learner.types import TrainBatch
from rlft.pipeline.process import CoreShare, lends_idle_cores
from rlft.rollout.types import SamplingParams

ASYNC = ["train.mode=async", "algo.tis_cap=2.0"]


@pytest.fixture
def flag(tmp_path):
    path = tmp_path / "busy"
    path.write_bytes(b"\0\0")
    return str(path)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_lending_applies_to_async_cpu_runs_with_automatic_threads_and_one_builtin_rollout_worker():
    cpu = ["rollout.device=cpu", "learner.device=cpu"]
    assert lends_idle_cores(resolve_config("grpo-ba", None, ASYNC + cpu))
    for off in (["train.mode=sync"], ASYNC + ["ray.torch_threads=1"], ASYNC + ["ray.lend_idle_cores=false"],
                ASYNC + ["rollout.num_workers=2"], ASYNC + ["rollout.engine=vllm"], ASYNC + ["learner.device=cuda"]):
        assert not lends_idle_cores(resolve_config("grpo-ba", None, cpu + off)), off


def test_the_rollout_side_is_busy_from_a_draws_submission_until_the_last_draw_ends():
    import threading

    from rlft.pipeline.async_rollout import Draw, RolloutQueue

    marks, release = [], threading.Event()

    def draw(step, version):
        release.wait(30)
        return Draw(step, version, None, {}, {}, {}, {})

    q = RolloutQueue(draw, lambda weights: None, max_staleness=1, last_step=3, mark_busy=marks.append)
    q.fill(1, lambda: "w", 0)  # steps 1 and 2 submitted: busy once, not twice
    assert marks == [True]
    release.set()
    assert [d.step for d in q.wait()] == [1, 2]
    q.close(wait=True)
    assert marks == [True, False]


def test_each_side_sees_the_others_mark_cleared_however_its_block_ends(flag):
    learner, rollout = CoreShare(flag, CoreShare.LEARNER, 1), CoreShare(flag, CoreShare.ROLLOUT, 1)
    with learner.busy():
        assert rollout.other_busy() and not learner.other_busy()
    assert not rollout.other_busy()
    with pytest.raises(RuntimeError), rollout.busy():
        assert learner.other_busy()
        raise RuntimeError("a draw that fails")
    assert not learner.other_busy()
    assert CoreShare.open(None, 0, 1) is None and CoreShare.open(flag + "-on-another-node", 0, 1) is None


def test_the_learner_marks_its_step_and_borrows_for_the_passes_the_rollout_idles(flag, threads):
    from rlft.pipeline.actors import LearnerWorker

    rollout = CoreShare(flag, CoreShare.ROLLOUT, 1)
    worker = LearnerWorker(resolve_config("grpo-ba", None, ASYNC + ["learner.device=cpu",
                                                                    "learner.max_tokens_per_micro_batch=8"]), flag)
    seen = []
    worker.before_pass = lambda: (seen.append(rollout.other_busy()), worker.cores.pick_threads())
    n, width = 4, 6
    mask = torch.zeros(n, width)
    mask[:, 3:] = 1  # 3 prompt tokens, 3 response tokens: 8 padded tokens a pass -> one row a pass
    batch = TrainBatch(tokens=torch.randint(3, 20, (n, width)), attention_mask=torch.ones(n, width, dtype=torch.long),
                       response_mask=mask, rollout_logprobs=torch.zeros(n, width), advantages=torch.tensor([1., -1, 1, -1]),
                       weights=torch.full((n,), 1 / 12), token_weights=torch.full((n,), 1 / 12),
                       minibatch=torch.zeros(n, dtype=torch.long))
    metrics = worker.train_step(batch, worker.life)
    assert seen == [True] * 4 and not rollout.other_busy()  # marked for the whole step, cleared after
    expect_borrowed = 4 if (os.cpu_count() or 1) > 1 else 0
    assert metrics["learner/borrowed_core_passes"] == expect_borrowed
    with rollout.busy():
        assert worker.train_step(batch, worker.life)["learner/borrowed_core_passes"] == 0
        assert torch.get_num_threads() == worker.cores.own_threads


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to lend")
def test_the_learner_borrows_from_the_layer_after_the_rollout_goes_idle_and_returns_them_when_it_starts(flag, threads):
    from rlft.pipeline.actors import LearnerWorker

    rollout = CoreShare(flag, CoreShare.ROLLOUT, 1)
    worker = LearnerWorker(resolve_config("grpo-ba", None, ASYNC + ["learner.device=cpu"]), flag)
    blocks = worker.model.model.layers
    threads_in = []  # the torch threads each block's forward and backward ran with
    for block in blocks:
        block.register_forward_hook(lambda *_: threads_in.append(("fwd", torch.get_num_threads())))
        block.register_full_backward_hook(lambda *_: threads_in.append(("bwd", torch.get_num_threads())))
    n, width = 8, 6
    mask = torch.zeros(n, width)
    mask[:, 3:] = 1
    batch = TrainBatch(tokens=torch.randint(3, 20, (n, width)), attention_mask=torch.ones(n, width, dtype=torch.long),
                       response_mask=mask, rollout_logprobs=torch.zeros(n, width), advantages=torch.ones(n),
                       weights=torch.full((n,), 1 / 24), token_weights=torch.full((n,), 1 / 24),
                       minibatch=torch.zeros(n, dtype=torch.long))
    own, every = worker.cores.own_threads, os.cpu_count()
    rollout.mark(True)  # the draw runs as the pass starts and ends after the first block's forward
    handle = blocks[0].register_forward_hook(lambda *_: rollout.mark(False))
    metrics = worker.train_step(batch, worker.life)
    handle.remove()
    assert metrics["learner/borrowed_core_passes"] == 0
    assert threads_in[0] == ("fwd", own) and all(t == every for _, t in threads_in[1:])
    assert metrics["learner/borrowed_core_layers"] == 2 * len(blocks) - 1
    threads_in.clear()  # and back: a draw that starts mid-pass gets its cores back at the next block
    handle = blocks[0].register_forward_hook(lambda *_: rollout.mark(True))
    metrics = worker.train_step(batch, worker.life)
    handle.remove()
    rollout.mark(False)
    assert metrics["learner/borrowed_core_passes"] == 1 and metrics["learner/borrowed_core_layers"] == 1
    assert threads_in[0] == ("fwd", every) and all(t == own for _, t in threads_in[1:])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to lend")
def test_rollout_worker_borrows_the_idle_learners_cores_and_gives_them_back_when_it_computes(flag, threads):
    from rlft.pipeline.actors import RolloutWorker

    worker = RolloutWorker(resolve_config("grpo-ba", None, ASYNC), 0, flag)
    assert worker.cores.own_threads == (os.cpu_count() or 1) // 2
    prompts = [worker.tokenizer(f"{i}{i}+{i}=")["input_ids"] for i in range(1, 5)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    stats = list(worker.stream(prompts, params))[-1][1]
    assert stats["borrowed_core_steps"] == stats["decode_steps"] > 0  # every engine step
    assert torch.get_num_threads() == os.cpu_count()
    with CoreShare(flag, CoreShare.LEARNER, 1).busy():
        stats = list(worker.stream(prompts, params))[-1][1]
        assert stats["borrowed_core_steps"] == 0 and torch.get_num_threads() == worker.cores.own_threads


def test_the_driver_runs_on_one_torch_thread_during_a_run_and_gives_the_count_back(tmp_path, monkeypatch, threads):
    from rlft.pipeline import driver

    seen = {}

    class FakeTrainer:  # what train() drives; records the driver's threads while the run is on
        def __init__(self, cfg, run_dir, started):
            self.trackers = type("T", (), {"close": lambda self: None})()
            self.learner, self.rollout, self.rewarders = None, [], []

        def run(self):
            seen["threads"] = torch.get_num_threads()
            return {"steps": 0}

    monkeypatch.setattr(driver, "Trainer", FakeTrainer)
    monkeypatch.setattr(driver, "ray_session", lambda cfg: True)
    monkeypatch.setattr(driver, "close_ray", lambda started: None)
    monkeypatch.setattr(driver, "plot_curves", lambda run_dir: None)
    torch.set_num_threads(2)
    driver.train(resolve_config("grpo-ba", None, [f"train.output_dir={tmp_path}"]))
    assert seen["threads"] == driver.DRIVER_TORCH_THREADS == 1
    assert torch.get_num_threads() == 2
