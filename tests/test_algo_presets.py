"""`--algo` presets: named bundles of algorithm options, each still overridable."""

from __future__ import annotations

import pytest

from rlft.algorithms import ALGO_PRESETS
from rlft.config import resolve_config


@pytest.mark.parametrize("name", ["grpo", "grpo-token", "dr-grpo", "grpo-ba", "rloo", "reinforce++"])
def test_every_preset_resolves_to_a_valid_config(name):
    cfg = resolve_config(name)
    assert cfg.algo.name == name
    for key, value in ALGO_PRESETS.get(name)["algo"].items():
        assert getattr(cfg.algo, key) == value


def test_grpo_token_is_dapos_recipe():
    algo = resolve_config("grpo-token").algo
    assert (algo.aggregation, algo.clip_eps_high, algo.filter_groups, algo.overlong) == (
        "token-mean", 0.28, True, "penalty"
    )


def test_key_value_overrides_beat_the_preset():
    algo = resolve_config("grpo-token", None, ["algo.filter_groups=false", "algo.aggregation=balanced"]).algo
    assert not algo.filter_groups and algo.aggregation == "balanced" and algo.clip_eps_high == 0.28


def test_presets_set_only_algorithm_options():
    assert all(set(ALGO_PRESETS.get(name)) == {"algo"} for name in ALGO_PRESETS.names())
