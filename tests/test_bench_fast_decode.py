"""scripts/bench_fast_decode.py: both decode steps timed on the same draws, its table, JSON and plot."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_fast_decode.py"


def test_the_benchmark_times_both_decode_steps_on_the_same_draws(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_fast_decode", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--models", "default", "--dtypes", "float32", "--threads", "1", "--repeats", "1",
                 "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "fast_decode.json").read_text())["rows"]
    assert row["fast_decode_applies"] and row["draws_that_differ"] == 0  # fp32 on the embedded Qwen2: same tokens
    assert row["tokens_per_draw"] == row["transformers_tokens_per_draw"] > 0
    assert row["ratio"] == row["fast_s"] / row["transformers_s"]
    assert "| default | float32 | 1 |" in (tmp_path / "fast_decode.md").read_text()
    assert (tmp_path / "fast_decode.png").stat().st_size > 0
