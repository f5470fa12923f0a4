"""Benchmark problems from local files: gsm8k, math500, aime24, amc23, humaneval, or any JSONL.

The package ships no data: pass the folder that holds the files (`data_dir`) or a file path.
Math rows come out as {"id", "problem", "answer", ...the original fields}; code rows keep
HumanEval's fields (`prompt`, `test`, `entry_point`, ...) plus "id".
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from rlft.errors import UserError
from rlft.registry import unknown_choice_message
from rlft.reward.math_verifier import reference_answer


@dataclass(frozen=True)
class Benchmark:
    file: str  # name inside the data folder
    kind: str  # "math" or "code"
    problem_fields: tuple[str, ...] = ("problem", "question")  # the first one present is the problem
    id_field: str | None = None


BENCHMARKS = {
    "gsm8k": Benchmark("gsm8k_test.jsonl", "math", ("question",)),
    "math500": Benchmark("math500_test.jsonl", "math", ("problem",), "unique_id"),
    "aime24": Benchmark("aime24_test.jsonl", "math", ("problem",), "id"),
    "amc23": Benchmark("amc23_test.jsonl", "math", ("problem", "question"), "id"),
    "humaneval": Benchmark("humaneval_test.jsonl.gz", "code", ("prompt",), "task_id"),
}


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"benchmark file {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number} is not valid JSON: {e}") from None
    return rows


def load_benchmark(name_or_path: str, kind: str, data_dir: str | Path | None = None, limit: int | None = None,
                   problem_field: str | None = None, answer_field: str = "answer") -> tuple[str, list[dict]]:
    """(benchmark name, rows) for a known benchmark name (its file found in `data_dir`) or a JSONL path."""
    if name_or_path in BENCHMARKS:
        bench = BENCHMARKS[name_or_path]
        if bench.kind != kind:
            raise UserError(f"{name_or_path!r} is a {bench.kind} benchmark; use scripts/eval_{bench.kind}.py")
        if data_dir is None:
            raise UserError(f"benchmark {name_or_path!r} is read from a local file: "
                            f"pass --data-dir (the folder with {bench.file})")
        name, path = name_or_path, Path(data_dir) / bench.file
    elif name_or_path.endswith((".jsonl", ".jsonl.gz")):
        bench = Benchmark(Path(name_or_path).name, kind, ("problem", "question", "prompt"), None)
        name, path = Path(name_or_path).name.split(".")[0], Path(name_or_path)
    else:
        known = [n for n, b in BENCHMARKS.items() if b.kind == kind]
        raise UserError(unknown_choice_message("benchmark", name_or_path, known) + " (or give a .jsonl file)")
    rows = read_jsonl(path)[:limit]
    fields = (problem_field,) if problem_field else bench.problem_fields
    return name, [_row(row, i, bench, fields, answer_field, path) for i, row in enumerate(rows)]


def _row(row: dict, index: int, bench: Benchmark, fields: tuple[str, ...], answer_field: str, path: Path) -> dict:
    out = dict(row)
    out["id"] = str(row.get(bench.id_field, index)) if bench.id_field else str(row.get("id", index))
    if bench.kind == "code":
        if not all(k in row for k in ("prompt", "test", "entry_point")) and "tests" not in row:
            raise UserError(f"{path}: row {index} needs HumanEval fields (prompt, test, entry_point) or 'tests'")
        return out
    problem = next((row[f] for f in fields if f in row), None)
    if problem is None:
        raise UserError(f"{path}: row {index} has none of the problem fields {list(fields)}; pass --problem-field")
    try:
        out["answer"] = reference_answer(row.get(answer_field), row.get("solution"))
    except ValueError:
        raise UserError(f"{path}: row {index} has no {answer_field!r} field; pass --answer-field") from None
    out["problem"] = problem
    return out
