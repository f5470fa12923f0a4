"""Run-folder checkpoints: staged, fsynced and renamed whole, nested folders included."""

import json

from rlft.pipeline import checkpoint as ckpt


def test_checkpoint_with_nested_folders_commits_whole(tmp_path):
    tmp = ckpt.staging_dir(tmp_path, 3)
    (tmp / "model.safetensors").write_bytes(b"w")
    (tmp / "adapter").mkdir()  # e.g. the PEFT adapter of a LoRA checkpoint
    (tmp / "adapter" / "adapter_model.safetensors").write_bytes(b"a")
    final = ckpt.commit_checkpoint(tmp_path, 3, tmp, {"step": 3}, keep=2)
    assert final == ckpt.checkpoint_dir(tmp_path, 3) and not tmp.exists()
    assert (final / "adapter" / "adapter_model.safetensors").read_bytes() == b"a"
    assert json.loads((final / "trainer_state.json").read_text()) == {"step": 3}


def test_only_the_newest_checkpoints_are_kept_and_staging_folders_ignored(tmp_path):
    for step in (1, 2, 3):
        ckpt.commit_checkpoint(tmp_path, step, ckpt.staging_dir(tmp_path, step), {"step": step}, keep=2)
    ckpt.staging_dir(tmp_path, 4)  # a crash mid-save leaves only a staging folder behind
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path, 3)
