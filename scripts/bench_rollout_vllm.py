"""`bench_rollout.py --engine vllm`: the built-in engine and vLLM side by side, full / micro / infinite.

vLLM takes no Python logits processor per call, so this workload does not force lengths (bench_rollout's
LengthSchedule): both engines sample freely from random-weight Qwen2 models, whose near-uniform next-token
distribution over the 128-token vocabulary ends a response at EOS with probability about 1/128 per token,
so lengths spread geometrically (mean about 128) up to --max-new-tokens. Both engines get the same
prompts, seeds, G, g and probe length; KV in use is each engine's own figure (the built-in engine's block
count, vLLM's scheduler usage x its cache size; vLLM's CPU blocks hold 128 tokens, so its figure is coarse).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch

from rlft.config import ModelConfig, RolloutConfig
from rlft.models.loading import load_causal_lm, load_tokenizer
from rlft.rollout.builtin import BuiltinEngine
from rlft.rollout.types import SamplingParams, generate

SHAPES = {"tiny": (128, 4, 2), "large": (512, 8, 8)}  # hidden, layers, heads: head size 64, one vLLM CPU attention takes


def save_random_model(folder: Path, name: str) -> Path:
    """A random Qwen2 of the named shape over the embedded tokenizer, saved for both engines to load."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads = SHAPES[name]
    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(engine, prompts, params) -> tuple[dict, list]:
    start = time.perf_counter()
    groups = generate(engine, prompts, params)
    wall = time.perf_counter() - start
    s = engine.stats()
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    row = {"wall_s": wall, "decode_steps": int(s["decode_steps"]), "generated_tokens": tokens,
           "tokens_per_s": tokens / wall, "peak_kv_bytes": s.get("peak_kv_bytes", float("nan"))}
    if "length_pred_abs_log_error" in s:
        row["length_pred_abs_log_error"] = s["length_pred_abs_log_error"]
    return row, [[c.token_ids for c in g] for g in groups]


def bench_model(name: str, num_prompts: int, args) -> dict:
    from rlft.rollout.vllm_engine import VLLMEngine

    G, g, k = args.group_size, args.micro_group_size, args.probe_tokens
    modes = {"full": dict(scheduling="full", max_slots=G), "micro": dict(scheduling="micro", max_slots=g),
             "infinite": dict(scheduling="infinite", max_slots=g)}
    params = SamplingParams(n=G, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    rows, completions = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(save_random_model(Path(tmp) / name, name))
        cfg = ModelConfig(path=path)
        tokenizer = load_tokenizer(cfg)
        rng = random.Random(args.seed)
        prompts = [tokenizer(f"{rng.randint(0, 999)}+{rng.randint(0, 999)}=" + "?" * rng.randint(0, 40))["input_ids"]
                   for _ in range(num_prompts)]
        warmup = [tokenizer(f"{rng.randint(0, 999)}-{rng.randint(0, 999)}=")["input_ids"] for _ in range(2)]
        model = load_causal_lm(cfg).eval()
        for mode, m in modes.items():
            engine = BuiltinEngine(model, tokenizer, max_slots=m["max_slots"], scheduling=m["scheduling"],
                                   micro_group_size=g, probe_tokens=k)
            generate(engine, warmup, SamplingParams(**{**vars(params), "seed": args.seed + 1}))
            rows[f"builtin {mode}"], completions[f"builtin {mode}"] = timed(engine, prompts, params)
            print(f"  {name} builtin {mode}: {rows[f'builtin {mode}']['wall_s']:.1f} s", flush=True)
        del model
        vllm = VLLMEngine(cfg, RolloutConfig(engine="vllm", max_slots=G, vllm_kv_cache_gib=args.kv_cache_gib))
        for mode, m in modes.items():
            vllm.rollout_cfg = RolloutConfig(engine="vllm", micro_group_size=g, length_probe_tokens=k, **m)
            generate(vllm, warmup, SamplingParams(**{**vars(params), "seed": args.seed + 1}))
            rows[f"vllm {mode}"], completions[f"vllm {mode}"] = timed(vllm, prompts, params)
            print(f"  {name} vllm {mode}: {rows[f'vllm {mode}']['wall_s']:.1f} s", flush=True)
        vllm.llm.llm_engine.engine_core.shutdown()
    for key, m in zip(rows, [*modes.values(), *modes.values()]):
        rows[key]["slots"] = m["max_slots"]
    lengths = [len(t) for group in completions["vllm full"] for t in group]
    return {
        "shape": dict(zip(("hidden", "layers", "heads"), SHAPES[name])),
        "prompts": num_prompts, "vllm_response_lengths": {"min": min(lengths), "max": max(lengths),
                                                          "mean": sum(lengths) / len(lengths)},
        "vllm_samples_differing_from_vllm_full": {
            mode: sum(a != b for x, y in zip(completions[f"vllm {mode}"], completions["vllm full"]) for a, b in zip(x, y))
            for mode in ("micro", "infinite")},
        "modes": rows,
        "ratios": {f"{e} infinite decode steps vs micro": rows[f"{e} infinite"]["decode_steps"] / rows[f"{e} micro"]["decode_steps"]
                   for e in ("builtin", "vllm")} | {
                   f"{e} infinite tokens/s vs micro": rows[f"{e} infinite"]["tokens_per_s"] / rows[f"{e} micro"]["tokens_per_s"]
                   for e in ("builtin", "vllm")} | {
                   "vllm vs builtin tokens/s, infinite": rows["vllm infinite"]["tokens_per_s"] / rows["builtin infinite"]["tokens_per_s"]},
    }


def run(args) -> dict:
    """Both engines on every model; returns the results by model."""
    counts = args.prompts if len(args.prompts) == len(args.models) else args.prompts[:1] * len(args.models)
    return {name: bench_model(name, count, args) for name, count in zip(args.models, counts)}


def print_table(results: dict) -> None:
    head = f"{'model':<6} {'engine mode':<17} {'slots':>5} {'wall s':>8} {'tok/s':>8} {'decode steps':>12} {'KV live peak MB':>15}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        for mode, m in r["modes"].items():
            print(f"{name:<6} {mode:<17} {m['slots']:>5} {m['wall_s']:>8.1f} {m['tokens_per_s']:>8.0f} "
                  f"{m['decode_steps']:>12} {m['peak_kv_bytes'] / 2**20:>15.2f}")
        for k, v in r["ratios"].items():
            print(f"  {k}: {v:.2f}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("tokens_per_s", "tokens / s", 1), ("decode_steps", "decode steps", 1),
               ("peak_kv_bytes", "KV live peak (MB)", 2**20)]
    fig, axes = plt.subplots(len(results), 3, figsize=(14, 3.4 * len(results)), squeeze=False)
    for row, (name, r) in enumerate(results.items()):
        modes = list(r["modes"])
        colors = ["#4c72b0" if m.startswith("builtin") else "#dd8452" for m in modes]
        for col, (key, label, scale) in enumerate(metrics):
            ax = axes[row][col]
            ax.bar(modes, [r["modes"][m][key] / scale for m in modes], color=colors)
            ax.set_title(f"{name}: {label}", fontsize=10)
            ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
