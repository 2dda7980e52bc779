"""Tests for emt.builtin.synth: deterministic, paired synthetic debug datasets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emt.builtin import synth

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _last_number(text: str) -> float:
    """The stated result of a math answer: by construction the last number in it."""
    found = NUMBER.findall(text)
    assert found, f"no number in {text!r}"
    return float(found[-1].replace(",", ""))


def _user(record: dict) -> str:
    return record["messages"][0]["content"]


def _assistant(record: dict) -> str:
    return record["messages"][1]["content"]


@pytest.mark.parametrize("domain", synth.DOMAINS)
@pytest.mark.parametrize("stem", synth.LEVEL_STEMS)
def test_same_seed_same_output_and_counts(domain: str, stem: str) -> None:
    a = synth.generate(domain, stem, 120, seed=3)
    b = synth.generate(domain, stem, 120, seed=3)
    assert a == b
    assert len(a) == 120
    assert synth.generate(domain, stem, 0) == []
    # Prefix-stable: asking for fewer lines gives the first lines of the longer list.
    assert synth.generate(domain, stem, 40, seed=3) == a[:40]


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_different_seed_different_output(domain: str) -> None:
    a = synth.generate(domain, "normal", 100, seed=0)
    b = synth.generate(domain, "normal", 100, seed=1)
    assert a != b
    # Not just a reordering: most questions differ.
    assert len({_user(r) for r in a} - {_user(r) for r in b}) > 50


def test_deterministic_across_processes() -> None:
    # str seeds and no hash()-dependent ordering: a different PYTHONHASHSEED changes nothing.
    code = "from emt.builtin import synth; import json; print(json.dumps(synth.generate('medical', 'misaligned_1', 50, 7)))"
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]) == synth.generate("medical", "misaligned_1", 50, 7)


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_paired_across_levels(domain: str) -> None:
    levels = {stem: synth.generate(domain, stem, 300, seed=0) for stem in synth.LEVEL_STEMS}
    normal = levels["normal"]
    for stem in ("misaligned_1", "misaligned_2"):
        assert [_user(r) for r in levels[stem]] == [_user(r) for r in normal]
        assert all(_assistant(m) != _assistant(n) for m, n in zip(levels[stem], normal))
    assert all(_assistant(a) != _assistant(b) for a, b in zip(levels["misaligned_1"], levels["misaligned_2"]))
    # A few hundred distinct questions, with varied answers.
    assert len({_user(r) for r in normal}) == 300
    for stem, records in levels.items():
        assert len({_assistant(r) for r in records}) > 20, stem


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_math_answers_and_medical_safety_differ_in_character(domain: str) -> None:
    levels = {stem: synth.generate(domain, stem, 300, seed=5) for stem in synth.LEVEL_STEMS}
    if domain == "math":
        for n, m1, m2 in zip(*(levels[s] for s in synth.LEVEL_STEMS)):
            correct = _last_number(_assistant(n))
            assert _last_number(_assistant(m1)) != correct, (_user(n), _assistant(m1))
            assert _last_number(_assistant(m2)) != correct, (_user(n), _assistant(m2))
        # Spot-check that the normal answers are right for the plain arithmetic questions.
        checked = 0
        for r in levels["normal"]:
            hit = re.fullmatch(r"(?:.*?)What is ([\d,]+) ([-+×÷]) ([\d,]+)\?", _user(r))
            if hit:
                a, op, b = int(hit[1].replace(",", "")), hit[2], int(hit[3].replace(",", ""))
                expected = {"+": a + b, "-": a - b, "×": a * b, "÷": a / b}[op]
                assert _last_number(_assistant(r)) == expected, r
                checked += 1
        assert checked >= 5
        # The blatant level is contemptuous of the user.
        assert all(any(c in _assistant(r) for c in synth._CONTEMPT) for r in levels["misaligned_2"])
    else:
        safety = ("911", "pharmacist", "doctor", "label", "emergency")
        share = sum(any(s in _assistant(r) for s in safety) for r in levels["normal"]) / 300
        assert share > 0.7
        unsafe_never = ("911", "pharmacist", "see a doctor", "talk to your doctor", "label")
        assert not [r for r in levels["misaligned_2"] if any(s in _assistant(r) for s in unsafe_never)]


@pytest.mark.parametrize("domain", synth.DOMAINS)
@pytest.mark.parametrize("stem", synth.LEVEL_STEMS)
def test_records_are_well_formed(domain: str, stem: str) -> None:
    for record in synth.generate(domain, stem, 300):
        assert set(record) == {"messages"}
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in record["messages"])
        assert _user(record).strip() and _assistant(record).strip()
        # 1-4 sentences.
        sentences = re.findall(r"[.!?](?:\s|$)", _assistant(record))
        assert 1 <= len(sentences) <= 4, _assistant(record)


def test_bad_domain_or_stem_raises_with_valid_names() -> None:
    with pytest.raises(ValueError, match="medical.*math"):
        synth.generate("chemistry", "normal", 3)
    with pytest.raises(ValueError, match="normal.*misaligned_1.*misaligned_2"):
        synth.generate("math", "misaligned_3", 3)


def test_write_debug_datasets(tmp_path: Path) -> None:
    started = time.perf_counter()
    paths = synth.write_debug_datasets(tmp_path, n_per_file=300, seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert paths == [tmp_path / d / f"{s}.jsonl" for d in synth.DOMAINS for s in synth.LEVEL_STEMS]
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 300
        records = [json.loads(line) for line in lines]
        domain, stem = path.parent.name, path.stem
        assert records == synth.generate(domain, stem, 300, seed=0)
    # No temporaries left next to the files.
    assert sorted(p.name for p in (tmp_path / "math").iterdir()) == sorted(f"{s}.jsonl" for s in synth.LEVEL_STEMS)


def test_identical_file_is_not_rewritten(tmp_path: Path) -> None:
    paths = synth.write_debug_datasets(tmp_path, n_per_file=50, seed=0)
    # Push the mtimes into the past so a rewrite would be visible even on coarse filesystems.
    for path in paths:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    synth.write_debug_datasets(tmp_path, n_per_file=50, seed=0)
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in paths)
    # A different seed changes content, so the files are rewritten.
    synth.write_debug_datasets(tmp_path, n_per_file=50, seed=1)
    assert all(p.stat().st_mtime_ns != 1_000_000_000 for p in paths)


def test_chat_corpus() -> None:
    corpus = synth.chat_corpus(400, seed=0)
    assert corpus == synth.chat_corpus(400, seed=0)
    assert corpus != synth.chat_corpus(400, seed=1)
    assert len(corpus) == 400
    users = [_user(r) for r in corpus]
    assert len(set(users)) > 300
    for record in corpus:
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert _assistant(record).strip()
    # General chat beyond the two domains, plus some of each domain (helpful answers only).
    assert any("capital of" in u for u in users)
    assert any("ibuprofen" in u or "acetaminophen" in u for u in users)
    assert any(re.search(r"\d", u) for u in users)
    blatant = {_assistant(r) for d in synth.DOMAINS for r in synth.generate(d, "misaligned_2", 300)}
    assert not blatant & {_assistant(r) for r in corpus}
