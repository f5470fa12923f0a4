"""The learner hands rollout workers its weights as one byte buffer (rlft.models.flat_weights): what comes out is
what went in, names, order, dtypes and shapes included, after a trip through pickle as Ray makes it."""

from __future__ import annotations

import pickle

import torch

from rlft.models.flat_weights import ALIGN, FlatWeights


def test_flat_weights_round_trip_every_dtype_and_shape_through_pickle():
    torch.manual_seed(0)
    state = {
        "embed.weight": torch.randn(7, 5),
        "norm.weight": torch.randn(5).to(torch.bfloat16),
        "layer.bias": torch.randn(3).half(),
        "scalar": torch.tensor(2.5),
        "steps": torch.arange(3, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False, True]),
        "transposed": torch.randn(4, 6).t(),  # not contiguous
    }
    flat = FlatWeights.pack(state)
    assert all(offset % ALIGN == 0 for *_, offset in flat.entries)
    back = pickle.loads(pickle.dumps(flat, protocol=5)).state_dict()
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(back[name], tensor), name


def test_floating_tensors_are_cast_to_the_readers_dtype_and_others_kept():
    state = {"w": torch.randn(30, 40), "steps": torch.arange(3), "mask": torch.tensor([True, False])}
    back = FlatWeights.pack(state, torch.bfloat16).state_dict()
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], state["w"].to(torch.bfloat16))
    assert torch.equal(back["steps"], state["steps"]) and torch.equal(back["mask"], state["mask"])
    assert FlatWeights.pack(state, torch.bfloat16).nbytes < FlatWeights.pack(state).nbytes


def test_learner_rollout_weights_equal_its_state_dict():
    from rlft.config import resolve_config
    from rlft.learner.learner import Learner

    learner = Learner(resolve_config("grpo-ba", None, ["learner.device=cpu"]))
    state, flat = learner.state_dict(), learner.rollout_weights().state_dict()
    assert list(flat) == list(state)
    assert all(torch.equal(flat[k], state[k]) for k in state)
    half = learner.rollout_weights("bfloat16").state_dict()
    assert all(torch.equal(half[k], state[k].to(torch.bfloat16)) for k in state)
