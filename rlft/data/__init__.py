"""Training prompts: the embedded arithmetic task or rows from files / `datasets`."""

from __future__ import annotations

from rlft.data.arithmetic import ArithmeticTask
from rlft.data.datasets import FileTask, PromptFormatter


def build_task(data_cfg, tokenizer, seed: int, prompt_budget: int | None = None):
    """The task named by `data.source`: `train_batch(step, size)` and `eval_rows`. `prompt_budget`: the
    most prompt tokens a row may have (the model's context minus the response budget; None: no check)."""
    if data_cfg.source == "arithmetic":
        plain = not data_cfg.chat_template and data_cfg.prompt_template == "{prompt}"
        formatter = None if plain else PromptFormatter(data_cfg, tokenizer)
        return ArithmeticTask(data_cfg.digits, data_cfg.eval_size, seed, format_prompt=formatter)
    return FileTask(data_cfg, tokenizer, seed, prompt_budget)
