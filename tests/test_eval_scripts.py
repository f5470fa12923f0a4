"""scripts/eval_math.py and scripts/eval_code.py end to end: sampling, grading, reports, engine choice."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from rlft.eval.runner import check_args, resolve_checkpoint
from rlft.models.loading import EMBEDDED_MODEL_DIR
from rlft.rollout.types import Completion

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA} (clone ../shared beside the repo)")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_path() -> str:
    if (EMBEDDED_MODEL_DIR / "config.json").is_file():
        return "embedded"
    if os.environ.get("RLFT_TEST_MODEL"):  # a model folder built with scripts/make_tiny_model.py --out
        return os.environ["RLFT_TEST_MODEL"]
    pytest.skip("the embedded model is not built (python scripts/make_tiny_model.py) and RLFT_TEST_MODEL is unset")


class ScriptedEngine:
    """An engine that answers each prompt with fixed texts, so that grading can be checked exactly."""

    def __init__(self, texts: list[list[str]]):
        self.texts = texts

    def generate_groups(self, prompts, params):
        for i in range(len(prompts)):
            yield i, [Completion(i, [], [], text, "stop") for text in self.texts[i][: params.n]]


class CharTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) for ch in text]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@needs_data
@pytest.mark.slow
def test_eval_math_writes_json_and_markdown_reports_per_benchmark(model_path, tmp_path, capsys):
    script = load_script("eval_math")
    code = script.main(["--model", model_path, "--benchmarks", "gsm8k", "math500", "--data-dir", str(DATA),
                        "--limit", "2", "--n", "2", "--k", "1", "2", "--max-new-tokens", "8", "--out-dir", str(tmp_path)])
    assert code == 0
    for name in ("gsm8k", "math500"):
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert set(report["metrics"]) == {"pass@1", "pass@2", "maj@1", "maj@2"}
        assert len(report["problems"]) == 2 and all(len(p["samples"]) == 2 for p in report["problems"])
        assert {"text", "extracted", "correct"} <= set(report["problems"][0]["samples"][0])
        assert "| pass@2 |" in (tmp_path / f"{name}.md").read_text()
    assert "gsm8k: pass@1" in capsys.readouterr().out


@needs_data
@pytest.mark.slow
def test_eval_code_runs_completions_against_humaneval_tests(model_path, tmp_path):
    script = load_script("eval_code")
    code = script.main(["--model", model_path, "--benchmarks", "humaneval", "--data-dir", str(DATA), "--limit", "2",
                        "--n", "2", "--k", "1", "2", "--max-new-tokens", "8", "--out-dir", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "humaneval.json").read_text())
    assert set(report["metrics"]) == {"pass@1", "pass@2"} and report["problems"][0]["id"] == "HumanEval/0"
    assert {"status", "error", "correct"} <= set(report["problems"][0]["samples"][0])


def test_eval_math_grades_samples_into_pass_and_majority_metrics(tmp_path):
    script = load_script("eval_math")
    data = write_jsonl(tmp_path / "mine.jsonl", [{"question": "q1", "answer": "#### 18"}, {"question": "q2", "answer": "\\frac12"}])
    args = script.build_parser().parse_args(["--n", "2", "--k", "1", "2", "--out-dir", str(tmp_path / "out")])
    check_args(args)
    _, rows = script.load_benchmark(str(data), "math")
    engine = ScriptedEngine([["The answer is 18.", "\\boxed{17}"], ["\\boxed{0.5}", "so \\boxed{\\dfrac{1}{2}}"]])
    metrics = script.evaluate("mine", rows, engine, CharTokenizer(), args)
    assert metrics == pytest.approx({"pass@1": 0.75, "pass@2": 1.0, "maj@1": 1.0, "maj@2": 1.0})
    report = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert [s["extracted"] for s in report["problems"][0]["samples"]] == ["18", "17"]


def test_eval_code_cuts_base_model_text_at_stop_strings_and_runs_tests(tmp_path):
    script = load_script("eval_code")
    data = write_jsonl(tmp_path / "code.jsonl", [{"task_id": "t/0", "prompt": "def add(a, b):\n",
                                                   "test": "def check(f):\n    assert f(1, 2) == 3", "entry_point": "add"}])
    args = script.build_parser().parse_args(["--n", "2", "--k", "1", "2", "--out-dir", str(tmp_path / "out")])
    check_args(args)
    _, rows = script.load_benchmark(str(data), "code")
    engine = ScriptedEngine([["    return a + b\n\ndef unrelated(:", "    return a - b\n"]])
    metrics = script.evaluate("code", rows, engine, CharTokenizer(), args)
    assert metrics == pytest.approx({"pass@1": 0.5, "pass@2": 1.0})


def test_vllm_engine_fails_clearly_without_vllm(tmp_path, capsys, monkeypatch):
    script = load_script("eval_math")
    data = write_jsonl(tmp_path / "mine.jsonl", [{"question": "q1", "answer": "1"}])
    argv = ["--model", "/nonexistent-not-needed", "--benchmarks", str(data), "--engine", "vllm", "--out-dir", str(tmp_path)]
    monkeypatch.setattr("rlft.models.loading.load_tokenizer", lambda cfg: CharTokenizer())
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert script.main(argv) == 1
    assert "needs the vllm package" in capsys.readouterr().err


def test_checkpoint_folder_resolves_to_its_newest_checkpoint(tmp_path):
    for i, step in enumerate(["step_100", "step_200"]):
        folder = tmp_path / "checkpoints" / step
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        os.utime(folder / "config.json", (time.time() + i, time.time() + i))
    assert resolve_checkpoint(str(tmp_path / "checkpoints")) == str(tmp_path / "checkpoints" / "step_200")
    assert resolve_checkpoint(str(tmp_path / "checkpoints" / "step_100")) == str(tmp_path / "checkpoints" / "step_100")
    assert resolve_checkpoint("embedded") == "embedded"


def test_k_above_n_is_refused(tmp_path):
    script = load_script("eval_math")
    assert script.main(["--n", "2", "--k", "4", "--benchmarks", "gsm8k", "--data-dir", str(tmp_path)]) == 1
