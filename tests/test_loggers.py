"""train.loggers: tensorboard, wandb (offline) and mlflow (local SQLite store) hold the metric names and steps of
metrics.jsonl, read back from what each wrote."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from rlft.config import resolve_config
from rlft.errors import ConfigError


def tensorboard_scalars(run: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_history(run: Path) -> dict[str, list[int]]:
    """The history records of the offline run's .wandb file (a LevelDB-style log of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []  # 7: the file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            records.append(chunk)
            chunk = b""
    out: dict[str, list[int]] = {}
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: i.value_json for i in record.history.item}
            for key in items:
                if not key.startswith("_"):
                    out.setdefault(key, []).append(int(json.loads(items["_step"])))
    return out


def mlflow_metrics(run: Path) -> dict[str, list[int]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("rlft").experiment_id])
    return {k: [m.step for m in client.get_metric_history(mlrun.info.run_id, k)] for k in mlrun.data.metrics}


@pytest.mark.slow
def test_every_tracker_holds_the_metric_names_and_steps_of_metrics_jsonl(tmp_path, monkeypatch):
    for package in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(package)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from rlft.pipeline.driver import train

    cfg = resolve_config("grpo-ba", None, [
        "rollout.prompts_per_step=4", "rollout.group_size=4", "data.eval_size=8", "train.eval_every=0",
        "train.save_every=0", "train.progress=false", "ray.torch_threads=1", "train.steps=2",
        "train.loggers=[jsonl, tensorboard, wandb, mlflow]", f"train.output_dir={tmp_path}", "train.run_name=t",
    ])
    train(cfg)
    run = tmp_path / "t"
    want: dict[str, list[int]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key in record:
            if key != "step":
                want.setdefault(key, []).append(record["step"])
    assert "rollout/decode_steps" in want and "eval/accuracy" in want and "learner/pg_loss" in want
    assert tensorboard_scalars(run) == want
    assert wandb_history(run) == want
    assert mlflow_metrics(run) == want


def test_a_tracker_without_its_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.loggers.*'wandb' needs the wandb package: pip install 'rlft\[wandb\]'"):
        resolve_config("grpo-ba", None, ["train.loggers=[jsonl, wandb]"])
