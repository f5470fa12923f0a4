"""End to end through Ray: a few steps, resume == uninterrupted, clean shutdown on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlft.config import resolve_config
from rlft.pipeline import checkpoint as ckpt

pytestmark = pytest.mark.slow

SMALL = [
    "rollout.prompts_per_step=8", "rollout.group_size=4", "data.eval_size=32", "train.eval_every=2",
    "train.save_every=2", "train.progress=false", "ray.torch_threads=1",
]
# quantities that depend only on the computation, not on the machine's speed
DETERMINISTIC = ["reward/mean", "learner/pg_loss", "learner/grad_norm", "learner/entropy", "response/length_mean",
                 "eval/accuracy"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _records(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def test_few_steps_through_ray_write_metrics_checkpoints_and_summary(ray_cluster, tmp_path):
    from rlft.pipeline.driver import train

    cfg = resolve_config("grpo-ba", None, [*SMALL, "train.steps=3", f"train.output_dir={tmp_path}", "train.run_name=a"])
    summary = train(cfg)
    run = tmp_path / "a"
    assert summary["steps"] == 3 and 0.0 <= summary["final_accuracy"] <= 1.0
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    records = _records(run)
    assert sorted(records) == [0, 1, 2, 3]
    # the engine's own statistics reach every step's record, and the summary holds their sum over the run
    for key in ("decode_steps", "generated_tokens", "peak_kv_bytes", "reserved_kv_bytes", "length_predictions"):
        assert all(f"rollout/{key}" in records[step] for step in (1, 2, 3)), key
    assert all(records[step]["rollout/decode_steps"] > 0 for step in (1, 2, 3))
    decode_steps = sum(records[step]["rollout/decode_steps"] for step in (1, 2, 3))
    assert json.loads((run / "summary.json").read_text())["rollout/decode_steps"] == decode_steps
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]  # keep_checkpoints=2, no staging leftovers
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_000003")  # plain HF format


def test_max_minutes_ends_the_run_after_the_step_that_passes_it_with_eval_and_checkpoint(ray_cluster, tmp_path):
    from rlft.pipeline.driver import train

    cfg = resolve_config("grpo-ba", None, [*SMALL, "train.steps=50", "train.max_minutes=0.0001", "train.eval_every=0",
                                           f"train.output_dir={tmp_path}", "train.run_name=t"])
    summary = train(cfg)
    assert summary["steps"] == 1
    assert sorted(_records(tmp_path / "t")) == [0, 1] and "eval/accuracy" in _records(tmp_path / "t")[1]
    assert (tmp_path / "t" / "checkpoints" / "step_000001").is_dir()


def test_resume_gives_the_same_next_metrics_as_an_uninterrupted_run(ray_cluster, tmp_path):
    from rlft.pipeline.driver import train

    common = [*SMALL, f"train.output_dir={tmp_path}"]
    train(resolve_config("grpo-ba", None, [*common, "train.steps=4", "train.run_name=straight"]))
    train(resolve_config("grpo-ba", None, [*common, "train.steps=2", "train.run_name=resumed"]))
    resumed_cfg = resolve_config("grpo-ba", None, [*common, "train.steps=4", "train.run_name=resumed"])
    train(resumed_cfg, resume_dir=tmp_path / "resumed")

    straight, resumed = _records(tmp_path / "straight"), _records(tmp_path / "resumed")
    assert sorted(resumed) == [0, 1, 2, 3, 4]
    for step in (3, 4):
        for key in DETERMINISTIC:
            if key in straight[step]:
                assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-9), (step, key)


def _processes_with(marker: str) -> set[int]:
    """Processes whose environment holds `marker`: the run's driver and every Ray process it started
    (they inherit its environment), and no one else's on a shared machine."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.add(int(pid))
        except OSError:
            pass
    return found


def _as_a_background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def test_ctrl_c_saves_the_finished_steps_names_the_folder_and_leaves_no_ray_processes(tmp_path):
    marker = f"RLFT_TEST_RUN={os.getpid()}-{time.time_ns()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlft.train", *SMALL, "train.steps=500", "train.save_every=100",
         f"train.output_dir={tmp_path}", "train.run_name=c"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_as_a_background_job,  # SIGINT ignored and blocked, as a launcher may leave it: still stops
    )
    metrics = tmp_path / "c" / "metrics.jsonl"
    deadline = time.time() + 600  # generous: Ray's start alone took minutes on a machine at load ~60
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    assert metrics.exists(), proc.stderr.read() if proc.poll() is not None else "no metrics in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "RUN_DIR" not in err
    assert f"--resume {tmp_path / 'c'}" in err, err
    finished = max(json.loads(line)["step"] for line in metrics.read_text().splitlines())
    latest = ckpt.latest_checkpoint(tmp_path / "c")
    if "saved " in err:  # stopped between steps: the finished ones are in a checkpoint named in the message
        assert latest is not None and str(latest) in err
        assert json.loads((latest / "trainer_state.json").read_text())["step"] == finished
    else:  # stopped inside a learner update: nothing new could be saved, and it says so
        assert "no checkpoint" in err or str(latest) in err
    deadline = time.time() + 30  # Ray's processes exit a moment after the driver
    while time.time() < deadline and _processes_with(marker):
        time.sleep(1)
    assert _processes_with(marker) == set()
