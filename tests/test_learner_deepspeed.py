"""learner.backend=deepspeed: two ZeRO ranks on CPU (gloo) take the same steps as the single-process torch
learner; save -> load resumes exactly; the checkpoint loads in transformers; refused combinations."""

from __future__ import annotations

import socket

import pytest
import torch

from rlft.config import resolve_config
from rlft.errors import ConfigError
from rlft.learner.learner import Learner
from rlft.pipeline.batch import build_train_batch

# three groups of G = 3 (9 rows: two ranks get 5 rows each, one of them padding), unequal lengths
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
LENGTHS = [[1, 9, 3], [2, 2, 2], [7, 1, 4]]
PROMPT_LENGTHS = [3, 6, 4]
# micro-batches of 2: 3 per rank; lr 1e-3 with warm-up so each step has its own learning rate.
# Adam's update g / (sqrt(v) + eps) is about lr * sign(g) for any |g| >> eps, so the ulp-level
# noise of summing gradients in another order (per rank, then reduced) would move near-zero
# gradients by up to a whole step; eps 1e-6 (not 1e-8) keeps those few at a fraction of it.
OVERRIDES = ["learner.device=cpu", "learner.micro_batch_size=2", "optim.lr=1e-3", "optim.warmup_steps=3",
             "optim.grad_clip=0.5", "optim.eps=1e-6", "ray.torch_threads=1"]
ATOL = 1e-6  # updates are ~3e-4 per step; measured: ZeRO-2 1e-7, ZeRO-3 2e-7 after two steps


def make_batch(algo_cfg):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 90, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    responses = [[torch.randint(4, 90, (n,), generator=gen).tolist() for n in group] for group in LENGTHS]
    logprobs = [[[-1.0] * n for n in group] for group in LENGTHS]
    return build_train_batch(prompts, responses, logprobs, REWARDS, algo_cfg, max_new_tokens=10, pad_id=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def torch_run():
    """The single-process torch learner: weights before, after one and after two steps, and step-1 metrics."""
    torch.set_num_threads(1)
    # rows whole, as the DeepSpeed learner runs them: packed groups sum in another order (~1e-6 apart after a step)
    cfg = resolve_config("grpo-ba", None, [*OVERRIDES, "learner.share_prompts=false"])
    learner = Learner(cfg)
    batch = make_batch(cfg.algo)
    w0 = learner.state_dict()
    m1 = learner.train_step(batch)
    w1 = learner.state_dict()
    learner.train_step(batch)
    return {"w0": w0, "w1": w1, "w2": learner.state_dict(), "m1": m1, "batch": batch}


def step_save_step_load_step(learner, batch, folder: str) -> dict:
    """Step, save, step, load, step again: what a learner saw along the way (weights from rank 0)."""
    m1 = learner.train_step.remote(batch)
    w1 = learner.state_dict.remote()
    learner.save.remote(folder)
    learner.train_step.remote(batch)
    w2 = learner.state_dict.remote()
    learner.load.remote(folder)
    learner.train_step.remote(batch)
    return {"m1": m1, "w1": w1, "w2": w2, "w2_resumed": learner.state_dict.remote()}


class _Now:
    """Calls a plain object's methods with the actor-handle syntax (`obj.method.remote(...)`), right away."""

    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return type("Method", (), {"remote": staticmethod(getattr(self.obj, name))})


def _rank_main(rank: int, world_size: int, port: int, cfg, batch, out_dir: str) -> None:
    """One rank in a spawned process; rank 0 writes what it saw to out_dir/result.pt."""
    from rlft.learner.deepspeed_learner import DeepSpeedLearner, init_distributed

    torch.set_num_threads(1)
    init_distributed(rank, world_size, "127.0.0.1", port, cuda=False)
    got = step_save_step_load_step(_Now(DeepSpeedLearner(cfg)), batch, f"{out_dir}/ckpt")
    if rank == 0:
        torch.save(got, f"{out_dir}/result.pt")
    # leave together and close gloo's threads: a rank exiting while its peer still talks to it can abort
    # ("terminate called without an active exception", SIGABRT), failing the spawn after the work succeeded
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def check_like_torch(got: dict, torch_run: dict, checkpoint, name: str) -> None:
    from transformers import AutoModelForCausalLM

    update = max_diff(torch_run["w1"], torch_run["w0"])
    assert update > 1e-4  # the step moved the weights, so matching them means something
    print(f"{name}: max |w - w_torch| after 1 step {max_diff(got['w1'], torch_run['w1']):.2e}, "
          f"after 2 {max_diff(got['w2'], torch_run['w2']):.2e} (update {update:.2e})")
    assert max_diff(got["w1"], torch_run["w1"]) < ATOL
    assert max_diff(got["w2"], torch_run["w2"]) < ATOL
    assert max_diff(got["w2_resumed"], got["w2"]) == 0.0
    # the statistics are the whole mini-batch's, not rank 0's share
    for key, value in torch_run["m1"].items():
        if key != "time/learner_s":
            assert got["m1"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    saved = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert max_diff({k: v for k, v in saved.state_dict().items() if k in got["w1"]}, got["w1"]) == 0.0


def deepspeed_config(stage: int):
    return resolve_config("grpo-ba", None, [*OVERRIDES, "learner.backend=deepspeed", "learner.num_workers=2",
                                            f"learner.zero_stage={stage}"])


@pytest.mark.slow
def test_zero3_ranks_step_like_the_torch_learner_and_resume_exactly(torch_run, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, free_port(), deepspeed_config(3), torch_run["batch"], str(tmp_path)), nprocs=2)
    check_like_torch(torch.load(tmp_path / "result.pt"), torch_run, tmp_path / "ckpt", "ZeRO-3")


@pytest.mark.slow
def test_zero2_learner_group_of_ray_actors_steps_like_the_torch_learner_and_resumes(torch_run, tmp_path):
    import ray

    from rlft.pipeline.learner_group import LearnerGroup

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        group = LearnerGroup(deepspeed_config(2), num_gpus=0)
        refs = step_save_step_load_step(group, torch_run["batch"], str(tmp_path / "ckpt"))
        check_like_torch({k: ray.get(v) for k, v in refs.items()}, torch_run, tmp_path / "ckpt", "ZeRO-2")
        assert ray.get(group.peak_memory_bytes.remote()) > 0
    finally:
        ray.shutdown()


@pytest.mark.parametrize("overrides, key", [
    (["learner.num_workers=2"], "learner.num_workers=2 needs learner.backend=deepspeed"),
    (["learner.backend=deepspeed", "optim.name=flora"], "optim.name=flora"),
    (["learner.backend=deepspeed", "optim.name=adamw-4bit-factor"], "optim.name=adamw-4bit-factor"),
    (["learner.backend=deepspeed", "lora.kind=polar"], "lora.kind=polar"),
    (["learner.backend=deepspeed", "lora.kind=reflora-s"], "lora.kind=reflora-s"),
    (["learner.backend=deepspeed", "learner.zero_stage=3", "learner.logprobs=fused"], "learner.logprobs=fused"),
])
def test_deepspeed_refuses_what_zero_would_silently_break(overrides, key):
    with pytest.raises(ConfigError, match=key):
        resolve_config("grpo-ba", None, overrides)


def test_deepspeed_accepts_its_supported_options():
    cfg = resolve_config("grpo-ba", None, ["learner.backend=deepspeed", "learner.num_workers=4", "lora.kind=lora",
                                           "optim.name=adamw-4bit", "learner.zero_stage=2", "learner.logprobs=fused"])
    assert (cfg.learner.num_workers, cfg.learner.zero_stage) == (4, 2)


def test_choosing_deepspeed_without_the_package_fails_at_config_time(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the deepspeed package.*pip install 'rlft\[deepspeed\]'"):
        resolve_config("grpo-ba", None, ["learner.backend=deepspeed"])
