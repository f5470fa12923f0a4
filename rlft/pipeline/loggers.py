"""Experiment trackers (`train.loggers`): every record the driver writes to metrics.jsonl, under the same
metric names (`reward/mean`, `learner/kl`, `rollout/decode_steps`, ...) and the same step, also goes to

- tensorboard: event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`);
- wandb: an offline run in RUN_DIR/wandb, written without a network (`wandb sync RUN_DIR/wandb/offline-run-*`);
- mlflow: a local MLflow store, the SQLite file RUN_DIR/mlflow.db (`mlflow ui --backend-store-uri
  sqlite:///RUN_DIR/mlflow.db`), or the server in $MLFLOW_TRACKING_URI when set. (MLflow's folder store
  cannot hold both `reward/x` and `reward/x/failures`: it maps '/' to folders.)

metrics.jsonl is always written (by the driver, which also truncates it on resume); a resumed run opens
a new tracker run that continues at the resumed step. Each tracker is an optional extra: pip install 'rlft[wandb]'.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from rlft.registry import Registry

TRACKERS: Registry[type] = Registry("logger")


@TRACKERS.register("tensorboard")
class TensorBoardLogger:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@TRACKERS.register("wandb")
class WandbLogger:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        # offline: the run is written to disk and never opens a connection (sync it later if wanted)
        self.run = wandb.init(project="rlft", name=run_dir.name, dir=str(run_dir), mode="offline", config=config,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


@TRACKERS.register("mlflow")
class MlflowLogger:
    def __init__(self, run_dir: Path, config: dict):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        for name in ("alembic", "mlflow.store.db.utils"):  # table creation logs a page at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.client, self.metric = MlflowClient(tracking_uri=uri), Metric
        experiment = self.client.get_experiment_by_name("rlft")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("rlft")
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, float(v), now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackers:
    """The configured trackers, called like one: `log(record)` with the record's `step`, then `close()`."""

    def __init__(self, names: list[str], run_dir: Path, config: dict):
        self.trackers = [TRACKERS.get(name, key="train.loggers")(run_dir, config) for name in names if name != "jsonl"]

    def log(self, record: dict) -> None:
        """One metrics.jsonl record (with its `step`) to every tracker."""
        if not self.trackers:
            return
        metrics = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(metrics, int(record["step"]))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
