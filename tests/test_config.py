"""Config: presets, files, overrides, and one clear message (exit code 2) for every mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlft.config import resolve_config
from rlft.errors import ConfigError


def test_algo_preset_sets_its_options_and_overrides_win():
    cfg = resolve_config("grpo-token", None, ["algo.clip_eps_high=0.3", "rollout.group_size=4"])
    assert cfg.algo.name == "grpo-token"
    assert cfg.algo.aggregation == "token-mean"
    assert cfg.algo.clip_eps_high == 0.3
    assert cfg.rollout.group_size == 4


def test_default_algo_is_grpo_ba_with_balanced_aggregation():
    cfg = resolve_config()
    assert cfg.algo.name == "grpo-ba" and cfg.algo.aggregation == "balanced"


def test_config_file_sits_between_preset_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo:\n  aggregation: token-mean\noptim:\n  lr: 0.001\n")
    cfg = resolve_config("grpo-ba", str(path), ["optim.lr=0.002"])
    assert cfg.algo.aggregation == "token-mean"  # file beats preset
    assert cfg.optim.lr == 0.002  # override beats file


def test_unknown_key_names_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.grop_size'.*did you mean 'rollout.group_size'"):
        resolve_config(None, None, ["rollout.grop_size=3"])


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"rollout.group_size: .*integer.*'many'"):
        resolve_config(None, None, ["rollout.group_size=many"])


def test_out_of_range_value_is_rejected():
    with pytest.raises(ConfigError, match=r"rollout.group_size"):
        resolve_config(None, None, ["rollout.group_size=0"])


def test_kv_budget_applies_to_builtin_infinite_sampling_only():
    cfg = resolve_config(None, None, ["rollout.kv_budget_tokens=4096"])
    assert cfg.rollout.kv_budget_tokens == 4096 and cfg.rollout.scheduling == "infinite"
    with pytest.raises(ConfigError, match=r"kv_budget_tokens.*rollout.scheduling=micro.*rollout.scheduling=infinite"):
        resolve_config(None, None, ["rollout.kv_budget_tokens=4096", "rollout.scheduling=micro"])


@pytest.mark.parametrize(
    "override, allowed, hint",
    [
        ("algo.aggregation=balance", "seq-mean-token-mean", "balanced"),
        ("rollout.engine=vlm", "builtin", "vllm"),
        ("optim.name=adam", "adamw", "adamw"),
    ],
)
def test_wrong_choice_lists_allowed_values_and_closest(override, allowed, hint):
    with pytest.raises(ConfigError) as err:
        resolve_config(None, None, [override])
    assert allowed in str(err.value) and f"did you mean {hint!r}" in str(err.value)


def test_unknown_algo_suggests_a_preset():
    with pytest.raises(ConfigError, match="did you mean 'grpo-ba'"):
        resolve_config("grpo-bq")


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(None, str(tmp_path / "nope.yaml"))


def test_override_without_equals_sign_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        resolve_config(None, None, ["rollout.group_size"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlft.train", *args], capture_output=True, text=True, timeout=120)


def test_cli_config_error_exits_2_with_one_line_and_no_traceback():
    out = _cli("rollout.temprature=0.5")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "did you mean 'rollout.temperature'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_help_lists_algorithms_and_rewards():
    out = _cli("--help")
    assert out.returncode == 0
    for name in ["grpo", "grpo-ba", "dr-grpo", "rloo", "reinforce++", "grpo-token", "exact_answer", "math", "code"]:
        assert name in out.stdout


def test_cli_print_config_shows_overrides_and_exits():
    out = _cli("--algo", "grpo", "--print-config", "optim.lr=0.005", "--reward", "math@2")
    assert out.returncode == 0, out.stderr
    assert "lr: 0.005" in out.stdout and "aggregation: seq-mean-token-mean" in out.stdout
    assert "name: math" in out.stdout and "weight: 2.0" in out.stdout


def test_cli_missing_reward_file_fails_at_start_naming_it(tmp_path):
    out = _cli("--reward", f"{tmp_path}/nope.py:score", "train.steps=1")
    assert out.returncode == 1
    assert "nope.py" in out.stderr and "Traceback" not in out.stderr


def test_old_rollout_sampling_key_is_accepted_with_a_deprecation_message():
    with pytest.warns(DeprecationWarning, match="rollout.sampling is deprecated: it is now rollout.scheduling"):
        cfg = resolve_config(None, None, ["rollout.sampling=micro"])
    assert cfg.rollout.scheduling == "micro"
    with pytest.raises(ConfigError, match="old name of rollout.scheduling"):
        resolve_config(None, None, ["rollout.sampling=micro", "rollout.scheduling=full"])


def test_cli_overrides_may_come_before_between_and_after_options():
    from rlft.train import build_run_config, parse_args

    args = parse_args(["rollout.group_size=4", "--reward", "math", "optim.lr=0.003", "--algo", "grpo", "train.steps=7"])
    cfg = build_run_config(args)
    assert (cfg.rollout.group_size, cfg.optim.lr, cfg.train.steps, cfg.algo.name) == (4, 0.003, 7, "grpo")
    assert [f.name for f in cfg.reward.functions] == ["math"]


def test_failed_start_leaves_no_run_folder(tmp_path, monkeypatch):
    from rlft.errors import UserError
    from rlft.pipeline import driver

    monkeypatch.setattr(driver, "ray_session", lambda cfg: False)  # the data fails before any actor starts
    cfg = resolve_config(None, None, [f"data.source={tmp_path}/missing.jsonl", f"train.output_dir={tmp_path}/runs",
                                      "train.run_name=x"])
    with pytest.raises(UserError, match="missing.jsonl"):
        driver.train(cfg)
    assert not (tmp_path / "runs" / "x").exists()


def test_old_dynamic_sampling_keys_are_accepted_with_a_deprecation_message():
    with pytest.warns(DeprecationWarning, match="algo.dynamic_sampling is deprecated: it is now algo.filter_groups"):
        cfg = resolve_config(None, None, ["algo.dynamic_sampling=true", "algo.dynamic_sampling_max_rounds=5"])
    assert cfg.algo.filter_groups and cfg.algo.filter_groups_max_rounds == 5
    with pytest.raises(ConfigError, match="old name of algo.filter_groups"):
        resolve_config(None, None, ["algo.dynamic_sampling=true", "algo.filter_groups=false"])
