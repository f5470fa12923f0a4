"""Build an embedded model: a tiny Qwen2 with a character-level tokenizer, warmed up by SFT on its task.

    python scripts/make_tiny_model.py                  # writes rlft/models/tiny/ (3-digit addition)
    python scripts/make_tiny_model.py --out /tmp/tiny --max-steps 400
    python scripts/make_tiny_model.py --task scratchpad  # writes rlft/models/scratchpad/

The supervised warm-up stops once held-out greedy accuracy reaches `--target-accuracy` (checked
every `--eval-every` steps), so the shipped model starts well below the ceiling and RL has visible
room. On the scratchpad task the loss covers the whole written-out scratchpad and accuracy reads the
final answer; warmup.json then also records the lengths of the model's scratchpads (greedy and
sampled, right and wrong). Everything is seeded: the same command gives the same model.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlft.data import arithmetic, scratchpad  # noqa: E402
from rlft.rollout.builtin import BuiltinEngine  # noqa: E402
from rlft.rollout.types import SamplingParams, generate  # noqa: E402

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# printable ASCII + newline, so any benchmark text tokenizes (scores are near zero, the plumbing runs)
CHARS = list(string.digits + string.ascii_letters + string.punctuation + " \n")
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=2048, clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, args) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=128,  # 99 used; a multiple of 64 suits GPU kernels
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        num_key_value_heads=args.hidden // 32,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def make_problem(rng: random.Random, args) -> dict:
    return arithmetic.make_problem(rng, args.digits) if args.task == "arithmetic" else scratchpad.make_problem(rng)


def held_out_problems(args) -> list[dict]:
    """The task's held-out problems kept out of training (its eval rows are the first `--eval-size`)."""
    if args.task == "arithmetic":
        return arithmetic.held_out_problems(args.eval_size, args.digits)
    return scratchpad.held_out_problems(max(args.eval_size, scratchpad.HELD_OUT_SIZE))


def sft_batch(rng: random.Random, tokenizer, size: int, args, held_out: set[str]):
    """Token ids and labels (the completion and EOS only) for `size` fresh training problems."""
    seqs, labels = [], []
    while len(seqs) < size:
        row = make_problem(rng, args)
        if row["prompt"] in held_out:
            continue
        prompt = tokenizer(row["prompt"])["input_ids"]
        target = row["answer"] if args.task == "arithmetic" else row["scratchpad"]
        answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, seqs))
    ids = torch.full((size, width), tokenizer.pad_token_id)
    lab = torch.full((size, width), -100)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
    return ids, lab


def is_correct(text: str, row: dict, task: str) -> bool:
    return text.strip() == row["answer"] if task == "arithmetic" else scratchpad.is_correct(text, row["answer"])


def completions(model, tokenizer, rows: list[dict], task: str, n: int = 1, temperature: float = 0.0, seed: int = 0):
    """(response length in tokens, correct) of `n` completions per row."""
    engine = BuiltinEngine(model, tokenizer, max_slots=512)
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
    cap = 6 if task == "arithmetic" else scratchpad.TASK_DEFAULTS["rollout"]["max_new_tokens"]
    groups = generate(engine, prompts, SamplingParams(n=n, temperature=temperature, max_new_tokens=cap, seed=seed))
    model.train()
    return [(len(c.token_ids), is_correct(c.text, r, task)) for g, r in zip(groups, rows) for c in g]


def greedy_accuracy(model, tokenizer, rows: list[dict], task: str) -> float:
    return sum(ok for _, ok in completions(model, tokenizer, rows, task)) / len(rows)


def length_stats(samples: list[tuple[int, bool]]) -> dict:
    """Response-length distribution (tokens, EOS included) of all, right and wrong completions."""
    def describe(lengths: list[int]) -> dict:
        if not lengths:
            return {"count": 0}
        q = statistics.quantiles(lengths, n=10) if len(lengths) > 1 else [lengths[0]] * 9
        return {"count": len(lengths), "mean": statistics.fmean(lengths), "std": statistics.pstdev(lengths),
                "min": min(lengths), "p10": q[0], "median": statistics.median(lengths), "p90": q[8],
                "max": max(lengths), "histogram": dict(sorted(Counter(lengths).items()))}

    return {"all": describe([n for n, _ in samples]), "right": describe([n for n, ok in samples if ok]),
            "wrong": describe([n for n, ok in samples if not ok])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["arithmetic", "scratchpad"], default="arithmetic", help="the embedded task")
    p.add_argument("--out", help="model folder (default: rlft/models/tiny, or rlft/models/<task>)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--target-accuracy", type=float, default=0.35, help="stop the warm-up at this held-out accuracy")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-size", type=int, default=500, help="held-out problems (the first ones of the task's set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda; the shipped model's command is in its warmup.json")
    args = p.parse_args()
    models = Path(__file__).resolve().parents[1] / "rlft" / "models"
    args.out = args.out or str(models / ("tiny" if args.task == "arithmetic" else args.task))

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args).to(args.device)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    held_out_rows = held_out_problems(args)
    held_out = {r["prompt"] for r in held_out_rows}
    eval_rows = held_out_rows[: args.eval_size]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    start, accuracy, curve = time.time(), 0.0, []
    for step in range(1, args.max_steps + 1):
        ids, labels = sft_batch(rng, tokenizer, args.batch_size, args, held_out)
        ids, labels = ids.to(args.device), labels.to(args.device)
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0:
            accuracy = greedy_accuracy(model, tokenizer, eval_rows, args.task)
            curve.append((step, accuracy))
            print(f"step {step:5d}  loss {loss.item():.4f}  held-out greedy accuracy {accuracy:.3f}  ({time.time() - start:.0f}s)")
            if accuracy >= args.target_accuracy:
                break

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {"command": " ".join(sys.argv), "steps": step, "held_out_greedy_accuracy": accuracy, "curve": curve, **vars(args)}
    if args.task == "scratchpad":  # the lengths RL starts from: greedy on the held-out set, and 8 samples each
        model.eval()
        record["lengths_greedy"] = length_stats(completions(model, tokenizer, eval_rows, args.task))
        record["lengths_sampled_t1"] = length_stats(completions(model, tokenizer, eval_rows, args.task, 8, 1.0, args.seed))
        model.eval()
    (out / "warmup.json").write_text(json.dumps(record, indent=2))
    print(f"saved to {out}: {step} SFT steps, held-out greedy accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
