"""vLLM weight sync and log-prob agreement, on vLLM's CPU build (or CUDA).

    python scripts/bench_vllm_sync.py                       # the tiny model and a ~100M random Qwen2
    python scripts/bench_vllm_sync.py --models tiny --prompts 16

Weight sync: the rollout engine's own `load_weights` (vLLM's weight-transfer API with rlft's in-process
backend: digests of every tensor, only changed load units, 256 MiB buckets, layerwise reload, prefix cache
reset) timed for three updates: every tensor changed (full fine-tuning), only the attention projections
changed (what LoRA on q/k/v/o changes once merged) and nothing changed; median of --repeats. Seconds split
into finding what changed (a digest of every tensor) and loading; load GB/s = bytes loaded / loading seconds.
Ray's object-store hop from the learner process is not included (the same for both engines).

Log-prob agreement: vLLM samples at temperature 1 from the embedded model; the learner's recomputation
(rlft.learner.logprobs.token_logprobs, float32) scores the same tokens. Reports the per-token |difference|
(mean, max) and the importance ratio exp(learner - vLLM) spread. Writes <out>/vllm_sync.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlft.config import ModelConfig, RolloutConfig  # noqa: E402
from rlft.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from rlft.rollout.types import SamplingParams, generate  # noqa: E402


def random_model(folder: Path, hidden: int, layers: int) -> Path:
    """A random Qwen2 (the embedded tokenizer's vocabulary) saved with that tokenizer; its folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def time_sync(engine, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], repeats: int) -> dict:
    """The sync from `before` to `after` (the engine holds `before`, untimed), median of `repeats`: seconds in
    all, seconds finding what changed, bytes and tensors loaded, GB/s of the loading itself."""
    runs = []
    for _ in range(repeats):
        engine.load_weights(before)
        engine.load_weights(after)
        runs.append(dict(engine.sync_stats))
    runs.sort(key=lambda r: r["seconds"])
    mid = dict(runs[len(runs) // 2])
    load = mid["seconds"] - mid["change_detection_seconds"]
    mid["load_gb_per_s"] = mid["bytes"] / 1e9 / load if mid["bytes"] else None
    mid["all_seconds"] = [r["seconds"] for r in runs]
    return mid


def bench_sync(engine, model, repeats: int) -> dict:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    every = {k: v + 1e-3 for k, v in state.items()}
    attention = {k: (v + 1e-3 if ".self_attn." in k and k.endswith(".weight") else v) for k, v in state.items()}
    out = {"model_bytes": sum(v.numel() * v.element_size() for v in state.values()),
           "all_changed": time_sync(engine, state, every, repeats),
           "attention_changed": time_sync(engine, state, attention, repeats),
           "nothing_changed": time_sync(engine, state, state, repeats)}
    engine.load_weights(state)  # the model's own weights, which the log-prob check compares against
    return out


def logprob_agreement(engine, model, tokenizer, prompts: int, group: int, max_new_tokens: int) -> dict:
    from rlft.data.arithmetic import held_out_problems  # the default task's prompts
    from rlft.learner.logprobs import token_logprobs

    rows = held_out_problems(prompts, digits=3)
    prompt_ids = [tokenizer(r["prompt"])["input_ids"] for r in rows]
    groups = generate(engine, prompt_ids, SamplingParams(n=group, temperature=1.0, max_new_tokens=max_new_tokens, seed=1))
    diffs, ratios = [], []
    for prompt, completions in zip(prompt_ids, groups):
        for c in completions:
            tokens = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                lp, _ = token_logprobs(model, tokens, torch.ones_like(tokens))
            learner = lp[0, len(prompt):].double()
            d = learner - torch.tensor(c.logprobs, dtype=torch.float64)
            diffs.append(d.abs())
            ratios.append(d.exp())
    diffs, ratios = torch.cat(diffs), torch.cat(ratios)
    return {"tokens": int(diffs.numel()), "mean_abs_diff": float(diffs.mean()), "max_abs_diff": float(diffs.max()),
            "p99_abs_diff": float(diffs.quantile(0.99)), "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()), "ratio_std": float(ratios.std())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "100m"], choices=["tiny", "100m"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompts", type=int, default=32, help="log-prob agreement: prompts of the default task")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--out", default="bench")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_CI_ENV", "1")
    from rlft.rollout.vllm_engine import VLLMEngine

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = "embedded" if name == "tiny" else str(random_model(Path(tmp) / name, hidden=768, layers=12))
            cfg = ModelConfig(path=path)
            engine = VLLMEngine(cfg, RolloutConfig(engine="vllm", scheduling="full", max_slots=256,
                                                   vllm_kv_cache_gib=args.kv_cache_gib))
            model = load_causal_lm(cfg)
            entry = {"parameters": sum(p.numel() for p in model.parameters()), "sync": bench_sync(engine, model, args.repeats)}
            if name == "tiny":
                entry["logprobs"] = logprob_agreement(engine, model, load_tokenizer(cfg), args.prompts, args.group_size,
                                                      args.max_new_tokens)
            results[name] = entry
            engine.llm.llm_engine.engine_core.shutdown()
            del engine, model
            print_entry(name, entry)
    import vllm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "vllm": vllm.__version__, "torch": torch.__version__,
              "device": "cuda" if torch.cuda.is_available() else "cpu", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "note": "machine shared with other jobs: seconds are noisy; bytes and agreement are exact",
              "results": results}
    (out / "vllm_sync.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "vllm_sync.png")
    print(f"wrote {out / 'vllm_sync.json'} and {out / 'vllm_sync.png'}")
    return 0


def print_entry(name: str, e: dict) -> None:
    s = e["sync"]
    print(f"{name} ({e['parameters'] / 1e6:.1f}M parameters, {s['model_bytes'] / 2**20:.0f} MiB)")
    print(f"  {'update':<18} {'tensors':>7} {'MiB':>8} {'seconds':>8} {'of which finding changes':>24} {'load GB/s':>9}")
    for key in ("all_changed", "attention_changed", "nothing_changed"):
        r = s[key]
        rate = f"{r['load_gb_per_s']:.2f}" if r["bytes"] else "-"
        print(f"  {key:<18} {r['tensors']:>7.0f} {r['bytes'] / 2**20:>8.1f} {r['seconds']:>8.3f} "
              f"{r['change_detection_seconds']:>24.3f} {rate:>9}")
    if "logprobs" in e:
        lp = e["logprobs"]
        print(f"  log-probs over {lp['tokens']} tokens: |vLLM - learner| mean {lp['mean_abs_diff']:.2e}, max "
              f"{lp['max_abs_diff']:.2e}; importance ratio in [{lp['ratio_min']:.6f}, {lp['ratio_max']:.6f}]")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    keys = ["all_changed", "attention_changed", "nothing_changed"]
    for i, (name, e) in enumerate(results.items()):
        axes[0].bar([x + 0.4 * i for x in range(3)], [e["sync"][k]["seconds"] for k in keys], width=0.4, label=name)
    axes[0].set_xticks([x + 0.2 for x in range(3)], keys, fontsize=8)
    axes[0].set_title("seconds per sync")
    axes[0].legend()
    names = list(results)
    axes[1].bar(names, [results[n]["sync"]["all_changed"]["load_gb_per_s"] for n in names], color="#4c72b0")
    axes[1].set_title("load GB/s, every tensor changed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
