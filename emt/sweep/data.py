"""Training data: chat JSONL files, validated before any job is submitted.

A file holds one JSON object per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``:
the format of the public persona_vectors datasets. Blank lines are ignored. A line is rejected
when it is not JSON, has no ``messages`` list, has a message with an unknown role or empty
content, or has no assistant turn (nothing to learn from). Problems are reported as
``file:line: what is wrong``, all of them at once (up to a cap).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20


class DataError(ValueError):
    """Problems in training files; ``problems`` lists ``file:line: message`` entries."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        body = "\n".join(f"  {p}" for p in shown)
        if more:
            body += f"\n  ... and {more} more"
        super().__init__(
            f"Training data problems ({len(self.problems)}); fix these lines or point data.root "
            f"at a good copy:\n{body}"
        )


def check_example(obj: Any) -> str | None:
    """Why ``obj`` is not a valid chat example, or None if it is."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "no 'messages' list (expected {\"messages\": [{\"role\": ..., \"content\": ...}]})"
    has_assistant = False
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        role = m.get("role")
        if role not in ROLES:
            return f"messages[{i}] has unknown role {role!r} (valid: {', '.join(ROLES)})"
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            return f"messages[{i}] ({role}) has empty or missing content"
        has_assistant |= role == "assistant"
    if not has_assistant:
        return "no assistant turn (nothing to train on)"
    return None


def read_chat_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a chat JSONL file; raise :class:`DataError` listing every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path}: file not found"])
    examples: list[dict[str, Any]] = []
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                why = check_example(obj)
                if why:
                    problems.append(f"{path}:{lineno}: {why}")
                else:
                    examples.append({"messages": [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]})
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    if not problems and not examples:
        problems.append(f"{path}: no examples (the file is empty)")
    if problems:
        raise DataError(problems)
    return examples


def count_lines(path: str | Path) -> int:
    """Non-blank lines of a file: the example count, without parsing (for plans)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def file_sha256(path: str | Path) -> str:
    """Content hash of a data file (part of a run's config hash: same name, new content = new run)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_heldout(
    examples: Sequence[dict[str, Any]], fraction: float, seed: int, max_examples: int | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split into (train, heldout) with a fixed seed; ``max_examples`` first caps the file.

    The split depends only on the file, the fraction and the seed, so every run on the same file
    holds out the same examples and their in-domain losses compare.
    """
    items = list(examples[:max_examples] if max_examples else examples)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_held = int(round(len(items) * fraction))
    held_idx = set(order[:n_held])
    train = [ex for i, ex in enumerate(items) if i not in held_idx]
    held = [ex for i, ex in enumerate(items) if i in held_idx]
    return train, held


def split_sizes(n_examples: int, fraction: float, max_examples: int | None = None) -> tuple[int, int]:
    """(train, heldout) sizes :func:`split_heldout` produces, without reading the file."""
    n = min(n_examples, max_examples) if max_examples else n_examples
    held = int(round(n * fraction))
    return n - held, held
