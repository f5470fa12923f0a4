"""The scratchpad task: exact answers, varying lengths, a fixed held-out set, and how data.source selects it."""

from __future__ import annotations

import re

import pytest

from rlft.config import resolve_config
from rlft.data import build_task
from rlft.data.scratchpad import HELD_OUT_SIZE, ScratchpadTask, final_answer, held_out_problems, is_correct, scratchpad
from rlft.models.loading import EMBEDDED_MODELS
from rlft.reward.registry import REWARDS


def test_scratchpad_lines_are_exact_partial_sums_ending_in_the_answer():
    for row in ScratchpadTask(50).train_batch(1, 200):
        operands = [int(x) for x in row["prompt"].rstrip("=").split("+")]
        assert int(row["answer"]) == sum(operands)
        *lines, last = row["scratchpad"].split("\n")
        assert last == f"#{row['answer']}" and len(lines) == len(operands) - 1
        total = operands[0]
        for line, x in zip(lines, operands[1:]):
            assert line == f"{total}+{x}={total + x}"
            total += x
        assert is_correct(row["scratchpad"], row["answer"])


def test_scratchpad_length_grows_with_the_number_of_operands_and_spreads():
    assert len(scratchpad([3, 4])) < len(scratchpad([3, 4, 5])) < len(scratchpad([3, 4, 5, 6, 7, 8]))
    lengths = [len(r["scratchpad"]) for r in ScratchpadTask(500).eval_rows]
    counts = {r["prompt"].count("+") + 1 for r in ScratchpadTask(500).eval_rows}
    assert counts == {2, 3, 4, 5, 6}
    assert min(lengths) <= 12 and max(lengths) >= 4 * min(lengths)


def test_scratchpad_held_out_set_is_fixed_and_never_trained_on_whatever_the_eval_size():
    task = ScratchpadTask(100, seed=0)
    assert task.eval_rows == ScratchpadTask(100, seed=5).eval_rows == ScratchpadTask(500).eval_rows[:100]
    held = {r["prompt"] for r in held_out_problems(HELD_OUT_SIZE)}  # all of it, not only the 100 evaluated
    assert len(held) == HELD_OUT_SIZE
    for step in range(1, 30):
        assert not held & {r["prompt"] for r in task.train_batch(step, 64)}
    assert task.train_batch(3, 8) == ScratchpadTask(100, seed=0).train_batch(3, 8) != task.train_batch(4, 8)


def test_final_answer_reads_only_the_text_after_the_last_hash():
    assert final_answer("1+2=3\n#3") == "3"
    assert final_answer("#4\n#3 ") == "3"
    assert final_answer("1+2=3") is None
    assert is_correct("1+2=4\n#3", "3")  # the scratchpad is not checked, as a reasoning verifier would not
    assert not is_correct("1+2=3\n#4", "3") and not is_correct("3", "3")
    reward = REWARDS.get("final_answer")
    assert reward(["1+2="] * 2, ["1+2=3\n#3", "1+2=3"], answer=["3", "3"]) == [1.0, 0.0]  # batched: lists in, out


def test_data_source_scratchpad_brings_its_model_reward_and_cap_unless_the_run_sets_them():
    cfg = resolve_config("grpo-ba", None, ["data.source=scratchpad"])
    assert cfg.model.path == "embedded:scratchpad"
    assert [f.name for f in cfg.reward.functions] == ["final_answer"]
    assert cfg.rollout.max_new_tokens > max(len(r["scratchpad"]) for r in ScratchpadTask(500).eval_rows)
    assert isinstance(build_task(cfg.data, None, 0), ScratchpadTask)
    mine = resolve_config("grpo-ba", None, ["data.source=scratchpad", "rollout.max_new_tokens=40", "model.path=embedded"])
    assert mine.rollout.max_new_tokens == 40 and mine.model.path == "embedded"
    assert resolve_config("grpo-ba", None, []).model.path == "embedded"  # the addition task keeps its model


@pytest.mark.skipif(not (EMBEDDED_MODELS["embedded:scratchpad"] / "config.json").is_file(), reason="model not built")
def test_shipped_scratchpad_model_loads_and_writes_scratchpads():
    from rlft.models.loading import load_causal_lm, load_tokenizer
    from rlft.rollout.builtin import BuiltinEngine
    from rlft.rollout.types import SamplingParams, generate

    cfg = resolve_config("grpo-ba", None, ["data.source=scratchpad"])
    tokenizer, model = load_tokenizer(cfg.model), load_causal_lm(cfg.model).eval()
    rows = build_task(cfg.data, tokenizer, 0).eval_rows[:40]
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
    groups = generate(BuiltinEngine(model, tokenizer), prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=80))
    texts = [g[0].text for g in groups]
    assert sum(re.fullmatch(r"(\d+\+\d+=\d+\n)+#\d+", t) is not None for t in texts) >= len(texts) // 2
    assert 0 < sum(is_correct(t, r["answer"]) for t, r in zip(texts, rows)) < len(rows)
