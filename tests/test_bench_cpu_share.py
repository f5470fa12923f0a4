"""The CPU accounting's bookkeeping: a run's step read from its metrics, CPU time summed over a process tree."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_cpu_share.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_cpu_share", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_window_reads_the_newest_step_and_skips_a_half_written_record(tmp_path):
    bench = load_script()
    assert bench.last_step(tmp_path) == 0  # before the run folder has metrics
    run = tmp_path / "grpo-ba-1"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0}) + "\n" + json.dumps({"step": 7}) + "\n{\"step\": 8, \"rew")
    assert bench.last_step(tmp_path) == 7


def test_cpu_time_counts_the_busy_child_and_names_the_root_driver():
    bench = load_script()
    spin = "import time; t = time.process_time(); exec('while time.process_time() - t < 0.6: pass')"
    proc = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"])
    root = psutil.Process(proc.pid)
    seen = {}
    while proc.poll() is None:  # each process's latest reading (a process that exited keeps its last one)
        seen.update(bench.cpu_seconds(root))
        time.sleep(0.05)
    roles = [role for role, _ in seen.values()]
    assert roles.count("driver") == 1
    assert sum(seconds for role, seconds in seen.values() if role != "driver") >= 0.4
