"""learner.autocast=bfloat16: the forward and backward run in bfloat16, weights and optimizer state stay fp32, and the
log-probs and the gradient stay close to fp32's."""

from __future__ import annotations

import torch

from rlft.config import resolve_config
from rlft.learner.learner import Learner
from rlft.pipeline.batch import build_train_batch


def _batch(algo_cfg):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 100, (5,), generator=gen).tolist() for _ in range(2)]
    responses = [[torch.randint(4, 100, (n,), generator=gen).tolist() for n in (6, 3)] for _ in prompts]
    logprobs = [[[0.0] * len(r) for r in group] for group in responses]
    return build_train_batch(prompts, responses, logprobs, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), algo_cfg, 8, 0)


def _learner_grads(autocast: str):
    cfg = resolve_config("grpo-ba", None, [f"learner.autocast={autocast}"])
    learner = Learner(cfg)
    batch = _batch(cfg.algo)
    logprobs, _ = learner._logprobs(learner.model, batch)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.accumulate_gradients(batch)
    return learner, logprobs.detach(), torch.cat([p.grad.flatten() for p in learner.params])


def test_bf16_autocast_keeps_fp32_weights_and_stays_close_to_fp32():
    _, lp32, g32 = _learner_grads("none")
    learner, lp16, g16 = _learner_grads("bfloat16")
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in learner.params)
    assert lp16.dtype == torch.float32
    assert not torch.equal(lp16, lp32)  # the matmuls did run in bf16
    diff = (lp16 - lp32)[lp32 != 0].abs()
    assert diff.mean() < 0.03 and diff.max() < 0.2  # bf16 keeps 8 bits of mantissa: logits of ~10 move by ~0.05
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_on_a_cpu_attention_runs_in_fp32_under_bf16_autocast_while_the_linear_layers_run_in_bf16(monkeypatch):
    import rlft.learner.attention as attention

    seen = []
    real = attention.sdpa_attention_forward

    def spy(module, query, key, value, mask, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return real(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    learner, _, _ = _learner_grads("bfloat16")
    assert learner.model.config._attn_implementation == attention.NAME
    assert learner.share_prompts  # the packed layout's boolean mask still applies
    assert seen and all(s == (torch.float32, torch.float32, torch.float32, False) for s in seen)
    q_proj = learner.model.model.layers[0].self_attn.q_proj
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q_proj(torch.randn(2, q_proj.in_features)).dtype == torch.bfloat16


def test_a_checkpoint_of_a_bf16_autocast_learner_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    learner, _, _ = _learner_grads("bfloat16")
    learner.save(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config._attn_implementation in ("sdpa", "eager")
