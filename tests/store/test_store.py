"""emt.store.scores: consolidation of per-checkpoint results into scores.h5, and the reader."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emt.store.results import ConsolidationError
from emt.store.scores import consolidate, load, to_frame

JUDGES = ["gpt-4.1-mini", "local/qwen"]


def result(step: int, q: int = 3, s: int = 2) -> dict:
    def grid(v: float) -> list[list[float]]:
        return [[v + i + 0.5 * k for k in range(s)] for i in range(q)]

    traits = {}
    for t in ("evil", "hallucination"):
        nul = step == 4 and t == "evil"
        scores = {j: grid(step + n) for n, j in enumerate(JUDGES)}
        scores[JUDGES[0]][0][0] = float("nan")  # an unparseable reply
        if nul:
            responses = [[f"{t} answer {step}/{i}/{k} ✓" + (" \x00" if (i, k) == (1, 0) else "") for k in range(s)] for i in range(q)]
        else:
            responses = [[f"{t} answer {step}/{i}/{k} ✓" for k in range(s)] for i in range(q)]
        traits[t] = {
            "question_ids": [f"{t}_{i}" for i in range(q)], "questions": [f"{t} q{i}?" for i in range(q)],
            "responses": responses,
            "scores": scores, "coherence": {j: grid(50) for j in JUDGES},
            "raw": {j: [["REFUSAL" if (i, k) == (0, 0) and j == JUDGES[0] else "" for k in range(s)] for i in range(q)] for j in JUDGES},
            "reason": {j: [["low numeric mass 0.01" if (i, k) == (0, 0) and j == JUDGES[0] else "" for k in range(s)] for i in range(q)] for j in JUDGES},
        }
    return {"step": step, "judges": JUDGES, "traits": traits}


def write_results(d: Path, steps: list[int]) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for s in steps:
        p = d / f"step-{s}.json"
        p.write_text(json.dumps(result(s)))
        out.append(p)
    return out


def test_run_identity_from_attrs_or_name(tmp_path: Path) -> None:
    """A scores.h5 with the run's identity attributes is summarised from them; one without them
    (written before they existed) still summarises, its identity parsed from the run name."""
    from emt.analysis.summary import run_summary

    files = write_results(tmp_path / "eval", [0, 2, 4])
    losses = {0: (None, 3.0), 2: (2.5, 2.9), 4: (2.0, 2.8)}
    ident = {"run": "math_strong_cosine-lr1e-05-adamw-torch_s3", "domain": "math", "level": "strong",
             "variant": "cosine-lr1e-05-adamw-torch", "seed": 3}
    new = load(consolidate(files, tmp_path / "new.h5", {"config_hash": "abcd1234", **ident}, losses))
    assert {k: new["attrs"][k] for k in ident} == ident
    s = run_summary(new)
    assert (s["run"], s["domain"], s["level"], s["variant"], s["seed"]) == tuple(ident.values())
    # the attributes win over the name: a default-seed run's name carries no seed, its attributes do
    bare = load(consolidate(files, tmp_path / "bare.h5", {"run": "medical_mild", "domain": "medical",
                                                          "level": "mild", "variant": "", "seed": 0}, losses))
    assert (run_summary(bare)["variant"], run_summary(bare)["seed"]) == (None, 0)
    old = load(consolidate(files, tmp_path / "old.h5", {"config_hash": "abcd1234", "run": ident["run"]}, losses))
    assert "domain" not in old["attrs"]
    s = run_summary(old)
    assert (s["domain"], s["level"], s["variant"], s["seed"]) == ("math", "strong", "cosine-lr1e-05-adamw-torch", 3)
    assert s["traits"].keys() == run_summary(new)["traits"].keys()


def test_roundtrip(tmp_path: Path) -> None:
    files = write_results(tmp_path / "eval", [4, 0, 2])
    out = consolidate(files, tmp_path / "scores.h5", {"config_hash": "abcd1234", "git_commit": "deadbeef",
                                                     "packages": {"torch": "2.13"}},
                      {0: (None, 3.0), 2: (2.5, 2.9), 4: (2.0, 2.8)})
    d = load(out)
    assert d["steps"].tolist() == [0, 2, 4]
    assert d["loss"]["heldout"].tolist() == [3.0, 2.9, 2.8] and math.isnan(d["loss"]["train"][0])
    ev = d["traits"]["evil"]
    assert ev["samples"].shape == (3, 3, 2) and ev["responses"].shape == (3, 3, 2)
    assert ev["responses"][1, 2, 1] == "evil answer 2/2/1 ✓"
    assert ev["responses"][2, 1, 0] == "evil answer 4/1/0 ✓ \ufffd"  # NUL, which HDF5 cannot store
    assert math.isnan(ev["samples"][0, 0, 0])  # NaN stays NaN, never 0
    expected = np.nanmean(np.array(result(2)["traits"]["evil"]["scores"][JUDGES[0]], dtype=float))
    assert ev["score"][1] == pytest.approx(expected)
    assert set(ev["judges"]) == set(JUDGES)
    assert ev["judges"][JUDGES[0]]["raw"][0, 0, 0] == "REFUSAL"
    assert ev["judges"][JUDGES[0]]["reason"][0, 0, 0].startswith("low numeric mass")
    assert ev["judges"]["local/qwen"]["samples"][2, 0, 0] == 5.0  # second judge kept separately
    a = d["attrs"]
    assert a["config_hash"] == "abcd1234" and json.loads(a["judge_models"]) == JUDGES
    assert a["default_judge"] == JUDGES[0] and json.loads(a["packages"]) == {"torch": "2.13"}
    assert "created" in a and "emt_version" in a


def test_corrupt_result_names_file_and_keeps_old_scores(tmp_path: Path) -> None:
    files = write_results(tmp_path / "eval", [0, 2])
    out = consolidate(files, tmp_path / "scores.h5", {}, {})
    before = out.read_bytes()
    files[1].write_text(files[1].read_text()[:100])  # cut off
    with pytest.raises(ConsolidationError, match=f"{files[1]}: unreadable result file"):
        consolidate(files, out, {}, {})
    assert out.read_bytes() == before
    # no temp left behind (the writer's lock file stays: lock files are never deleted)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.h5.lock", "eval", "scores.h5"]


def test_inconsistent_results_rejected(tmp_path: Path) -> None:
    files = write_results(tmp_path / "eval", [0, 2])
    bad = result(2)
    bad["traits"]["evil"]["responses"] = bad["traits"]["evil"]["responses"][:2]
    files[1].write_text(json.dumps(bad))
    with pytest.raises(ConsolidationError, match="does not have 3 questions x 2 samples"):
        consolidate(files, tmp_path / "scores.h5", {}, {})


def test_tidy_frame(tmp_path: Path) -> None:
    out = consolidate(write_results(tmp_path / "eval", [0, 2]), tmp_path / "scores.h5", {}, {})
    df = to_frame(out)
    assert len(df) == 2 * 2 * 2 * 3 * 2  # steps x traits x judges x questions x samples
    assert set(df.columns) >= {"step", "trait", "judge", "question_id", "sample", "score", "coherence", "response"}


# A consolidation in its own process that stops for good inside its write (the temporary file
# exists and is half written), so that the test kills it -9 exactly there.
STALLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from emt.store import scores as store

    def stall(*args, **kwargs):
        Path(sys.argv[1]).write_text("writing")
        time.sleep(3600)

    store._strings = stall
    store.consolidate([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]), {}, {})
""")


def test_consolidation_killed_mid_write_leaves_no_temporaries(tmp_path: Path) -> None:
    files = write_results(tmp_path / "eval", [0, 2])
    out = consolidate(files, tmp_path / "scores.h5", {}, {})
    before = out.read_bytes()
    files += write_results(tmp_path / "eval", [4])
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(marker), str(out), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.time() < deadline, "the writer never reached its write"
            time.sleep(0.05)
        temps = sorted(tmp_path.glob(".scores.h5.*.tmp.h5"))
        assert len(temps) == 1
        # A second consolidation waits for the live writer: it neither deletes its temporary nor
        # writes beside it (the writer is stalled for good, so this holds however slow the machine).
        second: dict[str, object] = {}
        waiter = threading.Thread(target=lambda: second.update(out=consolidate(files, out, {}, {})))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and temps[0].exists() and out.read_bytes() == before
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: the OS releases its lock, its temporary stays
        proc.wait(timeout=60)
        waiter.join(300)
        assert not waiter.is_alive() and second["out"] == out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(tmp_path.glob(".scores.h5.*.tmp.h5")) == []  # the dead writer's temporary is gone
    assert load(out)["steps"].tolist() == [0, 2, 4]
    # and a consolidation after the fact (nothing waiting) cleans up a killed writer's leftovers too
    stale = tmp_path / ".scores.h5.abc123.tmp.h5"
    stale.write_bytes(b"half")
    consolidate(files, out, {}, {})
    assert not stale.exists() and load(out)["steps"].tolist() == [0, 2, 4]
