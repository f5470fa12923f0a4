"""scripts/compare_staleness.py: its summary of finished run folders (the runs themselves are rlft.train)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("compare_staleness", ROOT / "scripts" / "compare_staleness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_to_gain_needs_a_full_five_eval_window_holding_the_start():
    script = _script()
    evals = [(0, 0.4), (10, 0.9), (20, 0.5), (30, 0.5), (40, 0.5), (50, 0.7), (60, 0.7)]
    assert script.step_to_gain(evals, 0.10) == 40  # (0.4 + 0.9 + 0.5 * 3) / 5 = 0.56 >= 0.5
    assert script.step_to_gain(evals, 0.20) == 50  # 0.62 at step 50
    assert script.step_to_gain(evals, 0.50) is None


def test_compare_staleness_summarises_finished_runs_without_running_them_again(tmp_path, monkeypatch):
    script = _script()
    for label, seed, acc in (("sync", 0, 0.6), ("sync", 1, 0.5), ("async", 0, 0.4), ("async", 1, 0.45)):
        run = tmp_path / f"{label}-{seed}" / "run"
        run.mkdir(parents=True)
        rows = [{"step": s, "eval/accuracy": 0.3 if s == 0 else acc} for s in range(0, 101, 10)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (run / "summary.json").write_text("{}")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["compare_staleness.py", "--settings", "sync", "async", "--seeds", "0", "1",
                                      "--workdir", str(tmp_path), "--out", str(out)])
    ran = []
    monkeypatch.setattr(script.subprocess, "run", lambda *a, **k: ran.append(a))
    script.main()
    assert ran == []
    results = json.loads((out / "staleness.json").read_text())["results"]
    assert results["sync"]["mean_10_40"] == 0.55 and results["sync"]["seeds"]["0"]["step_to_+20"] == 40
    assert abs(results["async"]["mean_all"] - 0.425) < 1e-9 and results["async"]["seeds"]["0"]["step_to_+20"] is None
    assert (out / "staleness.png").stat().st_size > 0 and "| sync |" in (out / "staleness.md").read_text()
