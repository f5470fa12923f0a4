"""Training prompts: the embedded tasks (arithmetic, scratchpad), generated word problems, or rows from files / `datasets`."""

from __future__ import annotations

from rlft.data.arithmetic import ArithmeticTask
from rlft.data.datasets import FileTask, PromptFormatter
from rlft.data.scratchpad import TASK_DEFAULTS as SCRATCHPAD_DEFAULTS
from rlft.data.scratchpad import ScratchpadTask
from rlft.data.word_problems import make_word_problem

# config the run gets from its `data.source` unless it sets it (layered under --config and overrides)
EMBEDDED_TASK_DEFAULTS = {"scratchpad": SCRATCHPAD_DEFAULTS}


def build_task(data_cfg, tokenizer, seed: int, prompt_budget: int | None = None):
    """The task named by `data.source`: `train_batch(step, size)` and `eval_rows`. `prompt_budget`: the
    most prompt tokens a row may have (the model's context minus the response budget; None: no check)."""
    if data_cfg.source == "arithmetic":
        plain = not data_cfg.chat_template and data_cfg.prompt_template == "{prompt}"
        formatter = None if plain else PromptFormatter(data_cfg, tokenizer)
        return ArithmeticTask(data_cfg.digits, data_cfg.eval_size, seed, format_prompt=formatter)
    if data_cfg.source == "scratchpad":
        return ScratchpadTask(data_cfg.eval_size, seed)
    if data_cfg.source == "word-problems":
        return ArithmeticTask(data_cfg.digits, data_cfg.eval_size, seed, format_prompt=PromptFormatter(data_cfg, tokenizer),
                              make=make_word_problem)
    return FileTask(data_cfg, tokenizer, seed, prompt_budget)
