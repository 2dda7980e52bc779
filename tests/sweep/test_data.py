"""emt.sweep.data: chat JSONL validation with file:line messages, and the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emt.sweep.data import DataError, read_chat_jsonl, split_heldout, split_sizes

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_good_file_and_skips_blank_lines(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD)])
    assert len(read_chat_jsonl(p)) == 2


@pytest.mark.parametrize(
    "line, why",
    [
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({"text": "x"}), "no 'messages' list"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "no assistant turn"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}), "empty or missing content"),
        (json.dumps({"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}), "unknown role 'robot'"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    p = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(GOOD), line])
    with pytest.raises(DataError) as ei:
        read_chat_jsonl(p)
    assert ei.value.problems == [ei.value.problems[0]] and f"{p}:3: " in ei.value.problems[0]
    assert why in str(ei.value)


def test_all_bad_lines_reported_and_capped(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "d.jsonl", ["{bad"] * 30)
    with pytest.raises(DataError) as ei:
        read_chat_jsonl(p)
    assert len(ei.value.problems) == 30 and "... and 10 more" in str(ei.value)


def test_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_chat_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_chat_jsonl(tmp_path / "e.jsonl")


def test_split_is_deterministic_disjoint_and_sized() -> None:
    ex = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "a"}]} for i in range(103)]
    tr1, he1 = split_heldout(ex, 0.1, seed=0)
    tr2, he2 = split_heldout(ex, 0.1, seed=0)
    tr3, he3 = split_heldout(ex, 0.1, seed=1)
    assert (tr1, he1) == (tr2, he2) and he1 != he3
    assert len(he1) == 10 and len(tr1) == 93 and (len(tr1), len(he1)) == split_sizes(103, 0.1)
    keys = lambda xs: {x["messages"][0]["content"] for x in xs}  # noqa: E731
    assert not keys(tr1) & keys(he1)
    tr, he = split_heldout(ex, 0.1, seed=0, max_examples=50)
    assert len(tr) + len(he) == 50 and split_sizes(103, 0.1, 50) == (len(tr), len(he))
