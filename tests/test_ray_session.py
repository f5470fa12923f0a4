"""A local run starts a private Ray on loopback; a ray.address that cannot be joined stops with one message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlft.config import RLConfig
from rlft.errors import UserError
from rlft.pipeline.ray_session import ray_session

REPO = Path(__file__).resolve().parents[1]

# In a child process, so that no Ray the test session started is reused: start the run's Ray the way
# rlft.train does, with RAY_ADDRESS naming a dead cluster, start one actor, then list the listening
# sockets of every process of the Ray instance.
PROBE = textwrap.dedent("""
    import json, os, time, psutil, ray
    from rlft.config import RLConfig
    from rlft.pipeline.ray_session import close_ray, ray_session

    cfg = RLConfig()
    cfg.ray.num_cpus = 1
    started = ray_session(cfg)

    @ray.remote(num_cpus=0)  # as the run's actors are
    class Probe:
        def pid(self):
            return os.getpid()

    probe = Probe.remote()  # held: an actor without a handle exits
    actor_pid = ray.get(probe.pid.remote())
    time.sleep(2)  # agents open their ports a moment after start
    tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
    pids = {p.pid for p in tree}
    listening = sorted({(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN and c.pid in pids})
    idle = [p.pid for p in tree if " ".join(p.cmdline()).startswith("ray::IDLE")]
    print("RESULT " + json.dumps({"started": started, "actor_in_tree": actor_pid in pids,
                                  "listening": listening, "processes": len(pids), "idle_workers": idle}))
    close_ray(started)
""")


@pytest.fixture(scope="module")
def probe() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_local_ray_ignores_ray_address_env_and_starts_its_own(probe):
    # RAY_ADDRESS names a dead cluster: joining it would hang; the run starts its own instead
    assert probe["started"] and probe["actor_in_tree"]


def test_local_ray_listens_on_loopback_only(probe):
    assert probe["listening"], "found no listening socket at all: the probe did not see Ray's processes"
    beyond = [(ip, port) for ip, port, _ in probe["listening"] if not _loopback(ip)]
    assert not beyond, f"Ray listens beyond loopback: {beyond}"


def test_local_ray_keeps_no_idle_worker_processes(probe):
    # a run creates only actors; a prestarted worker would idle beside them for the whole run (~80 MiB)
    assert probe["idle_workers"] == []


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


def test_unreachable_ray_address_stops_with_one_message(monkeypatch):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray instance of this test session is running")
    cfg = RLConfig()
    cfg.ray.address = "127.0.0.1:1"
    with pytest.raises(UserError) as e:
        ray_session(cfg)
    message = str(e.value)
    assert "ray.address=127.0.0.1:1" in message and "port" in message and "auth" in message.lower()
    assert not ray.is_initialized()
