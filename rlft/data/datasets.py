"""Prompt datasets from local JSONL/JSON/parquet files or `datasets` names, with prompt templates."""

from __future__ import annotations

import random
import re
from pathlib import Path

from rlft.errors import UserError

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# `{{` / `}}` (str.format's escapes, still accepted), or `{name}`; any other brace is text (`\boxed{}`)
TEMPLATE_PART = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)\}")


def fill_template(template: str, fields: dict) -> str:
    """`template` with each `{name}` replaced by `fields[name]`; other braces are left as written."""

    def part(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in fields:
            raise UserError(
                f"data.prompt_template uses {{{name}}}, but the data has no field {name!r}; fields: "
                f"{', '.join(sorted(fields))} (write {{{{{name}}}}} for literal braces)"
            )
        return str(fields[name])

    return TEMPLATE_PART.sub(part, template)


def is_local_file(source: str) -> bool:
    """Whether `source` names a local data file (by its suffix) rather than a `datasets` name."""
    return Path(source.removesuffix(".gz")).suffix in LOCAL_SUFFIXES


def load_rows(source: str, split: str, subset: str | None = None) -> list[dict]:
    """All rows of `source`: a local file (any split name is ignored) or a `datasets` dataset's split."""
    import datasets

    path = Path(source)
    try:
        if is_local_file(source):
            if not path.is_file():
                raise UserError(f"data file {source!r} does not exist")
            builder = LOCAL_SUFFIXES[Path(source.removesuffix(".gz")).suffix]
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(source, subset, split=split)
    except UserError:
        raise
    except Exception as e:  # network, missing split, bad file: one clear line for the user
        raise UserError(f"cannot load data {source!r} (split {split!r}): {type(e).__name__}: {e}") from None
    return [dict(row) for row in ds]


class PromptFormatter:
    """Turns a dataset row into prompt text: the template, then (optionally) the chat template."""

    def __init__(self, data_cfg, tokenizer):
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        if data_cfg.chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError("data.chat_template is on but the tokenizer has no chat template; turn it off")

    def __call__(self, row: dict) -> str:
        cfg = self.cfg
        if cfg.prompt_field not in row:
            raise UserError(f"data.prompt_field {cfg.prompt_field!r} is not a field of the data; fields: {sorted(row)}")
        text = fill_template(cfg.prompt_template, {**row, "prompt": row[cfg.prompt_field]})
        if not cfg.chat_template:
            return text
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
            {"role": "user", "content": text}
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class FileTask:
    """Train batches by step (a seeded shuffle per epoch) and the held-out rows, from files or datasets."""

    def __init__(self, data_cfg, tokenizer, seed: int = 0):
        self.cfg = data_cfg
        self.seed = seed
        fmt = PromptFormatter(data_cfg, tokenizer)
        self.train_rows = self._prepare(load_rows(data_cfg.source, data_cfg.split, data_cfg.subset), fmt, tokenizer)
        if not self.train_rows:
            raise UserError(f"no usable rows in {data_cfg.source!r} (all longer than data.max_prompt_tokens?)")
        if data_cfg.eval_source or not is_local_file(data_cfg.source):
            eval_rows = load_rows(data_cfg.eval_source or data_cfg.source, data_cfg.eval_split, data_cfg.subset)
            self.eval_rows = self._prepare(eval_rows, fmt, tokenizer)[: data_cfg.eval_size]
        else:  # one local file: hold out a seeded slice of it (at most a fifth)
            order = list(range(len(self.train_rows)))
            random.Random(f"held-out-{seed}").shuffle(order)
            held = set(order[: min(data_cfg.eval_size, len(order) // 5)])
            self.eval_rows = [self.train_rows[i] for i in sorted(held)]
            self.train_rows = [r for i, r in enumerate(self.train_rows) if i not in held]
        self._epoch_order: tuple[int, list[int]] = (-1, [])

    def _prepare(self, rows: list[dict], fmt: PromptFormatter, tokenizer) -> list[dict]:
        out = []
        answer_field = self.cfg.answer_field
        for row in rows:
            if answer_field not in row:
                raise UserError(f"data.answer_field {answer_field!r} is not a field of the data; fields: {sorted(row)}")
            text = fmt(row)
            if len(tokenizer(text)["input_ids"]) > self.cfg.max_prompt_tokens:
                continue
            out.append({**row, "prompt": text, "answer": row[answer_field]})
        return out

    def train_batch(self, step: int, size: int) -> list[dict]:
        """Rows for step `step` (1-based): consecutive slices of per-epoch seeded permutations."""
        n = len(self.train_rows)
        rows = []
        for k in range((step - 1) * size, step * size):
            epoch, index = divmod(k, n)
            if self._epoch_order[0] != epoch:
                order = list(range(n))
                random.Random(f"epoch-{self.seed}-{epoch}").shuffle(order)
                self._epoch_order = (epoch, order)
            rows.append(self.train_rows[self._epoch_order[1][index]])
        return rows
