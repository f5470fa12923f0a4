"""Evaluate a model on math benchmarks: pass@1, unbiased pass@k and maj@k, with JSON + markdown reports.

    python scripts/eval_math.py --model embedded --benchmarks gsm8k math500 --data-dir ../shared/data
    python scripts/eval_math.py --model runs/my-run/checkpoints --benchmarks aime24 --data-dir DIR --n 16 --k 1 4 16
    python scripts/eval_math.py --model Qwen/Qwen2.5-Math-1.5B --benchmarks my_problems.jsonl --engine vllm

Benchmarks: gsm8k, math500, aime24, amc23 (files read from --data-dir), or any JSONL with a
problem (`problem`/`question`, or --problem-field) and an `answer` field. A sample is correct when
its final answer (\\boxed{}, '####' or 'the answer is') is equivalent to the reference.
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
from rlft.reward.math_verifier import answers_equal, extract_answer  # noqa: E402

DEFAULT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", nargs="+", default=["gsm8k"], help="names or .jsonl files")
    parser.add_argument("--prompt-template", default=DEFAULT_TEMPLATE, help="format string with {problem}")
    parser.add_argument("--problem-field", help="JSONL field holding the problem (default: problem, then question)")
    parser.add_argument("--answer-field", default="answer", help="JSONL field holding the reference answer")
    parser.add_argument("--verify-timeout-s", type=float, default=5.0, help="time limit of one equivalence check")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate every benchmark given; the exit code is 0, or the UserError's code after one line on stderr."""
    args = build_parser().parse_args(argv)
    if "{problem}" not in args.prompt_template:
        build_parser().error("--prompt-template must contain {problem}")
    def load(benchmark: str) -> tuple[str, list[dict]]:
        return load_benchmark(benchmark, "math", args.data_dir, args.limit, args.problem_field, args.answer_field)

    return run_benchmarks(args, load, evaluate)


def evaluate(name: str, rows: list[dict], engine, tokenizer, args: argparse.Namespace) -> dict:
    """Sample, grade, and write the reports of one benchmark; returns its metrics."""
    start = time.monotonic()
    prompts = [args.prompt_template.format(problem=row["problem"]) for row in rows]
    texts = sample_texts(engine, tokenizer, prompts, args, stop=[], desc=name)
    problems, correct, answers = [], [], []
    for row, prompt, samples in zip(rows, prompts, texts):
        extracted = [extract_answer(t) for t in samples]
        right = [a is not None and answers_equal(a, row["answer"], args.verify_timeout_s) for a in extracted]
        correct.append(right)
        answers.append(extracted)
        problems.append({"id": row["id"], "prompt": prompt, "answer": row["answer"],
                         "samples": [{"text": t, "extracted": a, "correct": c} for t, a, c in zip(samples, extracted, right)]})
    metrics = summarize(correct, args.k, answers)
    write_report(name, args, metrics, problems, time.monotonic() - start)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
