"""Shared fixtures: the benchmark data folder beside the checkout, and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Ray and transformers chatter is noise in test output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (clone with ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from rlft.config import ModelConfig
    from rlft.models.loading import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture()
def random_qwen2():
    """A freshly initialised 2-layer Qwen2 over the embedded tokenizer's vocabulary (seeded)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True, eos_token_id=2, pad_token_id=0,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def small_qwen2_dir(tmp_path_factory) -> Path:
    """A folder with a seeded 2-layer Qwen2 of hidden size 32 (grouped-query attention), for learner steps."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, eos_token_id=2, pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("small_qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path
