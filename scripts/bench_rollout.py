"""Rollout benchmark: full-group decoding, naive micro-groups, Infinite-Sampling and transformers `generate`.

    python scripts/bench_rollout.py                                  # CPU, the default tiny model + a larger random one
    python scripts/bench_rollout.py --device cuda --prompts 16 16    # on a GPU
    python scripts/bench_rollout.py --models tiny --prompts 4 --max-new-tokens 256   # a quick look
    python scripts/bench_rollout.py --kv-budgets 0.3 0.4 0.6     # Infinite-Sampling under KV budgets
    python scripts/bench_rollout.py --engine vllm --prompts 4 2 --group-size 16 --micro-group-size 4 --max-new-tokens 256
                                        # the built-in engine and vLLM side by side (scripts/bench_rollout_vllm.py)

Every mode decodes the same prompts with the same seeds and randomness is per sample, so the built-in
engine's modes draw the same completions up to float rounding: Infinite-Sampling batches rows of
different lengths into one attention call, which changes the last bits of the logits, and a draw that
lands within that much of a CDF boundary flips (on the tiny model, 3 of 256 samples differed from
full-group decoding; micro-groups 0 of 256). The modes differ in scheduling, not in what they sample. The workload makes response
lengths spread widely (16 to --max-new-tokens) and depend on the prompt, as RL rollouts do (see
LengthSchedule). Writes <out>/bench_rollout.json and .png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlft.rollout.builtin import BuiltinEngine  # noqa: E402
from rlft.rollout.scheduler import SlotScheduler, simulate  # noqa: E402
from rlft.rollout.types import SamplingParams, generate  # noqa: E402


class LengthSchedule:
    """Forced lengths: EOS is masked until a sample's target length, then forced.

    target = clip(scale(prompt) * exp(0.5 * z1 + 0.5 * z2), min, max), where scale(prompt) is log-uniform
    in [24, 600] tokens (a hash of the prompt: how long this prompt's answers run), z1 a standard normal
    made of the first 16 generated tokens (fixed random weights per (position, token): what a probe of
    16 tokens can see), and z2 one made of tokens 16..47 as they arrive (what no probe sees). Weights
    per position keep z1 and z2 standard normal even for a model that repeats one token (with one weight
    per token, the tiny model's repetitions scaled z1 fourfold and sent nearly every sample to the cap).
    So lengths spread widely within and across groups, depend on the prompt, and are only partly
    predictable.

    The processor is vectorised (one batch of tensor ops per step, no per-row Python), and the built-in
    engine's form and the transformers form share the same tensor code, so the comparison with `generate`
    measures the engines, not the benchmark's own processor.
    """

    HEAD = 48  # generated tokens the target depends on

    def __init__(self, eos: int, vocab: int, min_tokens: int, max_tokens: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        # float64 weights [HEAD, vocab + 1] per (position, token); token `vocab` (padding of short rows) weighs 0
        self.weights = torch.cat([torch.randn(self.HEAD, vocab, generator=gen).double(),
                                  torch.zeros(self.HEAD, 1, dtype=torch.float64)], dim=1)
        self.pad = vocab
        self.eos, self.min, self.max, self.seed = eos, min_tokens, max_tokens, seed
        self.scales: dict[tuple, float] = {}

    def scale(self, prompt: list[int]) -> float:
        key = tuple(prompt)
        if key not in self.scales:
            rng = random.Random(hash((key, self.seed)))
            self.scales[key] = math.exp(rng.uniform(math.log(24), math.log(600)))
        return self.scales[key]

    def targets(self, scales: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Target lengths [rows] (float64) from prompt scales [rows] and the generated tokens so far, at most
        the first HEAD, [rows, <= HEAD] (padded with `self.pad`)."""
        positions = torch.arange(head.shape[1], device=head.device)
        w = self.weights.to(head.device)[positions[None, :], head]
        z1 = w[:, :16].sum(dim=1) / 4.0
        z2 = w[:, 16 : self.HEAD].sum(dim=1) / math.sqrt(32)
        return (scales * torch.exp(0.5 * z1 + 0.5 * z2)).clamp(self.min, self.max)

    def process(self, scales: torch.Tensor, head: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """EOS only (forced) for rows whose next token reaches their target, never EOS for the others. `lengths`:
        tokens generated so far [rows]. (n + 1 >= target already implies n + 1 >= min, as target >= min.)"""
        ends = (lengths.to(scales.device) + 1).double() >= self.targets(scales, head)
        ends = ends.to(logits.device)
        out = logits.masked_fill(ends[:, None], float("-inf"))
        out[:, self.eos] = torch.zeros_like(out[:, self.eos]).masked_fill_(~ends, float("-inf"))
        return out

    def apply(self, prompts: list[list[int]], generated: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
        """The built-in engine's logits-processor form."""
        H, pad = self.HEAD, self.pad
        width = min(H, max(map(len, generated)))
        head = torch.tensor([g[:width] + [pad] * (width - len(g)) for g in generated], dtype=torch.long)
        scales = torch.tensor([self.scale(p) for p in prompts], dtype=torch.float64)
        return self.process(scales, head.reshape(len(generated), width), torch.tensor(list(map(len, generated))), logits)

    def hf_processor(self, prompt: list[int]):
        """The transformers LogitsProcessor form, for one `generate` call over copies of `prompt`."""
        schedule, start = self, len(prompt)
        cache: dict[int, torch.Tensor] = {}

        def process(input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            rows, n = input_ids.shape[0], input_ids.shape[1] - start
            if rows not in cache:
                cache[rows] = torch.full((rows,), schedule.scale(prompt), dtype=torch.float64)
            head = input_ids[:, start : start + schedule.HEAD].cpu()
            return schedule.process(cache[rows], head, torch.full((rows,), n), scores)

        return process


def build_models(name: str, device: torch.device):
    """(model, tokenizer, description) for 'tiny' (the embedded model, or a random one of its shape) or 'large'."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlft.config import ModelConfig
    from rlft.errors import UserError
    from rlft.models.loading import load_causal_lm, load_tokenizer

    spec = Path(__file__).resolve().parent / "make_tiny_model.py"
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("make_tiny_model", spec)
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    tokenizer = script.build_tokenizer()
    torch.manual_seed(0)
    if name == "tiny":
        try:
            model = load_causal_lm(ModelConfig(), device)
            tokenizer = load_tokenizer(ModelConfig())
            return model.eval(), tokenizer, "embedded tiny model (rlft/models/tiny)"
        except UserError:
            hidden, layers, heads, kv_heads = 128, 4, 4, 4
            what = "random Qwen2 of the embedded model's shape (the embedded model is not built)"
    else:
        hidden, layers, heads, kv_heads = 512, 8, 8, 4
        what = "random Qwen2, hidden 512, 8 layers, 8 heads (4 KV heads)"
    config = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).to(device).eval()
    return model, tokenizer, what


def kv_bytes_per_token(model) -> int:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * next(model.parameters()).element_size()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_engine(model, tokenizer, schedule, prompts, params, device, warmup=(), **engine_kwargs) -> tuple[dict, list]:
    """One timed call of the built-in engine; `warmup` prompts first go through it untimed (what the length
    predictor has learned by then is what it would know after a few training steps)."""
    engine = BuiltinEngine(model, tokenizer, logits_processor=schedule.apply, **engine_kwargs)
    if warmup:
        generate(engine, list(warmup), SamplingParams(**{**vars(params), "seed": params.seed + 1}))
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    groups = generate(engine, prompts, params)
    sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    s = engine.stats()
    tokens = sum(len(c.token_ids) for g in groups for c in g)
    row = {
        "slots": engine_kwargs["max_slots"], "wall_s": wall, "cpu_s": cpu, "decode_steps": s["decode_steps"],
        "prefill_forwards": s["prefill_forwards"], "generated_tokens": tokens, "tokens_per_s": tokens / wall,
        "peak_kv_bytes": s["peak_kv_bytes"], "reserved_kv_bytes": s["reserved_kv_bytes"],
        "mean_rows_per_step": s["decode_rows"] / max(1, s["decode_steps"]),
    }
    if engine.length_predictions:
        row["length_predictor"] = predictor_errors(engine.length_predictions)
    return row, groups


def predictor_errors(pairs: list[tuple[float, int]]) -> dict:
    """Errors of the length predictions the scheduler acted on, against a constant (mean log length) guess."""
    logs = [(math.log(p), math.log(a)) for p, a in pairs]
    mean = sum(a for _, a in logs) / len(logs)
    return {
        "samples": len(pairs),
        "mean_abs_log_error": sum(abs(p - a) for p, a in logs) / len(logs),
        "constant_guess_mean_abs_log_error": sum(abs(mean - a) for _, a in logs) / len(logs),
        "median_relative_error": sorted(abs(p / a - 1) for p, a in pairs)[len(pairs) // 2],
        "spearman": spearman([p for p, _ in pairs], [a for _, a in pairs]),
    }


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def run_hf_generate(model, tokenizer, schedule, prompts, params, device) -> dict:
    """transformers `generate`, one call per group: batch = G copies of the prompt (equal batch to full-group)."""
    from transformers import LogitsProcessorList

    tokens = steps = peak_kv = reserved = 0
    per_token = kv_bytes_per_token(model)
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    for i, prompt in enumerate(prompts):
        torch.manual_seed(params.seed * 1000 + i)
        ids = torch.tensor([prompt] * params.n, device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=params.temperature,
                             top_k=0, top_p=1.0, max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             logits_processor=LogitsProcessorList([schedule.hf_processor(prompt)]))
        new = out[:, len(prompt):]
        lengths = [(row == tokenizer.eos_token_id).nonzero()[0].item() + 1 if (row == tokenizer.eos_token_id).any()
                   else len(row) for row in new]
        tokens += sum(lengths)
        steps += new.shape[1] - 1  # one prefill forward, then a decode step per further token
        peak_kv = max(peak_kv, params.n * (len(prompt) + new.shape[1] - 1) * per_token)
        # a dense cache of the batch: no sample's KV is freed before the call ends, and the worst case is max_new_tokens
        reserved = max(reserved, params.n * (len(prompt) + params.max_new_tokens - 1) * per_token)
    sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"slots": params.n, "wall_s": wall, "cpu_s": cpu, "decode_steps": steps, "prefill_forwards": len(prompts),
            "generated_tokens": tokens, "tokens_per_s": tokens / wall, "peak_kv_bytes": peak_kv,
            "reserved_kv_bytes": reserved,
            "mean_rows_per_step": float(params.n)}


def bench_model(name: str, num_prompts: int, num_warmup: int, args, device: torch.device) -> dict:
    model, tokenizer, what = build_models(name, device)
    rng = random.Random(args.seed)
    texts = [f"{rng.randint(0, 999)}+{rng.randint(0, 999)}=" + "?" * rng.randint(0, 40) for _ in range(num_prompts)]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    warmup = [tokenizer(f"{rng.randint(0, 999)}-{rng.randint(0, 999)}=" + "!" * rng.randint(0, 40))["input_ids"]
              for _ in range(num_warmup)]
    schedule = LengthSchedule(tokenizer.eos_token_id, model.config.vocab_size, args.min_new_tokens,
                              args.max_new_tokens, args.seed)
    params = SamplingParams(n=args.group_size, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    G, g = args.group_size, args.micro_group_size
    modes = {
        "full": dict(scheduling="full", max_slots=G),
        "micro": dict(scheduling="micro", max_slots=g, micro_group_size=g),
        "infinite": dict(scheduling="infinite", max_slots=g, micro_group_size=g, probe_tokens=args.probe_tokens),
        f"infinite@{G}": dict(scheduling="infinite", max_slots=G, micro_group_size=g, probe_tokens=args.probe_tokens),
    }
    rows, completions = {}, {}
    order = list(modes)
    for mode in order:
        kwargs = modes[mode]
        kwargs["warmup"] = warmup if kwargs["sampling"] == "infinite" else ()
        rows[mode], groups = run_engine(model, tokenizer, schedule, prompts, params, device, **kwargs)
        completions[mode] = [[c.token_ids for c in group] for group in groups]
        print(f"  {name} {mode}: {rows[mode]['wall_s']:.1f} s", flush=True)
        if mode == "full":  # budgets are fractions of full-group's live peak, so they run next
            full_tokens = rows["full"]["peak_kv_bytes"] / kv_bytes_per_token(model)
            for fraction in args.kv_budgets:
                key = f"infinite+budget{fraction:g}"
                modes[key] = dict(modes["infinite"], kv_budget_tokens=int(fraction * full_tokens))
                order.insert(order.index("infinite") + 1, key)
    if not args.skip_hf:
        rows["hf_generate"] = run_hf_generate(model, tokenizer, schedule, prompts, params, device)
        print(f"  {name} hf_generate: {rows['hf_generate']['wall_s']:.1f} s", flush=True)
    lengths = [[len(t) for t in group] for group in completions["full"]]
    return {
        "model": what, "parameters": sum(p.numel() for p in model.parameters()), "prompts": num_prompts,
        "response_lengths": {"min": min(map(min, lengths)), "max": max(map(max, lengths)),
                             "mean": sum(map(sum, lengths)) / (len(lengths) * G)},
        "samples_differing_from_full": {mode: differing(c, completions["full"]) for mode, c in completions.items()
                                        if mode != "full"},
        "modes": rows, "ratios": ratios(rows, G), "scheduling_ablation": ablation(lengths, G, g, args.probe_tokens),
    }


def differing(groups: list[list[list[int]]], reference: list[list[list[int]]]) -> dict:
    """How many samples differ from the reference's, and the first position where each differs."""
    where = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
             for xs, ys in zip(groups, reference) for x, y in zip(xs, ys) if x != y]
    return {"count": len(where), "of": sum(map(len, reference)), "first_differing_token": sorted(where)}


def ratios(rows: dict, G: int) -> dict:
    inf, micro, full = rows["infinite"], rows["micro"], rows["full"]
    out = {
        "infinite_reserved_kv_vs_full (target <= 0.5)": inf["reserved_kv_bytes"] / full["reserved_kv_bytes"],
        "infinite_live_peak_kv_vs_full (target <= 0.5)": inf["peak_kv_bytes"] / full["peak_kv_bytes"],
        "infinite_decode_steps_reduction_vs_micro (target >= 0.40)": 1 - inf["decode_steps"] / micro["decode_steps"],
        "infinite_tokens_per_s_vs_micro (target >= 1.25)": inf["tokens_per_s"] / micro["tokens_per_s"],
    }
    for mode, row in rows.items():
        if mode.startswith("infinite+budget"):
            out[f"{mode}_live_peak_kv_vs_full (target <= 0.5)"] = row["peak_kv_bytes"] / full["peak_kv_bytes"]
            out[f"{mode}_decode_steps_reduction_vs_micro (target >= 0.40)"] = 1 - row["decode_steps"] / micro["decode_steps"]
            out[f"{mode}_tokens_per_s_vs_micro (target >= 1.25)"] = row["tokens_per_s"] / micro["tokens_per_s"]
    if "hf_generate" in rows:
        hf = rows["hf_generate"]["tokens_per_s"]
        out[f"engine_tokens_per_s_vs_hf_generate, infinite@{G} (target >= 2)"] = rows[f"infinite@{G}"]["tokens_per_s"] / hf
        out["engine_tokens_per_s_vs_hf_generate, full (same group-synchronous schedule)"] = full["tokens_per_s"] / hf
    return out


def notes(results: dict, args) -> list[str]:
    """Which target holds on which measure, from the numbers of this run."""
    out = [f"CPU runs use --threads {args.threads}; on a machine shared with other jobs, timings are noisy: "
           "compare modes within one run, as ratios",
           "the LengthSchedule logits processor is one vectorised tensor function shared by the engine and the "
           "transformers generate forms (no per-row Python in either), so tokens/s compares the engines"]
    for name, r in results.items():
        q, G = r["ratios"], args.group_size

        def verdict(key, ok):
            return f"{key.split(' (')[0]} = {q[key]:.2f}: {'holds' if ok(q[key]) else 'does NOT hold'}"

        parts = [verdict("infinite_reserved_kv_vs_full (target <= 0.5)", lambda v: v <= 0.5),
                 verdict("infinite_live_peak_kv_vs_full (target <= 0.5)", lambda v: v <= 0.5),
                 verdict("infinite_decode_steps_reduction_vs_micro (target >= 0.40)", lambda v: v >= 0.4),
                 verdict("infinite_tokens_per_s_vs_micro (target >= 1.25)", lambda v: v >= 1.25)]
        key = f"engine_tokens_per_s_vs_hf_generate, infinite@{G} (target >= 2)"
        if key in q:
            parts.append(verdict(key, lambda v: v >= 2))
        for fraction in args.kv_budgets:
            mode = f"infinite+budget{fraction:g}"
            parts += [verdict(f"{mode}_live_peak_kv_vs_full (target <= 0.5)", lambda v: v <= 0.5),
                      verdict(f"{mode}_decode_steps_reduction_vs_micro (target >= 0.40)", lambda v: v >= 0.4),
                      verdict(f"{mode}_tokens_per_s_vs_micro (target >= 1.25)", lambda v: v >= 1.25)]
        out.append(f"{name}: " + "; ".join(parts))
        ab = r["scheduling_ablation"]
        fifo, lpt = ab["continuous refill, first-come order"], ab["continuous refill, probes + plan + SJF on exact lengths (oracle)"]
        out.append(f"{name}: replayed on the measured lengths with {args.micro_group_size} slots, peak response KV "
                   f"tokens held: first-come refill {fifo['peak_response_kv_tokens']}, length-aware (oracle) "
                   f"{lpt['peak_response_kv_tokens']}, full-group {ab['full']['peak_response_kv_tokens']}")
    return out


def ablation(lengths: list[list[int]], G: int, g: int, probe: int) -> dict:
    """The schedulers replayed on the measured lengths (no model): decode steps (what each part of the method
    buys) and peak response tokens held in KV, running and parked (whether length-aware order, which runs the
    longest samples together, is what drives the live KV peak; prompts are not counted)."""
    B = len(lengths)

    def run(mode, slots, **kw):
        r = simulate(SlotScheduler(mode, slots, B, G, g, **kw), lengths)
        return {"decode_steps": r["decode_steps"], "peak_response_kv_tokens": r["peak_kv_tokens"]}

    exact = lambda i, j: float(lengths[i][j])  # noqa: E731
    return {
        "full": run("full", G),
        "micro": run("micro", g),
        "continuous refill, first-come order": run("infinite", g),
        "continuous refill, probes + plan + SJF on exact lengths (oracle)": run("infinite", g, probe_tokens=probe,
                                                                                predict=exact),
        "lower bound max(work / slots, longest)": math.ceil(max(sum(n - 1 for r in lengths for n in r) / g,
                                                               max(map(max, lengths)) - 1)),
    }


def print_table(results: dict) -> None:
    head = (f"{'model':<6} {'mode':<12} {'slots':>5} {'wall s':>8} {'tok/s':>8} {'decode steps':>12} "
            f"{'KV reserved MB':>14} {'KV live peak MB':>15}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        for mode, m in r["modes"].items():
            print(f"{name:<6} {mode:<12} {m['slots']:>5} {m['wall_s']:>8.1f} {m['tokens_per_s']:>8.0f} "
                  f"{m['decode_steps']:>12} {m['reserved_kv_bytes'] / 2**20:>14.2f} {m['peak_kv_bytes'] / 2**20:>15.2f}")
        for k, v in r["ratios"].items():
            print(f"  {k}: {v:.2f}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("reserved_kv_bytes", "KV reserved (MB)", 2**20), ("peak_kv_bytes", "KV live peak (MB)", 2**20),
               ("decode_steps", "decode steps", 1), ("tokens_per_s", "tokens / s", 1)]
    fig, axes = plt.subplots(len(results), 4, figsize=(17, 3.4 * len(results)), squeeze=False)
    for row, (name, r) in enumerate(results.items()):
        modes = list(r["modes"])
        for col, (key, label, scale) in enumerate(metrics):
            ax = axes[row][col]
            ax.bar(modes, [r["modes"][m][key] / scale for m in modes], color="#4c72b0")
            ax.set_title(f"{name}: {label}", fontsize=10)
            ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "large"], choices=["tiny", "large"])
    p.add_argument("--prompts", type=int, nargs="+", default=[8, 2],
                   help="prompts (groups) per model, in --models order (one value: all models)")
    p.add_argument("--group-size", type=int, default=32, help="G")
    p.add_argument("--micro-group-size", type=int, default=8, help="g: slots of micro and Infinite-Sampling")
    p.add_argument("--min-new-tokens", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--probe-tokens", type=int, default=16, help="k: tokens decoded before a length is predicted")
    p.add_argument("--warmup-prompts", type=int, nargs="+", default=[4, 2],
                   help="prompts (per model) an Infinite-Sampling engine decodes untimed first, so its length "
                        "predictor has data")
    p.add_argument("--kv-budgets", type=float, nargs="*", default=[0.4],
                   help="extra Infinite-Sampling runs with rollout.kv_budget_tokens = this fraction of full-group's "
                        "measured live KV peak (tokens); the target is 0.5, less room for prompt blocks, block "
                        "rounding and samples that outrun their predicted length")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-hf", action="store_true", help="skip transformers generate (the slowest mode)")
    p.add_argument("--out", default="bench", help="folder for bench_rollout.json and bench_rollout.png")
    p.add_argument("--engine", choices=["builtin", "vllm"], default="builtin",
                   help="vllm: both engines side by side on free-running random models (bench_rollout_vllm.json)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="--engine vllm: vLLM's CPU KV cache")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.engine == "vllm":
        return main_vllm(args)
    device = torch.device(args.device)
    def per_model(values: list[int]) -> list[int]:
        return values if len(values) == len(args.models) else values[:1] * len(args.models)

    results = {}
    for name, count, warmup in zip(args.models, per_model(args.prompts), per_model(args.warmup_prompts)):
        print(f"{name}: {count} prompts x G={args.group_size}", flush=True)
        results[name] = bench_model(name, count, warmup, args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv), "device": str(device), "threads": args.threads,
        "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "workload": {
            "group_size": args.group_size, "micro_group_size": args.micro_group_size, "probe_tokens": args.probe_tokens,
            "length_predictor_warmup_prompts": args.warmup_prompts,
            "temperature": 1.0, "response_tokens": [args.min_new_tokens, args.max_new_tokens],
            "lengths": LengthSchedule.__doc__.split("\n\n")[1].replace("\n", " ").strip(),
            "prompts": "arithmetic-style prompts with 0..40 filler characters (prompt lengths vary)",
            "modes": {"full": "G slots; a group's G samples start together and hold their slots until the last ends",
                      "micro": "g slots; rounds of g samples that hold their slots until the round's longest ends",
                      "infinite": "g slots; Infinite-Sampling (continuous refill, probes, LPT plan + SJF refill)",
                      "infinite+budgetF": "the same with rollout.kv_budget_tokens = F x full-group's live KV peak "
                                          "(tokens): starts wait while the projected peak would pass the budget",
                      f"infinite@{args.group_size}": "the same with G slots (equal batch to hf_generate)",
                      "hf_generate": "transformers generate, one call per group (batch G)"},
        },
        "kv_measures": {
            "reserved_kv_bytes": "capacity a mode must allocate to run without preemption (docs/methods.md#infinite-sampling: P + g*L_max vs "
                                 "P + G*L_max): the engine's peak blocks of open prompts and parked probes + slots x the "
                                 "blocks of a max_new_tokens response; hf_generate: its dense cache, G x (prompt + "
                                 "max_new_tokens - 1) tokens",
            "peak_kv_bytes": "KV live peak, measured: the most blocks in use at once (finished samples free theirs at "
                             "once in every mode of the built-in engine); hf_generate: its dense cache at the longest "
                             "group's end",
        },
        "results": results,
        "notes": notes(results, args),
    }
    (out / "bench_rollout.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "bench_rollout.png")
    print_table(results)
    print(f"wrote {out / 'bench_rollout.json'} and {out / 'bench_rollout.png'}")
    return 0


def main_vllm(args) -> int:
    """--engine vllm: the built-in engine and vLLM side by side (scripts/bench_rollout_vllm.py)."""
    import bench_rollout_vllm as bench

    results = bench.run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import vllm

    report = {"command": " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__,
              "vllm": vllm.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "workload": {"group_size": args.group_size, "micro_group_size": args.micro_group_size,
                           "probe_tokens": args.probe_tokens, "max_new_tokens": args.max_new_tokens,
                           "lengths": bench.__doc__.split("\n\n")[1].replace("\n", " ")},
              "note": "machine shared with other jobs: compare modes and engines within this run, as ratios",
              "results": results}
    (out / "bench_rollout_vllm.json").write_text(json.dumps(report, indent=1))
    bench.plot(results, out / "bench_rollout_vllm.png")
    bench.print_table(results)
    print(f"wrote {out / 'bench_rollout_vllm.json'} and {out / 'bench_rollout_vllm.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
