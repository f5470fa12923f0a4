"""kill -9 at any point of a checkpoint write leaves the last committed checkpoint loadable; a damaged
newest checkpoint is skipped with a warning."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlft.pipeline import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def write_safetensors(path: Path, values: list[float]) -> None:
    """A real safetensors file (one float32 tensor), written by hand so the child needs no torch."""
    data = struct.pack(f"<{len(values)}f", *values)
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


# Commits checkpoints 1 and 2, then checkpoint 3 with keep=2; os.fsync, os.replace and shutil.rmtree count
# their calls and the process kills itself with SIGKILL at call number KILL_AT (0: never; prints the count).
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from tests.test_crash_consistency import write_safetensors
    from rlft.pipeline import checkpoint as ckpt

    run, kill_at = Path(sys.argv[1]), int(sys.argv[2])

    def commit(step):
        tmp = ckpt.staging_dir(run, step)
        write_safetensors(tmp / "model.safetensors", [float(step)] * 1000)
        (tmp / "optimizer.pt").write_bytes(os.urandom(4096))
        ckpt.commit_checkpoint(run, step, tmp, {"step": step}, keep=2)

    commit(1)
    commit(2)
    calls = 0
    def counted(fn):
        def wrapper(*args, **kwargs):
            global calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapper
    os.fsync, os.replace, shutil.rmtree = counted(os.fsync), counted(os.replace), counted(shutil.rmtree)
    commit(3)
    print(calls)
""")


def _child(run: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(run), str(kill_at), str(REPO)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_kill_9_at_every_point_of_a_checkpoint_write_leaves_the_last_committed_one_loadable(tmp_path):
    full = _child(tmp_path / "count", 0)
    assert full.returncode == 0, full.stderr
    points = int(full.stdout.strip())
    assert points >= 5  # fsyncs of the staged files and the manifest, the rename, the pruning
    for kill_at in range(1, points + 1):
        run = tmp_path / f"kill{kill_at}"
        result = _child(run, kill_at)
        assert result.returncode == -signal.SIGKILL, (kill_at, result.stderr)
        latest = ckpt.latest_checkpoint(run)
        assert latest is not None and latest.name in ("step_000002", "step_000003"), kill_at
        assert ckpt.checkpoint_problem(latest) is None
        step = int(latest.name.removeprefix("step_"))
        assert json.loads((latest / "trainer_state.json").read_text()) == {"step": step}
        from safetensors.numpy import load_file

        assert float(load_file(latest / "model.safetensors")["w"][0]) == step
        # the next save of the run cleans what the killed one left behind
        ckpt.staging_dir(run, 4)
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith((".trash-", ".tmp-step_000003"))]
        assert leftovers == [], (kill_at, leftovers)


def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    for step in (1, 2):
        tmp = ckpt.staging_dir(tmp_path, step)
        write_safetensors(tmp / "model.safetensors", [1.0] * 1000)
        ckpt.commit_checkpoint(tmp_path, step, tmp, {"step": step}, keep=2)
    newest = ckpt.checkpoint_dir(tmp_path, 2) / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    with caplog.at_level("WARNING", logger="rlft"):
        assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path, 1)
    assert "step_000002 is damaged" in caplog.text and "model.safetensors" in caplog.text


@pytest.mark.parametrize("manifest", [True, False])
def test_truncated_safetensors_is_found_with_or_without_a_manifest(tmp_path, manifest):
    tmp = ckpt.staging_dir(tmp_path, 1)
    write_safetensors(tmp / "model.safetensors", [1.0] * 1000)
    path = ckpt.commit_checkpoint(tmp_path, 1, tmp, {"step": 1}, keep=2)
    if not manifest:  # a checkpoint written before manifests existed
        (path / ckpt.MANIFEST).unlink()
    assert ckpt.checkpoint_problem(path) is None
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-4])
    assert "model.safetensors" in ckpt.checkpoint_problem(path)
