"""Evaluate a model on code benchmarks: completions run against unit tests in the sandbox.

    python scripts/eval_code.py --model embedded --benchmarks humaneval --data-dir ../shared/data
    python scripts/eval_code.py --model MODEL --benchmarks humaneval --data-dir DIR --n 10 --k 1 5 10 --temperature 0.8

Benchmarks: humaneval (read from --data-dir), or any JSONL in its format (prompt, test,
entry_point) or with a `tests` field. Without --chat-template the model continues the prompt's
function and generation stops at HumanEval's stop strings; with it, code is taken from the reply's
fenced block. Reports pass@1 and unbiased pass@k as JSON + markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlft.eval.benchmarks import load_benchmark  # noqa: E402
from rlft.eval.metrics import summarize  # noqa: E402
from rlft.eval.runner import add_common_args, run_benchmarks, sample_texts, write_report  # noqa: E402
from rlft.reward.code_reward import build_program  # noqa: E402
from rlft.reward.sandbox import SandboxLimits, run_python_many  # noqa: E402

STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]  # a base model's function has ended
CHAT_TEMPLATE = "Complete the following Python function. Reply with the whole function in a ```python block.\n\n{prompt}"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", default=["humaneval"], help="names or .jsonl files")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="wall-clock limit of one program, seconds")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit of one program, MiB")
    parser.add_argument("--workers", type=int, help="programs run at once (default: CPU count)")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate every benchmark given; the exit code is 0, or the UserError's code after one line on stderr."""
    args = build_parser().parse_args(argv)
    return run_benchmarks(args, lambda b: load_benchmark(b, "code", args.data_dir, args.limit), evaluate)


def evaluate(name: str, rows: list[dict], engine, tokenizer, args: argparse.Namespace) -> dict:
    """Sample, run the tests, and write the reports of one benchmark; returns its metrics."""
    start = time.monotonic()
    prompts = [CHAT_TEMPLATE.format(prompt=r["prompt"]) if args.chat_template else r["prompt"] for r in rows]
    texts = sample_texts(engine, tokenizer, prompts, args, stop=[] if args.chat_template else STOP, desc=name)
    programs = [build_program(row["prompt"], text, row.get("test"), row.get("entry_point"), row.get("tests"))
                for row, samples in zip(rows, texts) for text in samples]
    limits = SandboxLimits(timeout_s=args.timeout_s, memory_mb=args.memory_mb)
    from tqdm import tqdm

    with tqdm(total=len(programs), desc=f"{name} tests", unit="program") as bar:
        results = run_python_many(programs, limits, args.workers, on_done=lambda i, r: bar.update(1))
    problems, correct = [], []
    for p, (row, samples) in enumerate(zip(rows, texts)):
        ran = results[p * args.n : (p + 1) * args.n]
        correct.append([r.passed for r in ran])
        problems.append({"id": row["id"], "prompt": prompts[p], "samples": [
            {"text": t, "status": r.status, "error": r.error, "correct": r.passed} for t, r in zip(samples, ran)]})
    metrics = summarize(correct, args.k)
    write_report(name, args, metrics, problems, time.monotonic() - start)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
