"""The reward plug-in API: loading user functions, the three call forms, and every failure mode."""

from __future__ import annotations

import logging
import sys
import textwrap
import time

import pytest

from rlft.config import RewardConfig
from rlft.errors import ConfigError, UserError
from rlft.reward import RewardFailureError, RewardScorer, check_failure_rate, load_reward, register_reward

REWARDS_FILE = '''
import asyncio, math, os, time
from rlft.reward import batched

def match(prompt, completion, answer="", **fields):
    return float(completion == answer)

def scores(prompt, completion, **fields):
    return {"format": 1.0, "length": float(len(completion))}

def with_total(prompt, completion, **fields):
    return {"reward": 0.5, "format": 1.0}

def raises(prompt, completion, **fields):
    if completion == "bad":
        raise RuntimeError("broken reward on purpose")
    return 1.0

def returns_str(prompt, completion, **fields):
    return "1.0" if completion == "bad" else 1.0

def returns_none(prompt, completion, **fields):
    return None if completion == "bad" else 1.0

def returns_nan(prompt, completion, **fields):
    return math.nan if completion == "bad" else 1.0

def returns_inf(prompt, completion, **fields):
    return -math.inf if completion == "bad" else 1.0

def returns_nan_in_dict(prompt, completion, **fields):
    return {"a": math.nan if completion == "bad" else 1.0}

def hangs(prompt, completion, **fields):
    while completion == "bad":
        pass
    return 1.0

def exits(prompt, completion, **fields):
    if completion == "bad":
        os._exit(3)
    return 1.0

def scaled(prompt, completion, scale=1.0, **fields):
    return scale

@batched
def lengths(prompts, completions, answer, **fields):
    assert isinstance(answer, list) and len(answer) == len(completions)
    return [float(len(c)) for c in completions]

@batched
def short_list(prompts, completions, **fields):
    return [1.0]

async def slow(prompt, completion, **fields):
    await asyncio.sleep(60 if completion == "bad" else 0.5)
    return 1.0
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS_FILE)
    return path


def scorer_for(reward_file, *names, **cfg) -> RewardScorer:
    functions = [{"name": f"{reward_file}:{n}"} if isinstance(n, str) else {**n, "name": f"{reward_file}:{n['name']}"} for n in names]
    return RewardScorer(RewardConfig(functions=functions, **cfg))


COMPLETIONS = ["ok", "bad", "ok2"]
ROWS = [{"prompt": "p", "answer": "ok"}] * 3


def test_reward_loads_from_a_file_a_module_and_a_registered_name(reward_file, tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text("def starts_with_o(prompt, completion, **f):\n    return float(completion.startswith('o'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = RewardConfig(functions=[
        {"name": f"{reward_file}:match"}, {"name": "userpkg.rewards:starts_with_o"}, {"name": "exact_answer"},
    ])
    with RewardScorer(cfg) as scorer:  # the worker processes load the same three functions again
        rewards, metrics = scorer.score(["p"] * 3, ["ok", "no", " ok "], ROWS)
    assert rewards == [3.0, 0.0, 1.0]
    assert metrics["reward/match"] == pytest.approx(1 / 3)
    assert metrics["reward/starts_with_o"] == pytest.approx(1 / 3)
    assert metrics["reward/exact_answer"] == pytest.approx(2 / 3)


def test_the_embedded_tasks_rewards_score_a_chunk_in_one_call_and_rows_without_an_answer_score_zero():
    cfg = RewardConfig(functions=[{"name": "exact_answer"}, {"name": "final_answer"}])
    rows = [{"prompt": "p", "answer": "7"}, {"prompt": "p", "answer": 7}, {"prompt": "p"}, {"prompt": "p", "answer": "3"}]
    with RewardScorer(cfg) as scorer:
        assert all(f.batched for f in scorer.functions)
        rewards, metrics = scorer.score(["p"] * 4, [" 7 ", "7", "", "x\n#3"], rows)
    assert rewards == [1.0, 1.0, 1.0, 1.0]  # exact_answer 1, 1, 1 ('' == ''), 0; final_answer 0, 0, 0, 1
    assert metrics["reward/exact_answer"] == pytest.approx(3 / 4) and metrics["reward/final_answer"] == pytest.approx(1 / 4)


def test_reward_file_that_does_not_import_fails_at_start_naming_the_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import os\n\nx = undefined_name\n")
    with pytest.raises(UserError, match=r"broken\.py.*failed to import: NameError.*undefined_name.*line 3"):
        RewardScorer(RewardConfig(functions=[{"name": f"{path}:score"}]))
    path.write_text("def score(:\n")
    with pytest.raises(UserError, match=r"broken\.py.*SyntaxError"):
        load_reward(f"{path}:score")


def test_missing_reward_function_fails_at_start_naming_the_file_and_the_function(reward_file):
    with pytest.raises(UserError, match=r"my_rewards\.py.*has no function 'scor'.*defines: .*scores"):
        RewardScorer(RewardConfig(functions=[{"name": f"{reward_file}:scor"}]))
    with pytest.raises(UserError, match=r"does not exist"):
        load_reward("no/such/file.py:score")
    with pytest.raises(UserError, match=r"module 'no_such_module_xyz'.*failed to import"):
        load_reward("no_such_module_xyz:score")
    with pytest.raises(ConfigError, match=r"did you mean 'exact_answer'"):
        load_reward("exact_answr")


def test_reward_registered_in_main_script_is_refused_with_a_fix():
    def score(prompt, completion, **fields):
        return 1.0

    score.__module__ = "__main__"
    register_reward("test_only_main_reward")(score)
    with pytest.raises(UserError, match="__main__.*file.py:function"):
        load_reward("test_only_main_reward")


@pytest.mark.parametrize("name, kind", [
    ("raises", "exception"), ("returns_str", "type"), ("returns_none", "type"), ("returns_nan", "nonfinite"),
    ("returns_inf", "nonfinite"), ("returns_nan_in_dict", "nonfinite"),
])
def test_failing_reward_gives_failure_reward_and_is_counted(reward_file, name, kind, caplog):
    with scorer_for(reward_file, name, failure_reward=-1.0) as scorer, caplog.at_level(logging.WARNING, "rlft.reward"):
        rewards, metrics = scorer.score(["p"] * 3, COMPLETIONS, ROWS)
    assert rewards == [1.0, -1.0, 1.0]
    assert metrics["reward/failures"] == 1
    assert metrics["reward/failure_rate"] == pytest.approx(1 / 3)
    assert metrics[f"reward/{name}/failures"] == 1
    assert f"{kind} in" in caplog.text


def test_one_example_traceback_is_logged_per_step(reward_file, caplog):
    with scorer_for(reward_file, "raises") as scorer, caplog.at_level(logging.WARNING, "rlft.reward"):
        scorer.score(["p"] * 4, ["bad"] * 4, [{}] * 4)
    records = [r for r in caplog.records if r.name == "rlft.reward"]
    assert len(records) == 1
    assert "failed on 4 of 4 samples" in records[0].getMessage()
    assert "Traceback" in records[0].getMessage() and "broken reward on purpose" in records[0].getMessage()


def test_hung_reward_is_killed_at_its_time_limit_and_scoring_goes_on(reward_file):
    with scorer_for(reward_file, "hangs", timeout_s=1.0) as scorer:
        start = time.monotonic()
        rewards, metrics = scorer.score(["p"] * 3, COMPLETIONS, ROWS)
        assert time.monotonic() - start < 5.0
        assert rewards == [1.0, 0.0, 1.0]
        assert metrics["reward/timeouts"] == 1 and metrics["reward/worker_restarts"] == 1
        rewards, metrics = scorer.score(["p"] * 2, ["ok", "ok"], ROWS[:2])  # the replacement worker scores
        assert rewards == [1.0, 1.0] and metrics["reward/worker_restarts"] == 0


def test_reward_that_kills_its_worker_process_costs_one_sample(reward_file):
    with scorer_for(reward_file, "exits") as scorer:
        rewards, metrics = scorer.score(["p"] * 3, COMPLETIONS, ROWS)
    assert rewards == [1.0, 0.0, 1.0]
    assert metrics["reward/failures"] == 1 and metrics["reward/worker_restarts"] == 1


def test_dict_rewards_log_each_score_and_use_reward_key_or_sum(reward_file):
    with scorer_for(reward_file, "scores", "with_total") as scorer:
        rewards, metrics = scorer.score(["p"] * 2, ["ab", "abcd"], ROWS[:2])
    assert rewards == [1.0 + 2.0 + 0.5, 1.0 + 4.0 + 0.5]  # sum of 'scores' values, then 'with_total'['reward']
    assert metrics["reward/scores/length"] == 3.0 and metrics["reward/scores/format"] == 1.0
    assert metrics["reward/with_total"] == 0.5


def test_weights_sum_functions_and_args_override_row_fields(reward_file):
    functions = [{"name": "match", "weight": 2.0}, {"name": "scaled", "weight": 0.5, "args": {"scale": 3.0}}]
    with scorer_for(reward_file, *functions) as scorer:
        rewards, _ = scorer.score(["p"] * 2, ["ok", "no"], [{"answer": "ok", "scale": 100.0}] * 2)
    assert rewards == [2.0 + 1.5, 1.5]


def test_batched_reward_gets_columns_and_a_wrong_length_fails_every_sample(reward_file):
    with scorer_for(reward_file, "lengths", "short_list") as scorer:
        rewards, metrics = scorer.score(["p"] * 3, ["a", "bb", "ccc"], ROWS)
    assert rewards == [1.0, 2.0, 3.0]
    assert metrics["reward/short_list/failures"] == 3 and metrics["reward/failure_rate"] == 1.0


def test_async_rewards_run_concurrently_and_time_out_one_by_one(reward_file):
    with scorer_for(reward_file, "slow", timeout_s=1.5, num_processes=1) as scorer:
        start = time.monotonic()
        rewards, metrics = scorer.score(["p"] * 6, ["ok"] * 5 + ["bad"], [{}] * 6)
        elapsed = time.monotonic() - start
    assert rewards == [1.0] * 5 + [0.0]
    assert metrics["reward/timeouts"] == 1 and metrics["reward/worker_restarts"] == 0
    assert elapsed < 2.5  # five 0.5 s calls in one process overlap; the hung one is cancelled at 1.5 s


def test_num_processes_sets_the_number_of_worker_processes(reward_file):
    with scorer_for(reward_file, "match", num_processes=3) as scorer:
        assert len(scorer.pool.workers) == 3
        assert len({w.proc.pid for w in scorer.pool.workers}) == 3


def test_failure_rate_above_max_failure_rate_stops_the_run_with_a_clear_message():
    cfg = RewardConfig(max_failure_rate=0.25)
    check_failure_rate({"reward/failure_rate": 0.25, "reward/failures": 1}, cfg)  # at the limit: go on
    with pytest.raises(RewardFailureError, match=r"failed on 50% .*max_failure_rate=0.25.*rlft.reward") as err:
        check_failure_rate({"reward/failure_rate": 0.5, "reward/failures": 2, "reward/timeouts": 0}, cfg)
    assert isinstance(err.value, UserError)


def test_scorer_metrics_name_functions_briefly_and_tell_repeats_apart(reward_file):
    with scorer_for(reward_file, "match", "match") as scorer:
        assert scorer.names == ["match", "match_2"]


def test_worker_receives_the_parents_import_path(reward_file, tmp_path, monkeypatch):
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    (extra / "helper_mod_for_reward.py").write_text("VALUE = 7.0\n")
    (tmp_path / "uses_helper.py").write_text(textwrap.dedent("""
        import helper_mod_for_reward
        def score(prompt, completion, **fields):
            return helper_mod_for_reward.VALUE
    """))
    monkeypatch.syspath_prepend(str(extra))
    assert str(extra) in sys.path
    with RewardScorer(RewardConfig(functions=[{"name": f"{tmp_path / 'uses_helper.py'}:score"}])) as scorer:
        assert scorer.score(["p"], ["c"], [{}])[0] == [7.0]


def test_preload_module_is_imported_at_worker_start_outside_the_time_limit(tmp_path, monkeypatch):
    (tmp_path / "slow_to_import_for_reward.py").write_text("import time\ntime.sleep(1.5)\nVALUE = 2.0\n")
    (tmp_path / "preloading.py").write_text(textwrap.dedent("""
        def score(prompt, completion, **fields):
            import slow_to_import_for_reward
            return slow_to_import_for_reward.VALUE
        score.preload = "slow_to_import_for_reward"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = RewardConfig(functions=[{"name": f"{tmp_path / 'preloading.py'}:score"}], timeout_s=1.0, num_processes=1)
    with RewardScorer(cfg) as scorer:
        rewards, metrics = scorer.score(["p"], ["c"], [{}])
    assert rewards == [2.0] and metrics["reward/timeouts"] == 0
