"""The TRL comparison's bookkeeping: time to a gain uses full trailing 5-eval means, memory sums a process tree."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_vs_trl.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_gain_waits_for_the_five_eval_mean_not_one_lucky_eval():
    bench = load_script()
    acc = [0.30, 0.60, 0.30, 0.30, 0.30, 0.45, 0.50, 0.55, 0.60, 0.60]
    evals = [{"step": 10 * i, "train_s": 5.0 * i, "accuracy": a} for i, a in enumerate(acc)]
    assert bench.time_to_gain(evals, 10) == 5.0 * 7  # the lucky 0.60 at eval 1 alone would have counted at once
    assert bench.time_to_gain(evals, 20) == 5.0 * 9
    assert bench.time_to_gain(evals, 50) is None


def test_tree_memory_counts_children_of_the_process():
    bench = load_script()
    code = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(2)"
    proc = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"])
    memory = bench.TreeMemory(proc.pid, interval=0.05)
    proc.wait()
    result = memory.stop()
    assert result["processes"] >= 2 and result["sum_peak_mib"] >= 200


def test_tree_memory_names_a_process_by_what_it_becomes_not_how_it_started():
    # a Ray worker is a default worker (or the shell that starts it) before it takes its actor's name
    bench = load_script()
    python = os.path.basename(sys.executable)
    proc = subprocess.Popen(["bash", "-c", f"sleep 0.6; exec {sys.executable} -c 'import time; time.sleep(1.2)'"])
    memory = bench.TreeMemory(proc.pid, interval=0.05)
    proc.wait()
    roles = memory.stop()["by_role_mib"]
    assert python in roles and "bash" not in roles, roles
