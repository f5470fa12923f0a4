"""learner.weight_compression=neuzip (docs/methods.md#neuzip): exact round trip, compression, bit-identical training steps."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("constriction")

from rlft.config import resolve_config  # noqa: E402
from rlft.errors import ConfigError  # noqa: E402
from rlft.learner.learner import Learner  # noqa: E402
from rlft.learner.neuzip import CompressedTensor, NeuZip  # noqa: E402
from test_optim_zo import _batch  # noqa: E402  (the same small grpo-ba batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neuzip_round_trip_is_bit_exact_including_special_values(dtype):
    gen = torch.Generator().manual_seed(0)
    t = (torch.randn(64, 33, generator=gen) * 0.02).to(dtype)
    t[0, :6] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40]).to(dtype)
    back = CompressedTensor(t).decompress()
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       t.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def test_neuzip_codes_bf16_weights_below_three_quarters():
    t = (torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    ratio = CompressedTensor(t).nbytes / (t.numel() * 2)
    assert 0.5 < ratio < 0.75  # 8 raw bits + ~3 bits of exponent entropy, of 16


BASE = ["learner.device=cpu", "learner.micro_batch_size=2", "optim.lr=1e-3", "optim.weight_decay=0.01",
        "ray.torch_threads=1"]


@pytest.mark.parametrize("extra", [[], ["model.dtype=bfloat16", "learner.gradient_checkpointing=true"],
                                   ["lora.kind=lora"]], ids=["fp32", "bf16-checkpointing", "lora"])
def test_neuzip_training_steps_equal_uncompressed_bit_for_bit(extra, tmp_path):
    torch.set_num_threads(1)
    plain = Learner(resolve_config("grpo-ba", None, [*BASE, *extra]))
    packed = Learner(resolve_config("grpo-ba", None, [*BASE, *extra, "learner.weight_compression=neuzip"]))
    assert packed.neuzip.compressed_bytes < packed.neuzip.raw_bytes
    # the parameters hold no weights between uses: one broadcast element each
    assert all(p.untyped_storage().nbytes() <= 8 for p in packed.neuzip.stores)
    batch = _batch(plain.cfg.algo)
    for _ in range(2):
        m_plain, m_packed = plain.train_step(batch), packed.train_step(batch)
        assert m_plain["learner/pg_loss"] == m_packed["learner/pg_loss"]
        assert m_plain["learner/grad_norm"] == m_packed["learner/grad_norm"]
    for (key, a), b in zip(plain.state_dict().items(), packed.state_dict().values()):
        assert torch.equal(a, b), key
    packed.save(str(tmp_path / "ckpt"))  # a checkpoint holds ordinary weights and resumes compressed
    resumed = Learner(resolve_config("grpo-ba", None, [*BASE, *extra, "learner.weight_compression=neuzip"]))
    resumed.load(str(tmp_path / "ckpt"))
    plain.train_step(batch)
    resumed.train_step(batch)
    for (key, a), b in zip(plain.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_neuzip_module_hooks_leave_weights_compressed_after_forward():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    reference = [p.detach().clone() for p in model.parameters()]
    zipped = NeuZip(model)
    out = model(torch.tensor([[1, 2, 3]]))
    out.sum().backward()
    assert model[1].weight.grad.shape == (8, 8) and model[0].weight.grad.shape == (10, 8)
    with zipped.materialized():
        assert torch.equal(model[0].weight, reference[0]) and torch.equal(model[1].weight, reference[1])
    assert model[1].weight.untyped_storage().nbytes() <= 8


def test_neuzip_refuses_zo():
    with pytest.raises(ConfigError, match="optim.name=adamw"):
        resolve_config("grpo-ba", None, ["learner.weight_compression=neuzip", "optim.name=zo"])


def test_neuzip_with_fused_logprobs_keeps_the_lm_head_and_steps_bit_for_bit():
    torch.set_num_threads(1)
    fused = [*BASE, "learner.logprobs=fused"]
    plain = Learner(resolve_config("grpo-ba", None, fused))
    packed = Learner(resolve_config("grpo-ba", None, [*fused, "learner.weight_compression=neuzip"]))
    head = packed.model.get_output_embeddings().weight
    assert head not in packed.neuzip.stores and len(packed.neuzip.stores) > 0
    batch = _batch(plain.cfg.algo)
    plain.train_step(batch)
    packed.train_step(batch)
    for (key, a), b in zip(plain.state_dict().items(), packed.state_dict().values()):
        assert torch.equal(a, b), key
