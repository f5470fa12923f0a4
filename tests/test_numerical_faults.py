"""A step whose loss or gradient is NaN/inf changes nothing and is counted; too many in a row stop the run."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlft.config import resolve_config
from rlft.errors import UserError
from rlft.learner.learner import Learner
from rlft.pipeline.batch import build_train_batch
from rlft.pipeline.driver import Trainer

REWARDS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, eos_token_id=2,
                         pad_token_id=0)
    path = tmp_path_factory.mktemp("random_qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    torch.set_num_threads(1)
    return Learner(resolve_config("grpo", None, [f"model.path={path}", "optim.lr=1e-2"]))


def _batch(learner, advantage_scale: float = 1.0):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 60, (3,), generator=gen).tolist() for _ in range(2)]
    responses = [[torch.randint(4, 60, (n,), generator=gen).tolist() for n in (2, 4, 3)] for _ in range(2)]
    logprobs = [[[0.0] * len(r) for r in group] for group in responses]
    batch = build_train_batch(prompts, responses, logprobs, REWARDS, learner.cfg.algo, max_new_tokens=4, pad_id=0)
    batch.advantages = batch.advantages * advantage_scale
    return batch


def _snapshot(learner):
    return ({k: v.clone() for k, v in learner.model.state_dict().items()}, copy.deepcopy(learner.optimizer.state_dict()),
            copy.deepcopy(learner.scheduler.state_dict()), learner.optimizer_steps)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_nonfinite_step_changes_no_weight_and_no_optimizer_state(learner, poison):
    assert learner.train_step(_batch(learner))["learner/nonfinite_steps"] == 0  # optimizer state now exists
    before = _snapshot(learner)
    metrics = learner.train_step(_batch(learner, advantage_scale=poison))
    assert metrics["learner/nonfinite_steps"] == 1
    assert _equal(_snapshot(learner), before)
    learner.train_step(_batch(learner))  # and the next finite step trains as usual
    assert not _equal(_snapshot(learner)[0], before[0])


def _trainer_stub(tmp_path: Path, limit: int):
    saved = []
    stub = SimpleNamespace(state={}, run_dir=tmp_path, cfg=SimpleNamespace(train=SimpleNamespace(max_nonfinite_steps=limit)),
                           save=lambda step: saved.append(step) or tmp_path / f"step_{step}")
    return stub, saved


def test_past_max_nonfinite_steps_in_a_row_the_run_saves_and_stops(tmp_path):
    stub, saved = _trainer_stub(tmp_path, limit=2)
    bad, good = {"learner/nonfinite_steps": 1.0}, {"learner/nonfinite_steps": 0.0}
    for step, metrics in enumerate([bad, bad, good, bad, bad], start=1):  # a finite step resets the count
        Trainer._check_nonfinite(stub, step, metrics)
    assert saved == [] and stub.state["nonfinite_steps"] == 4
    with pytest.raises(UserError, match=r"step 6: .*NaN/inf in 3 steps in a row.*--resume"):
        Trainer._check_nonfinite(stub, 6, bad)
    assert saved == [6]
