"""Run-folder checkpoints: written into a temporary folder and renamed, so a crash never leaves half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

PREFIX = "step_"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:06d}"


def staging_dir(run_dir: Path, step: int) -> Path:
    """An empty folder to write checkpoint `step` into before `commit_checkpoint`."""
    tmp = run_dir / "checkpoints" / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(run_dir: Path, step: int, tmp: Path, trainer_state: dict, keep: int) -> Path:
    """Finish the staged checkpoint: trainer state, fsync, atomic rename; keep the newest `keep`."""
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    for f in tmp.rglob("*"):  # nested folders too (a LoRA checkpoint's PEFT adapter/, DeepSpeed state)
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    final = checkpoint_dir(run_dir, step)
    if final.exists():  # re-saving a step (e.g. final == periodic): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging folders are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
