"""A pool of reward worker processes with a hard time limit per job.

Why processes: a Python thread cannot be stopped, so a reward function that hangs (an endless loop,
a stuck network call, a catastrophic regex) would hold its thread, and its CPU, for the rest of the
run; abandoned threads pile up with every timeout. A worker process can be killed: at its deadline
the pool kills the worker's whole process group (with anything the function started), scores the
job's samples as timeouts and starts a fresh worker. Processes also give math-verify's signal-based
time limits the main thread they need, and keep a reward's crash (segfault, os._exit) off the trainer.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from rlft.errors import UserError

STARTUP_TIMEOUT_S = 120.0  # importing a user's reward module (and sympy) can take a while
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds `rlft/`


class WorkerPool:
    """`size` worker processes that score jobs of (function index, samples) under a deadline each."""

    def __init__(self, specs: list[tuple[str, dict]], size: int, timeout_s: float):
        self.specs, self.size, self.timeout_s = specs, size, timeout_s
        self.workers: list[_Worker] = []
        self.restarts = 0
        try:
            self.workers = [_Worker(specs, timeout_s) for _ in range(size)]
            for worker in self.workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    def run(self, jobs: list[tuple[int, list[tuple]]], deadlines: list[float]) -> list[list[tuple]]:
        """Outcomes of each job (one per sample; see rlft.reward.worker), `deadlines` in seconds per job."""
        results: list[list[tuple] | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (job, deadline on the monotonic clock)
        while pending or busy:
            for slot in range(len(self.workers)):
                if slot not in busy and pending:
                    job = pending.popleft()
                    self.workers[slot].conn.send(("call", *jobs[job]))
                    busy[slot] = (job, time.monotonic() + deadlines[job])
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait([self.workers[s].conn for s in busy], timeout=max(0.0, next_deadline - time.monotonic()))
            for slot in list(busy):
                job, deadline = busy[slot]
                if self.workers[slot].conn in ready:
                    try:
                        results[job] = self.workers[slot].conn.recv()
                    except (EOFError, OSError):  # it died: a crash, os._exit, the OOM killer
                        results[job] = _failed(jobs[job], "exception", "the reward worker process died")
                        self._replace(slot)
                    del busy[slot]
                elif time.monotonic() >= deadline:
                    limit = f"reward call exceeded its time limit of {deadlines[job]:.1f} s; the worker was killed"
                    results[job] = _failed(jobs[job], "timeout", limit)
                    self._replace(slot)
                    del busy[slot]
        return results  # type: ignore[return-value]

    def _replace(self, slot: int) -> None:
        self.workers[slot].kill()
        self.workers[slot] = _Worker(self.specs, self.timeout_s)
        self.workers[slot].wait_ready()
        self.restarts += 1

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        for worker in self.workers:
            worker.kill()
        self.workers = []

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the modules it needs may be gone already
            pass


class _Worker:
    def __init__(self, specs: list[tuple[str, dict]], timeout_s: float):
        self.conn, child = multiprocessing.Pipe()
        path = [PACKAGE_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlft.reward.worker", str(child.fileno())],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        child.close()
        self.conn.send(("init", list(sys.path), specs, timeout_s))

    def wait_ready(self) -> None:
        if not self.conn.poll(STARTUP_TIMEOUT_S):
            self.kill()
            raise UserError(f"a reward worker process did not start within {STARTUP_TIMEOUT_S:.0f} s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise UserError(f"a reward worker process exited at start (exit code {self.proc.wait()})") from None
        if message[0] != "ready":
            self.kill()
            raise UserError(f"a reward worker process could not load the reward functions:\n{message[1]}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its group: whatever the reward function started too
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.conn.close()


def _failed(job: tuple[int, list[tuple]], kind: str, message: str) -> list[tuple]:
    return [("error", kind, message, message)] * len(job[1])
