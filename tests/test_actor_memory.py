"""What an actor process does for its own memory: oneDNN's per-shape caches bounded (rlft/pipeline/process.py), and
the reward actor kept free of torch and the model code (rlft/pipeline/reward_actor.py)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import torch

from rlft.config import resolve_config

REPO = Path(__file__).resolve().parents[1]


def test_actor_processes_bound_onednns_shape_caches_unless_the_user_set_them(monkeypatch):
    from rlft.pipeline.process import ONEDNN_CACHES, set_torch_threads

    cfg = resolve_config("grpo-ba", None, [f"ray.torch_threads={torch.get_num_threads()}"])  # threads unchanged
    for name in ONEDNN_CACHES:
        monkeypatch.delenv(name, raising=False)
    set_torch_threads(cfg)
    assert {name: os.environ[name] for name in ONEDNN_CACHES} == ONEDNN_CACHES
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    set_torch_threads(cfg)
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"


BF16_LEARNER_MEMORY = """
import os, random, resource, sys
import torch
sys.path.insert(0, sys.argv[1])
from bench_learner_step import default_batch
from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.pipeline.process import set_torch_threads

cfg = resolve_config("grpo-ba", None, ["learner.device=cpu", "learner.autocast=bfloat16", "ray.torch_threads=1"])
set_torch_threads(cfg)  # what every actor does first
learner, rng = Learner(cfg), random.Random(0)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for step in range(40):
    learner.train_step(default_batch(rng.randint(20, 32), 8, 9, rng.randint(4, 8), learner.model.config.vocab_size))
    if step == 4:
        early = peak()
print(peak() - early)
"""


def test_a_bf16_learners_memory_stays_bounded_while_its_batch_shape_changes_every_step():
    """Without the bounds each new packed-batch shape kept its oneDNN state (312 MiB more over these 40 steps on
    this AMX machine, against 33 MiB with them); CPUs whose bf16 GEMMs bypass oneDNN grow in neither case."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", BF16_LEARNER_MEMORY, str(REPO / "scripts")], env=env,
                         capture_output=True, text=True, check=True)
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 80, f"peak memory grew {growth_mib:.0f} MiB from step 5 to step 40"


REWARD_WORKER_IMPORTS = """
import pickle, sys
from rlft.pipeline.reward_actor import RewardWorker

worker = RewardWorker(pickle.loads(open(sys.argv[1], "rb").read()))  # the config arrives pickled, as Ray sends it
scores, _ = worker.score(["1+2="], ["3"], [{"answer": "3"}])
print(scores, sorted(m for m in ("torch", "transformers", "rlft.learner.learner") if m in sys.modules))
"""


def test_a_reward_worker_scores_without_loading_torch_or_the_model_code(tmp_path):
    """The reward actor's process imports its own module only: 490 MiB resident when it shared the other actors'."""
    cfg = tmp_path / "cfg.pkl"
    cfg.write_bytes(pickle.dumps(resolve_config("grpo-ba", None, [])))
    out = subprocess.run([sys.executable, "-c", REWARD_WORKER_IMPORTS, str(cfg)],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[1.0] []"
