"""The YAML presets in configs/ resolve against the typed config (GPU-only choices swapped for CPU ones)."""

from pathlib import Path

import pytest

from rlft.config import resolve_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_folder_ships_presets():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_resolves(path):
    cfg = resolve_config("grpo-ba", str(path), ["rollout.engine=builtin"])  # vllm is not installable here
    assert cfg.reward.functions and cfg.train.steps >= 1


def test_tiny_arithmetic_config_spells_out_the_default_run():
    written = resolve_config("grpo-ba", str(CONFIGS[0].with_name("tiny_arithmetic.yaml")), [])
    assert written.model_dump() == resolve_config("grpo-ba", None, []).model_dump()


def test_reward_names_in_yaml_are_shorthand_for_specs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  functions: [math, {name: digit_credit, weight: 0.5}]\ntransfer:\n  sources: last_digit\n")
    cfg = resolve_config("grpo-ba", str(path), [])
    assert [(f.name, f.weight) for f in cfg.reward.functions] == [("math", 1.0), ("digit_credit", 0.5)]
    assert [s.name for s in cfg.transfer.sources] == ["last_digit"]
