"""Prompts for batch generation from a JSONL file: one JSON string, or an object with
"prompt" and optional per-request sampling fields, per line."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from optimizer.core.errors import InputError, OptimizerError
from runtime.sampling import SamplingParams

# JSONL field -> SamplingParams field
FIELDS = {"max_tokens": "max_new_tokens", "max_new_tokens": "max_new_tokens", "temperature": "temperature",
          "top_k": "top_k", "top_p": "top_p", "seed": "seed", "min_tokens": "min_tokens",
          "ignore_eos": "ignore_eos", "stop": "stop", "stop_token_ids": "stop_token_ids"}


def read_prompts(path: Path, defaults: SamplingParams) -> list[tuple[str, SamplingParams]]:
    """(prompt, params) per non-empty line; `defaults` fill the fields a line leaves out."""
    text = sys.stdin.read() if str(path) == "-" else _read(path)
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})",
                             hint='one JSON value per line: "text" or {"prompt": "text", ...}') from e
        if isinstance(record, str):
            record = {"prompt": record}
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InputError(f"{where}: expected a string or an object with a string 'prompt'")
        unknown = sorted(set(record) - set(FIELDS) - {"prompt", "id"})
        if unknown:
            raise InputError(f"{where}: unknown field {unknown[0]!r}", hint="fields: prompt, " + ", ".join(FIELDS))
        changes = {FIELDS[k]: v for k, v in record.items() if k in FIELDS}
        for key in ("stop", "stop_token_ids"):
            if key in changes:
                value = changes[key]
                changes[key] = tuple([value] if isinstance(value, (str, int)) else value)
        try:
            params = dataclasses.replace(defaults, **changes)
        except (OptimizerError, TypeError) as e:
            raise InputError(f"{where}: {e}") from e
        items.append((record["prompt"], params))
    if not items:
        raise InputError(f"{path} has no prompts")
    return items


def _read(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"prompts file {path} does not exist")
    return path.read_text(encoding="utf-8")
