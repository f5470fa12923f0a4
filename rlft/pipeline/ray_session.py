"""Ray for one run: a private local instance on loopback, or a cluster named by `ray.address`.

A local run never joins what `/tmp/ray/ray_current_cluster` or `RAY_ADDRESS` names (a stale file left
by a crashed `ray start` would make `ray.init()` retry a dead address forever), keeps its session files
in a folder of its own (so no other `ray.init()` on the machine finds and joins it), and binds every
port to loopback. A `ray.address` that cannot be joined stops the run at start with one message.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import ray
import torch

from rlft.config import RLConfig
from rlft.errors import UserError

log = logging.getLogger("rlft")

# Ray reads this to pick the node's address: off, the node address is 127.0.0.1 and Ray's gRPC
# servers, its runtime-env agent and its metrics listen on loopback only (Ray 2.60:
# services.get_node_ip_address). Left on, they listen on every interface.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CONNECT_TIMEOUT_S = 5.0
START_ATTEMPTS = 3  # Ray gives its processes a fixed 30 s to start (ray/_private/node.py)

_private_dir: str | None = None


def ray_session(cfg: RLConfig) -> bool:
    """Join `ray.address` or start a private local Ray; returns whether this process started it."""
    if ray.is_initialized():
        return False
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p),
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    kwargs = dict(runtime_env={"env_vars": env}, logging_level=logging.WARNING, log_to_driver=True)
    if cfg.ray.address:
        _join(cfg.ray.address, kwargs)
        return False
    # Ray starts workers at niceness 15; our actors do the run's real work while the driver waits,
    # so at that priority any other process on the machine (a build, a test) would starve them.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray prestarts idle workers for tasks; a run creates only actors, each in a process of its own, so those
    # idled for the whole run (one per CPU cap: 79 MiB here).
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    if not torch.cuda.is_available():  # DeepSpeed (imported by transformers/peft) would warn in every actor
        env["DS_ACCELERATOR"] = os.environ.get("DS_ACCELERATOR", "cpu")
    global _private_dir
    _private_dir = tempfile.mkdtemp(prefix="rlft-ray-")  # short: Ray's socket paths live under it
    for attempt in range(1, START_ATTEMPTS + 1):
        with _loopback_only():
            # address="local" starts a new instance whatever RAY_ADDRESS or ray_current_cluster say
            try:
                ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                         _temp_dir=_private_dir, **kwargs)
                return True
            except Exception as e:  # Ray raises a bare Exception when its processes do not start in time
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                ray.shutdown()  # stops what did start
                log.warning("the local Ray did not start (attempt %d of %d): %s", attempt, START_ATTEMPTS, first)
    raise UserError(f"the local Ray did not start in {START_ATTEMPTS} attempts ({first}); Ray waits 30 s for its "
                    f"processes, which a very busy machine can miss; see its logs under {_private_dir}")


def close_ray(started: bool) -> None:
    """Shut down the Ray this process started and remove its private session folder."""
    global _private_dir
    if started:
        ray.shutdown()
        if _private_dir is not None:
            shutil.rmtree(_private_dir, ignore_errors=True)
            _private_dir = None


@contextmanager
def _loopback_only():
    """Ray's node address is 127.0.0.1 while the local instance starts (its processes inherit the env)."""
    from ray._private import ray_constants  # read at call time by services.get_node_ip_address

    saved_env, saved_flag = os.environ.get(LOOPBACK_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ONLY_ENV, None)
        else:
            os.environ[LOOPBACK_ONLY_ENV] = saved_env


def _join(address: str, kwargs: dict) -> None:
    """ray.init(address) with a reachability check first: Ray itself retries a dead address for minutes."""
    hint = (f"check that a Ray head runs there (`ray status --address {address}`), that the port is the GCS "
            "port `ray start --head` printed, that this machine can reach the node address, and that "
            "RAY_AUTH_TOKEN (or ~/.ray/auth_token) matches the cluster's token; or drop ray.address to start "
            "a local Ray")
    target = _gcs_host_port(address, hint)
    if target is not None:
        try:
            socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(f"ray.address={address}: cannot connect to {target[0]}:{target[1]} ({e}); {hint}") from None
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"ray.address={address}: Ray could not join the cluster ({first}); {hint}") from None


def _gcs_host_port(address: str, hint: str) -> tuple[str, int] | None:
    """(host, port) that `address` names; None for a Ray client address (ray://), checked by Ray itself."""
    if "://" in address:
        return None
    from ray._private import services

    try:
        resolved = services.canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as e:
        raise UserError(f"ray.address={address}: {e}; {hint}") from None
    if resolved is None:
        raise UserError(f"ray.address={address}: no running Ray cluster found; {hint}")
    host, _, port = resolved.rpartition(":")
    if not port.isdigit():
        raise UserError(f"ray.address={address}: expected host:port; {hint}")
    return host.strip("[]"), int(port)
