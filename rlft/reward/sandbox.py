"""Running untrusted Python (model-written code and its unit tests) in a sandboxed subprocess.

Each program gets a fresh temporary folder, an environment without the trainer's variables, and a
new session whose whole process group is killed at the wall-clock limit. Inside, the runner
(sandbox_runner.py) adds namespaces, a read-only file system, dropped capabilities, rlimits and an audit
hook; its docstring lists the layers. A kernel layer the machine cannot provide is reported once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlft.errors import UserError

RUNNER = Path(__file__).with_name("sandbox_runner.py")
TAIL_BYTES = 4096  # of stdout/stderr kept in a result, for logs and reports
# the kernel layers that hold without the audit hook, and what is lost without each
KERNEL_LAYERS = {
    "namespaces": "no network, PID or mount namespace (needs root or unprivileged user namespaces)",
    "readonly": "the file system outside the work folder stays writable",
    "nocaps": "the program keeps its capabilities and could undo the other layers",
}
log = logging.getLogger("rlft")
_missing_reported = False


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed program."""

    timeout_s: float = 5.0  # wall clock, then the process group is killed
    cpu_s: float | None = None  # CPU time (RLIMIT_CPU); default: timeout_s
    memory_mb: int = 1024  # address space (RLIMIT_AS), counted in MiB
    output_bytes: int = 1 << 20  # cap on stdout, on stderr and on every file written (RLIMIT_FSIZE)
    max_processes: int = 32  # RLIMIT_NPROC when the program runs as its own unprivileged user
    drop_root: bool = True  # when rlft runs as root, run the program as 'nobody' if it can read Python
    audit_hook: bool = True  # False only to check what the kernel layers hold on their own (tests)


@dataclass
class SandboxResult:
    """What one program did. `passed` is True only if it ran to its end within the limits."""

    passed: bool
    status: str  # "passed", "failed" (exception or early exit), "timeout" or "killed" (by a signal)
    returncode: int
    error: str  # last line of stderr, e.g. "AssertionError" ("" when passed)
    stdout: str  # its last TAIL_BYTES
    stderr: str
    wall_s: float
    isolation: tuple[str, ...]  # layers the runner applied (see sandbox_runner.py)


def run_python(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `source` as a Python program in the sandbox; never raises for anything the program does."""
    if os.name != "posix":
        raise UserError("the code sandbox needs Linux (or another POSIX system with the resource module)")
    box = Path(tempfile.mkdtemp(prefix="rlft-sandbox-"))
    try:
        return _run_in(box, source, limits)
    finally:
        shutil.rmtree(box, ignore_errors=True)


def run_python_many(
    sources: list[str], limits: SandboxLimits = SandboxLimits(), max_workers: int | None = None,
    on_done: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs, `max_workers` at a time (default: CPU count); results in input order."""
    workers = max_workers or os.cpu_count() or 1
    results: list[SandboxResult | None] = [None] * len(sources)

    def one(i: int) -> None:
        results[i] = run_python(sources[i], limits)
        if on_done is not None:
            on_done(i, results[i])

    # threads are enough: each one only waits on its subprocess
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(sources))))
    return results  # type: ignore[return-value]


def _run_in(box: Path, source: str, limits: SandboxLimits) -> SandboxResult:
    # box (0711, ours) holds the program and the output files; only box/work is the program's
    work = box / "work"
    work.mkdir()
    box.chmod(0o711)
    (box / "program.py").write_text(source, encoding="utf-8")
    if os.getuid() == 0 and limits.drop_root:
        os.chown(work, 65534, 65534)  # the runner may switch to 'nobody' (it decides)
    settings = {
        "cpu_s": limits.cpu_s or limits.timeout_s,
        "memory_bytes": limits.memory_mb << 20,
        "file_bytes": limits.output_bytes,
        "max_processes": limits.max_processes,
        "drop_root": limits.drop_root,
        "audit_hook": limits.audit_hook,
    }
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    nonce = secrets.token_hex(16)
    start = time.monotonic()
    timed_out = False
    with open(box / "stdout", "wb") as out, open(box / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-I", str(RUNNER), str(box), json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=str(work), env=env, start_new_session=True,
        )
        try:
            proc.stdin.write(f"{nonce}\n".encode())
            proc.stdin.close()
        except OSError:
            pass  # it already died; its status says why
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
    wall = time.monotonic() - start
    _kill_group(proc.pid)  # anything it started that is still in its group
    stdout, stderr = _tail(box / "stdout"), _tail(box / "stderr")
    passed = not timed_out and proc.returncode == 0 and stdout.rstrip("\n").endswith(nonce)
    if passed:
        status = "passed"
    elif timed_out:
        status = "timeout"
    elif proc.returncode < 0 or proc.returncode > 128:
        status = "killed"
    else:
        status = "failed"
    lines = stderr.strip().splitlines()
    error = "" if passed else (lines[-1] if lines else f"exit code {proc.returncode}")
    if timed_out:
        error = f"wall-clock limit of {limits.timeout_s} s"
    isolation_file = box / "isolation"
    isolation = tuple(isolation_file.read_text().split(",")) if isolation_file.is_file() else ()
    _report_missing_layers(isolation)
    stdout = stdout.replace(nonce, "").rstrip("\n")
    return SandboxResult(passed, status, proc.returncode, error, stdout, stderr, wall, isolation)


def _report_missing_layers(isolation: tuple[str, ...]) -> None:
    """Say once per process which kernel layers this machine could not provide (the audit hook remains)."""
    global _missing_reported
    missing = [f"{name} ({why})" for name, why in KERNEL_LAYERS.items() if name not in isolation]
    if missing and isolation and not _missing_reported:
        _missing_reported = True
        log.warning("code sandbox: running with less isolation on this machine: %s", "; ".join(missing))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")
