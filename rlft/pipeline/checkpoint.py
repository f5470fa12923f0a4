"""Run-folder checkpoints: written into a temporary folder and renamed, so a crash never leaves half of one.

Each checkpoint lists its files and their sizes in `manifest.json`, written last before the rename; a
checkpoint whose files do not match it (a disk that lost a write, a copy cut short) or whose safetensors
header does not fit the file is skipped with a warning when resuming, and the one before it is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path

PREFIX = "step_"
MANIFEST = "manifest.json"
log = logging.getLogger("rlft")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{PREFIX}{step:06d}"


def staging_dir(run_dir: Path, step: int) -> Path:
    """An empty folder to write checkpoint `step` into before `commit_checkpoint`."""
    tmp = run_dir / "checkpoints" / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for left in (run_dir / "checkpoints").glob(".t*-*"):  # staging or trash folders of a killed run
        if left.is_dir() and left.name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(left, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(run_dir: Path, step: int, tmp: Path, trainer_state: dict, keep: int) -> Path:
    """Finish the staged checkpoint: trainer state, fsync, atomic rename; keep the newest `keep`."""
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    sizes = {}
    for f in sorted(tmp.rglob("*")):  # nested folders too (a LoRA checkpoint's PEFT adapter/, DeepSpeed state)
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            sizes[str(f.relative_to(tmp))] = f.stat().st_size
    _write_synced(tmp / MANIFEST, json.dumps({"files": sizes}, indent=1))
    final = checkpoint_dir(run_dir, step)
    if final.exists():  # re-saving a step (e.g. final == periodic): move the old one aside, then drop it
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    for old in list_checkpoints(run_dir)[:-keep]:
        _discard(old)
    return final


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be loaded (a missing or cut file), or None when it looks whole."""
    manifest = path / MANIFEST
    if not manifest.is_file():  # written by an older rlft: only the safetensors headers can be checked
        files = {}
    else:
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError):
            return f"{MANIFEST} is unreadable"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, {size} were written"
    for f in path.glob("*.safetensors"):
        problem = _safetensors_problem(f)
        if problem:
            return f"{f.name} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header size, a JSON header, then the data its offsets cover."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is cut short"
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            return "is cut short (header)"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "has an unreadable header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return None if 8 + header_len + end == size else f"is {size} bytes, its header needs {8 + header_len + end}"


def _discard(path: Path) -> None:
    """Delete a checkpoint folder so that a crash midway never leaves a half-deleted one under its name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a power cut after commit keeps the checkpoint)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging folders are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that is whole; damaged newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is damaged (%s); skipping it and trying the one before", path, problem)
    return None
