"""Adapters out of the learner: merged state dict for weight sync, merged HF checkpoint, PEFT adapter."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlft.config import LoraConfig
from rlft.lora import apply_lora, export_peft_adapter, merged_state_dict, save_merged

KINDS = ["lora", "polar", "reflora", "reflora-s"]


def _base_and_adapted(kind: str, dtype=torch.float32):
    """A small random Qwen2, and a copy with non-zero adapters of `kind` on all attention/MLP projections."""
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)).to(dtype)
    model = copy.deepcopy(base)
    apply_lora(model, LoraConfig(kind=kind, rank=4, alpha=8.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return base, model


@pytest.mark.parametrize("kind", KINDS)
def test_merged_state_dict_has_base_keys_and_reproduces_the_adapted_model(kind):
    base, model = _base_and_adapted(kind)
    merged = merged_state_dict(model)
    assert list(merged) == list(base.state_dict())
    tokens = torch.randint(0, 64, (2, 7))
    plain = copy.deepcopy(base)
    plain.load_state_dict(merged)
    assert torch.allclose(plain(tokens).logits, model(tokens).logits, atol=1e-5)
    only = merged_state_dict(model, only_adapted=True)
    assert set(only) == {f"model.layers.{i}.{m}.weight" for i in range(2) for m in
                         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def test_merged_state_dict_keeps_the_base_dtype():
    _, model = _base_and_adapted("lora", dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in merged_state_dict(model).values())


def test_save_merged_writes_a_checkpoint_auto_model_loads(tmp_path):
    _, model = _base_and_adapted("polar")
    save_merged(model, None, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokens = torch.randint(0, 64, (2, 7))
    assert torch.allclose(loaded(tokens).logits, model(tokens).logits, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside PEFT
@pytest.mark.parametrize("kind", ["lora", "polar"])
def test_peft_loads_the_exported_adapter_and_matches_outputs(tmp_path, kind):
    peft = pytest.importorskip("peft")
    base, model = _base_and_adapted(kind)
    export_peft_adapter(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    tokens = torch.randint(0, 64, (2, 7))
    assert torch.allclose(loaded(tokens).logits, model(tokens).logits, atol=1e-5)
    assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].lora_alpha == 8.0
