"""Prompt data: the embedded arithmetic task and local files, deterministic by step."""

from __future__ import annotations

import json

import pytest

from rlft.config import DataConfig
from rlft.data import build_task
from rlft.data.arithmetic import ArithmeticTask
from rlft.errors import UserError


def test_arithmetic_answers_are_exact_sums():
    for row in ArithmeticTask(3, 50).train_batch(1, 100):
        a, b = row["prompt"].rstrip("=").split("+")
        assert int(row["answer"]) == int(a) + int(b)


def test_arithmetic_train_stream_is_a_function_of_seed_and_step():
    t1, t2 = ArithmeticTask(3, 50, seed=7), ArithmeticTask(3, 50, seed=7)
    assert t1.train_batch(5, 16) == t2.train_batch(5, 16)
    assert t1.train_batch(5, 16) != t1.train_batch(6, 16)
    assert ArithmeticTask(3, 50, seed=8).train_batch(5, 16) != t1.train_batch(5, 16)


def test_held_out_set_is_fixed_and_never_trained_on():
    task = ArithmeticTask(2, 200, seed=0)
    assert task.eval_rows == ArithmeticTask(2, 200, seed=3).eval_rows
    held = {r["prompt"] for r in task.eval_rows}
    assert len(held) == 200
    for step in range(1, 50):
        assert not held & {r["prompt"] for r in task.train_batch(step, 64)}


def test_jsonl_file_with_custom_fields_and_template(tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1", "solution": str(i + 1)}) + "\n" for i in range(50)))
    cfg = DataConfig(source=str(path), prompt_field="question", answer_field="solution", prompt_template="Q: {prompt} A:",
                     eval_size=5)
    task = build_task(cfg, tokenizer, seed=0)
    assert len(task.eval_rows) == 5 and len(task.train_rows) == 45
    row = task.train_batch(1, 1)[0]
    assert row["prompt"].startswith("Q: ") and row["prompt"].endswith(" A:")
    assert int(row["answer"]) == int(row["question"].split("+")[0]) + 1
    # one epoch of steps visits every training row once
    seen = [r["question"] for step in range(1, 10) for r in task.train_batch(step, 5)]
    assert sorted(seen) == sorted(r["question"] for r in task.train_rows)


def test_chat_template_wraps_the_prompt(tokenizer):
    cfg = DataConfig(chat_template=True, system_prompt="Add.")
    row = build_task(cfg, tokenizer, seed=0).train_batch(1, 1)[0]
    assert row["prompt"].startswith("Add.\n") and row["prompt"].endswith("=")


def test_missing_prompt_field_names_the_fields(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(UserError, match="prompt_field 'prompt'.*question"):
        build_task(DataConfig(source=str(path)), tokenizer, seed=0)


def test_missing_data_file_is_a_user_error(tmp_path, tokenizer):
    with pytest.raises(UserError, match="does not exist"):
        build_task(DataConfig(source=str(tmp_path / "nope.jsonl")), tokenizer, seed=0)


def test_gsm8k_file_loads_with_question_field(shared_data, tokenizer):
    cfg = DataConfig(source=str(shared_data / "gsm8k_test.jsonl"), prompt_field="question", eval_size=10)
    task = build_task(cfg, tokenizer, seed=0)
    assert len(task.eval_rows) == 10 and "####" in task.eval_rows[0]["answer"]


def test_prompt_template_leaves_non_field_braces_alone():
    from rlft.data.datasets import fill_template

    text = fill_template("{prompt} Put it in \\boxed{}; \\frac{1}{2}; {{x}}", {"prompt": "2+2?", "answer": "4"})
    assert text == "2+2? Put it in \\boxed{}; \\frac{1}{2}; {x}"


def test_prompt_template_with_an_unknown_field_names_it_and_the_fields():
    from rlft.data.datasets import fill_template

    with pytest.raises(UserError, match=r"uses \{qestion\}.*no field 'qestion'; fields: answer, prompt"):
        fill_template("{qestion}", {"prompt": "p", "answer": "a"})


def test_word_problems_have_integer_answers_and_a_fixed_held_out_set(tokenizer):
    import random
    import re

    from rlft.data.word_problems import make_word_problem

    rng = random.Random(0)
    for _ in range(200):
        row = make_word_problem(rng)
        numbers = [int(n) for n in re.findall(r"\d+", row["prompt"])]
        assert int(row["answer"]) >= 0 and len(numbers) in (2, 3)
        if "gets" in row["prompt"]:
            assert int(row["answer"]) == sum(numbers)
        elif "bags" in row["prompt"]:
            assert int(row["answer"]) == numbers[0] * numbers[1]
        elif "gives away" in row["prompt"]:
            assert int(row["answer"]) == numbers[0] - numbers[1]
        else:
            assert int(row["answer"]) == numbers[0] + numbers[1] - numbers[2]
    cfg = DataConfig(source="word-problems", eval_size=50)
    a, b = build_task(cfg, tokenizer, seed=0), build_task(cfg, tokenizer, seed=1)
    assert a.eval_rows == b.eval_rows
    held = {r["prompt"] for r in a.eval_rows}
    assert not held & {r["prompt"] for step in range(1, 20) for r in a.train_batch(step, 16)}


def _rows_file(tmp_path, rows: list[dict]):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]


@pytest.mark.parametrize("bad, field", [
    ({"prompt": "", "answer": "3"}, "prompt"), ({"prompt": "  ", "answer": "3"}, "prompt"),
    ({"answer": "3"}, "prompt"), ({"prompt": "1+2=", "answer": None}, "answer"),
    ({"prompt": "1+2=", "answer": ""}, "answer"), ({"prompt": "1+2="}, "answer"),
])
def test_row_with_missing_or_empty_field_stops_at_start_naming_row_and_field(tmp_path, tokenizer, bad, field):
    path = _rows_file(tmp_path, [*GOOD[:6], bad, *GOOD[6:]])
    with pytest.raises(UserError) as e:
        build_task(DataConfig(source=str(path), eval_size=2), tokenizer, seed=0)
    assert f"row 7 " in str(e.value) and f"field {field!r}" in str(e.value) and "data.bad_rows=skip" in str(e.value)


def test_prompt_longer_than_context_minus_response_budget_stops_at_start(tmp_path, tokenizer):
    path = _rows_file(tmp_path, [*GOOD[:3], {"prompt": "1+" * 40 + "1=", "answer": "41"}, *GOOD[3:]])
    build_task(DataConfig(source=str(path), eval_size=2), tokenizer, seed=0, prompt_budget=None)  # no check asked
    with pytest.raises(UserError, match=r"row 4 .*field 'prompt'.* 8[0-9] tokens.*\(64\)"):
        build_task(DataConfig(source=str(path), eval_size=2), tokenizer, seed=0, prompt_budget=64)


def test_bad_rows_skip_drops_and_counts_them(tmp_path, tokenizer, caplog):
    bad = [{"prompt": "", "answer": "1"}, {"prompt": "2+2=", "answer": ""}, {"prompt": "1+" * 40 + "1=", "answer": "41"}]
    path = _rows_file(tmp_path, [*GOOD, *bad])
    with caplog.at_level("WARNING", logger="rlft"):
        task = build_task(DataConfig(source=str(path), eval_size=2, bad_rows="skip"), tokenizer, seed=0, prompt_budget=64)
    assert len(task.train_rows) + len(task.eval_rows) == len(GOOD)
    assert task.skipped == {"empty prompt": 1, "empty answer": 1, "prompt too long for the context": 1}
    assert "skipped 3 bad rows" in caplog.text


def test_context_length_is_read_from_the_model_config():
    from rlft.config import ModelConfig
    from rlft.models.loading import context_length

    assert context_length(ModelConfig()) == 2048  # the embedded model's max_position_embeddings
