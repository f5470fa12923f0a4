"""What scripts/eval_math.py and scripts/eval_code.py share: options, the engine, sampling, reports."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from rlft.errors import UserError
from rlft.rollout.types import SamplingParams


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Model, engine, sampling and output options of both evaluation scripts."""
    parser.add_argument("--model", default="embedded",
                        help="'embedded', a Hugging Face model folder or hub id, a folder of checkpoints (its "
                             "newest HF checkpoint), or a GGUF file (a .gguf path or package:NAME/FILE.gguf)")
    parser.add_argument("--data-dir", help="folder holding the benchmark files (e.g. ../shared/data)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--n", type=int, default=1, help="samples per problem")
    parser.add_argument("--k", type=int, nargs="+", default=[1], help="k values of pass@k (and maj@k); k <= n")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: 0, greedy, when n=1; else 0.6)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length cap, counted in tokens")
    parser.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    parser.add_argument("--system-prompt", help="system message when --chat-template is on")
    parser.add_argument("--engine", choices=["builtin", "vllm"], default="builtin", help="generation backend")
    parser.add_argument("--device", default="auto", help="built-in engine: 'auto', 'cpu' or 'cuda[:i]'")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="model dtype")
    parser.add_argument("--max-slots", type=int, default=64, help="sequences decoded at once (vLLM: max_num_seqs)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM: fraction of GPU memory")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out-dir", default="eval_reports", help="folder for <benchmark>.json and <benchmark>.md")


def check_args(args: argparse.Namespace) -> None:
    """Argument errors that argparse cannot see."""
    if args.n < 1 or any(k < 1 or k > args.n for k in args.k):
        raise UserError(f"--k values must be between 1 and --n={args.n}, got {args.k}")
    if args.temperature is None:
        args.temperature = 0.0 if args.n == 1 else 0.6


def run_benchmarks(args: argparse.Namespace, load: Callable[[str], tuple[str, list[dict]]], evaluate: Callable) -> int:
    """A script's main: load every benchmark first (a typo fails before the model loads), then
    `evaluate(name, rows, engine, tokenizer, args)` each. Exit code 0, or a UserError's after one line."""
    try:
        check_args(args)
        benchmarks = [load(b) for b in args.benchmarks]
        engine, tokenizer = load_engine(args)
        for name, rows in benchmarks:
            evaluate(name, rows, engine, tokenizer, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def resolve_checkpoint(path: str) -> str:
    """A model folder as given, or, for a folder of checkpoints, the newest one that holds a config.json."""
    folder = Path(path)
    if path == "embedded" or not folder.is_dir() or (folder / "config.json").is_file():
        return path
    candidates = sorted(folder.glob("**/config.json"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"--model {path!r} holds no Hugging Face model (no config.json in it or below it)")
    return str(candidates[-1].parent)


def load_engine(args: argparse.Namespace):
    """(engine, tokenizer) for --model: the built-in engine, or vLLM with --engine vllm."""
    from rlft.config import ModelConfig
    from rlft.models.loading import load_causal_lm, load_tokenizer, pick_device

    model_cfg = ModelConfig(path=resolve_checkpoint(args.model), dtype=args.dtype)
    tokenizer = load_tokenizer(model_cfg)
    if args.engine == "vllm":
        return vllm_engine(model_cfg, args), tokenizer
    from rlft.rollout.builtin import BuiltinEngine

    model = load_causal_lm(model_cfg, pick_device(args.device))
    return BuiltinEngine(model, tokenizer, max_slots=args.max_slots), tokenizer


def vllm_engine(model_cfg, args: argparse.Namespace):
    """The vLLM engine (its CPU or CUDA build), imported only when chosen; a clear error without vllm."""
    from rlft.config import RolloutConfig
    from rlft.rollout.vllm_engine import VLLMEngine, check_vllm_available

    check_vllm_available()
    rollout_cfg = RolloutConfig(engine="vllm", gpu_memory_utilization=args.gpu_memory_utilization,
                                max_slots=args.max_slots, scheduling="full")
    return VLLMEngine(model_cfg, rollout_cfg)


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool, system_prompt: str | None) -> list[list[int]]:
    """Token ids of each prompt, through the chat template when asked."""
    if not chat_template:
        return [tokenizer(p)["input_ids"] for p in prompts]
    if tokenizer.chat_template is None:
        raise UserError("--chat-template: this tokenizer has no chat template")
    ids = []
    for prompt in prompts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def sample_texts(engine, tokenizer, prompts: list[str], args: argparse.Namespace, stop: list[str],
                 desc: str) -> list[list[str]]:
    """`args.n` completions per prompt (text, cut before the first stop string), with a progress bar."""
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, stop=stop, seed=args.seed)
    token_ids = encode_prompts(tokenizer, prompts, args.chat_template, args.system_prompt)
    texts: list[list[str] | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="problem") as bar:
        for index, group in engine.generate_groups(token_ids, params):
            texts[index] = [cut_at_stop(c.text, stop) for c in group]
            bar.update(1)
    return texts  # type: ignore[return-value]


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to its first stop string (the engine keeps the stop string in the response)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def write_report(name: str, args: argparse.Namespace, metrics: dict, problems: list[dict],
                 seconds: float) -> tuple[Path, Path]:
    """<out_dir>/<name>.json (all, per sample) and <name>.md (the summary) of one benchmark; prints the metrics."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("model", "engine", "n", "k", "temperature", "top_p", "max_new_tokens",
                                              "chat_template", "seed", "limit")}
    report = {"benchmark": name, "problems_evaluated": len(problems), "metrics": metrics, "settings": settings,
              "seconds": round(seconds, 1), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "problems": problems}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    lines = [f"# {name}: {args.model}", "",
             f"{len(problems)} problems, {args.n} samples each, temperature {args.temperature}, "
             f"engine {args.engine}, {seconds:.0f} s", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
    lines += ["", "| problem | correct samples |", "| --- | --- |"]
    lines += [f"| {p['id']} | {sum(s['correct'] for s in p['samples'])}/{len(p['samples'])} |" for p in problems[:50]]
    if len(problems) > 50:
        lines.append(f"| ... {len(problems) - 50} more in {json_path.name} | |")
    md_path.write_text("\n".join(lines) + "\n")
    print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f"  ({json_path}, {md_path})")
    return json_path, md_path
