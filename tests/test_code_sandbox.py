"""The code sandbox: hostile programs are contained and fail; HumanEval's references pass."""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from rlft.config import RewardConfig
from rlft.reward import RewardScorer
from rlft.reward.code_reward import build_program, extract_code
from rlft.reward.sandbox import TAIL_BYTES, SandboxLimits, run_python, run_python_many

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIMITS = SandboxLimits(timeout_s=3.0)
PARENT = os.getpid()


def run(source: str, **limits) -> object:
    return run_python(source, SandboxLimits(**{"timeout_s": 3.0, **limits}))


def test_program_passes_when_it_runs_to_its_end_and_fails_on_an_assert():
    ok = run("import math\nassert math.gcd(12, 18) == 6\nprint('hello')")
    assert ok.passed and ok.status == "passed" and ok.stdout == "hello"
    bad = run("assert 1 + 1 == 3, 'wrong sum'")
    assert not bad.passed and bad.status == "failed" and "AssertionError: wrong sum" in bad.error


@pytest.mark.parametrize("exit_code", ["import sys; sys.exit(0)", "import os; os._exit(0)", "exit()", "raise SystemExit"])
def test_leaving_before_the_tests_is_not_a_pass(exit_code):
    result = run(f"{exit_code}\nassert False")
    assert not result.passed


def test_infinite_loop_is_killed_at_the_time_limit():
    result = run("while True:\n    pass", timeout_s=2.0)
    assert not result.passed and result.status in ("timeout", "killed")
    assert result.wall_s < 4.0


def test_sleeping_program_is_killed_at_the_wall_clock_limit():
    result = run("import time\ntime.sleep(60)", timeout_s=1.0)
    assert result.status == "timeout" and result.wall_s < 3.0


def test_fork_bomb_is_contained():
    start = time.monotonic()
    result = run("import os\nwhile True:\n    os.fork()")
    assert not result.passed and time.monotonic() - start < 6.0
    result = run("import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])")
    assert not result.passed


def test_memory_hog_fails_at_the_memory_limit():
    result = run("x = bytearray(2 << 30)\nx[-1] = 1", memory_mb=512)
    assert not result.passed and "MemoryError" in result.error


def test_write_outside_the_temporary_folder_is_refused(tmp_path):
    targets = [tmp_path / "escape.txt", Path("/tmp") / f"rlft-escape-{uuid.uuid4().hex}.txt"]
    for target in targets:
        result = run(f"open({str(target)!r}, 'w').write('escaped')")
        assert not result.passed and not target.exists()
    result = run(f"import os\nos.rename('/etc/hostname', {str(targets[1])!r})")
    assert not result.passed and not targets[1].exists()


def test_writes_inside_the_temporary_folder_work():
    result = run("import os, tempfile\nopen('notes.txt', 'w').write('x')\ntempfile.mkstemp()\nos.makedirs('a/b')")
    assert result.passed, result.stderr


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("RLFT_TEST_SECRET", "hunter2")
    result = run("import os\nassert os.environ.get('RLFT_TEST_SECRET') == 'hunter2'")
    assert not result.passed
    result = run(f"assert b'hunter2' in open('/proc/{PARENT}/environ', 'rb').read()")
    assert not result.passed


def test_opening_a_socket_is_refused():
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)  # a connection would wait in the backlog; accept() then finds it
    port = server.getsockname()[1]
    result = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')")
    assert not result.passed
    result = run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_STREAM)")
    assert not result.passed
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


def test_killing_the_parent_process_fails():
    result = run(f"import os, signal\nos.kill({PARENT}, signal.SIGKILL)")
    assert not result.passed
    result = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert not result.passed
    assert os.getpid() == PARENT  # and we are still here


def test_100_mb_of_output_is_capped():
    result = run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))", output_bytes=1 << 20)
    assert not result.passed and len(result.stdout) <= TAIL_BYTES
    assert "File too large" in result.error or result.status == "killed"


def test_kernel_layers_hold_without_the_audit_hook():
    if "namespaces" not in run("pass").isolation:
        pytest.skip("this machine allows no namespaces (needs root or unprivileged user namespaces)")
    # each program passes only if the kernel stopped it
    programs = {
        "socket": "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\nexcept OSError:\n    pass\n"
                  "else:\n    raise SystemExit('connected')",
        "write": "try:\n    open('/tmp/rlft-kernel-escape.txt', 'w')\nexcept OSError:\n    pass\nelse:\n    raise SystemExit('wrote')",
        "kill": f"import os\ntry:\n    os.kill({PARENT}, 0)\nexcept ProcessLookupError:\n    pass\nelse:\n    raise SystemExit('sees parent')",
        "proc": f"import os\nassert not os.path.exists('/proc/{PARENT}')",
    }
    results = {name: run(src, audit_hook=False) for name, src in programs.items()}
    assert {name: r.passed for name, r in results.items()} == dict.fromkeys(programs, True), results
    assert not Path("/tmp/rlft-kernel-escape.txt").exists()
    assert "audit" not in results["write"].isolation


def test_sandbox_reports_its_isolation_layers():
    assert {"rlimits", "audit"} <= set(run("pass").isolation)


def test_scorer_keeps_scoring_after_hostile_completions():
    hostile = [
        "while True:\n    pass", "import os\nwhile True:\n    os.fork()", "x = bytearray(8 << 30)",
        f"import os\nos.kill({PARENT}, 9)", "import sys\nsys.stdout.write('x' * (100 << 20))",
        "open('/tmp/rlft-scorer-escape.txt', 'w')",
    ]
    good = "def add(a, b):\n    return a + b"
    rows = [{"tests": ["assert add(1, 2) == 3"]}] * (len(hostile) + 1)
    cfg = RewardConfig(functions=[{"name": "code", "args": {"timeout_s": 2.0}}], timeout_s=5.0)
    with RewardScorer(cfg) as scorer:
        rewards, metrics = scorer.score(["p"] * len(rows), hostile + [good], rows)
        assert rewards == [0.0] * len(hostile) + [1.0]
        assert metrics["reward/failures"] == 0  # failing tests is a wrong answer, not a broken reward
        assert scorer.score(["p"], [good], rows[:1])[0] == [1.0]


def test_code_is_taken_from_the_fenced_block_that_defines_it():
    reply = "Here:\n```\n>>> add(1, 2)\n```\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(reply) == "def add(a, b):\n    return a + b\n"
    assert extract_code("    return a + b\n") == "    return a + b\n"


def test_program_keeps_prompt_helpers_for_a_whole_function_and_continues_a_body():
    prompt = "import math\n\ndef helper(x):\n    return x * 2\n\ndef f(x):\n    \"\"\"Doubled.\"\"\"\n"
    test = "def check(candidate):\n    assert candidate(3) == 6"
    whole = "```python\ndef f(x):\n    return helper(x)\n```"
    assert run_python(build_program(prompt, whole, test, "f"), LIMITS).passed
    assert run_python(build_program(prompt, "    return helper(x)\n", test, "f"), LIMITS).passed
    assert not run_python(build_program(prompt, "    return x\n", test, "f"), LIMITS).passed
    with pytest.raises(ValueError, match="no unit tests"):
        build_program(prompt, whole)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA} (clone ../shared beside the repo)")
@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_pass_bodies_fail_every_task():
    with gzip.open(DATA / "humaneval_test.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    programs = [build_program(r["prompt"], r["canonical_solution"], r["test"], r["entry_point"]) for r in rows]
    programs += [build_program(r["prompt"], "    pass\n", r["test"], r["entry_point"]) for r in rows]
    results = run_python_many(programs, max_workers=4)  # each program mostly waits on its start-up
    canonical, stubs = results[: len(rows)], results[len(rows) :]
    assert len(rows) == 164
    assert [r["task_id"] for r, res in zip(rows, canonical) if not res.passed] == []
    assert [r["task_id"] for r, res in zip(rows, stubs) if res.passed] == []


# clears the read-only flag the sandbox set on '/' (mount_setattr), remounts the target writable, then
# writes there: the escape that worked while sandboxed code kept root's capabilities
REMOUNT_ATTACK = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class MountAttr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clear", ctypes.c_uint64), ("prop", ctypes.c_uint64), ("fd", ctypes.c_uint64)]
attr = MountAttr(0, 1, 0, 0)  # clear MOUNT_ATTR_RDONLY, recursively from /
libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr))
libc.mount(b"none", TARGET.encode(), None, 0x20 | 0x1000, None)  # MS_REMOUNT | MS_BIND, without MS_RDONLY
try:
    open(os.path.join(TARGET, "escaped.txt"), "w").write("out")
except OSError:
    pass
else:
    raise SystemExit("wrote into the parent's folder")
"""


def test_kernel_layers_stop_the_remount_escape_without_the_audit_hook(tmp_path):
    if "namespaces" not in run("pass").isolation:
        pytest.skip("this machine allows no namespaces (needs root or unprivileged user namespaces)")
    result = run(f"TARGET = {str(tmp_path)!r}\n" + REMOUNT_ATTACK, audit_hook=False, timeout_s=10.0)
    assert not (tmp_path / "escaped.txt").exists()
    assert result.passed, result.stderr
    assert "nocaps" in result.isolation and "audit" not in result.isolation


def test_missing_kernel_layers_are_reported_once(monkeypatch, caplog):
    from rlft.reward import sandbox

    monkeypatch.setattr(sandbox, "_missing_reported", False)
    with caplog.at_level("WARNING", logger="rlft"):
        sandbox._report_missing_layers(("rlimits", "audit"))
        sandbox._report_missing_layers(("rlimits", "audit"))
    warnings = [r.getMessage() for r in caplog.records if "less isolation" in r.getMessage()]
    assert len(warnings) == 1 and all(name in warnings[0] for name in ("namespaces", "readonly", "nocaps"))
