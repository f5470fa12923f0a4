"""Prompt datasets from local JSONL/JSON/parquet files or `datasets` names, with prompt templates."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from rlft.errors import UserError

log = logging.getLogger("rlft")

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


def _empty(value: object) -> bool:
    """A missing value: None, or text that is only whitespace (0 and False are answers)."""
    return value is None or (isinstance(value, str) and not value.strip())


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

    def __init__(self, data_cfg, tokenizer, seed: int = 0, prompt_budget: int | None = None):
        self.cfg = data_cfg
        self.seed = seed
        self.prompt_budget = prompt_budget
        self.skipped: dict[str, int] = {}  # bad rows dropped under data.bad_rows=skip, by reason
        fmt = PromptFormatter(data_cfg, tokenizer)
        self.train_rows = self._prepare(load_rows(data_cfg.source, data_cfg.split, data_cfg.subset), fmt, tokenizer,
                                        data_cfg.source)
        if not self.train_rows:
            raise UserError(f"no usable rows in {data_cfg.source!r} (all longer than data.max_prompt_tokens?)")
        if data_cfg.eval_source or not is_local_file(data_cfg.source):
            eval_rows = load_rows(data_cfg.eval_source or data_cfg.source, data_cfg.eval_split, data_cfg.subset)
            self.eval_rows = self._prepare(eval_rows, fmt, tokenizer, data_cfg.eval_source or data_cfg.source)[
                : data_cfg.eval_size]
        else:  # one local file: hold out a seeded slice of it (at most a fifth)
            order = list(range(len(self.train_rows)))
            random.Random(f"held-out-{seed}").shuffle(order)
            held = set(order[: min(data_cfg.eval_size, len(order) // 5)])
            self.eval_rows = [self.train_rows[i] for i in sorted(held)]
            self.train_rows = [r for i, r in enumerate(self.train_rows) if i not in held]
        self._epoch_order: tuple[int, list[int]] = (-1, [])
        if self.skipped:
            log.warning("data: skipped %d bad rows (data.bad_rows=skip): %s", sum(self.skipped.values()),
                        ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())))

    def _prepare(self, rows: list[dict], fmt: PromptFormatter, tokenizer, source: str) -> list[dict]:
        out = []
        cfg = self.cfg
        if rows and cfg.answer_field not in rows[0]:
            raise UserError(f"data.answer_field {cfg.answer_field!r} is not a field of the data; fields: {sorted(rows[0])}")
        for number, row in enumerate(rows, start=1):
            if cfg.prompt_field in rows[0] and _empty(row.get(cfg.prompt_field)):
                self._bad(source, number, "empty prompt", f"its prompt (field {cfg.prompt_field!r}) is missing or empty")
                continue
            if _empty(row.get(cfg.answer_field)):
                self._bad(source, number, "empty answer", f"its answer (field {cfg.answer_field!r}) is missing or empty")
                continue
            text = fmt(row)
            length = len(tokenizer(text)["input_ids"])
            if self.prompt_budget is not None and length > self.prompt_budget:
                self._bad(source, number, "prompt too long for the context",
                          f"its prompt (field {cfg.prompt_field!r}) is {length} tokens, more than the "
                          f"model's context leaves beside rollout.max_new_tokens ({self.prompt_budget})")
                continue
            if length > cfg.max_prompt_tokens:
                continue
            out.append({**row, "prompt": text, "answer": row[cfg.answer_field]})
        return out

    def _bad(self, source: str, number: int, reason: str, why: str) -> None:
        """A bad row: stop naming it (data.bad_rows=error) or count it (skip)."""
        if self.cfg.bad_rows == "error":
            raise UserError(f"{source}: row {number} (counting from 1): {why}; fix or remove it, or set "
                            "data.bad_rows=skip to drop such rows")
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

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
