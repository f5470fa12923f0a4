"""Benchmark loaders: the five shipped benchmarks and user JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlft.errors import UserError
from rlft.eval.benchmarks import load_benchmark

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA} (clone ../shared beside the repo)")


@needs_data
@pytest.mark.parametrize("name, kind, count, first_answer", [
    ("gsm8k", "math", 1319, "18"), ("math500", "math", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("aime24", "math", 30, "204"), ("amc23", "math", 40, "27"), ("humaneval", "code", 164, None),
])
def test_benchmarks_load_with_problems_answers_and_ids(name, kind, count, first_answer):
    loaded_name, rows = load_benchmark(name, kind, DATA)
    assert loaded_name == name and len(rows) == count
    assert len({r["id"] for r in rows}) == count
    if kind == "math":
        assert rows[0]["answer"] == first_answer and all(r["problem"] and r["answer"] for r in rows)
    else:
        assert rows[0]["id"] == "HumanEval/0" and all(r["entry_point"] in r["prompt"] for r in rows)


def test_user_jsonl_with_question_and_answer_fields(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "answer": 4}]))
    name, rows = load_benchmark(str(path), "math", limit=1)
    assert name == "mine" and rows == [{"question": "1+1?", "answer": "2", "id": "0", "problem": "1+1?"}]
    path.write_text(json.dumps({"text": "1+1?", "solution_value": 2}))
    with pytest.raises(UserError, match="problem fields"):
        load_benchmark(str(path), "math")
    name, rows = load_benchmark(str(path), "math", problem_field="text", answer_field="solution_value")
    assert rows[0]["problem"] == "1+1?" and rows[0]["answer"] == "2"


def test_benchmark_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="did you mean 'gsm8k'"):
        load_benchmark("gsm8", "math", tmp_path)
    with pytest.raises(UserError, match="--data-dir"):
        load_benchmark("math500", "math", None)
    with pytest.raises(UserError, match="eval_code.py"):
        load_benchmark("humaneval", "math", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_benchmark("aime24", "math", tmp_path)
