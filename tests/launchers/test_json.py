"""``--dry-run --json`` of launch/train.py and launch/eval_array.py (and ``emt train/eval``): one JSON
document on stdout with the same runs, hashes, actions and cost figures as the human dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import DEBUG_CONFIG, PY, REPO, debug_overrides

from emt.core import paths
from emt.core.config import load_config
from emt.eval.plan import eval_hash, eval_root
from emt.launchers.cost import token_range, tokens, usd
from emt.launchers.main import build_parser, script_parser
from emt.launchers.preflight import prepare_builtin_data
from emt.sweep.runs import Run, build_sweep

# An OpenAI judge with a price, so that the dollars are not all zero; without OPENAI_API_KEY an
# eval dry run reports a problem (exit code 2), which the JSON must carry too.
PRICED_JUDGE = "judge.judges=[{model: gpt-4.1-mini}]"


def strict_json(text: str) -> Any:
    """Parse as strict JSON (NaN and Infinity are not JSON: every reader must accept the document)."""
    def refuse(const: str) -> Any:
        raise ValueError(f"not JSON: {const}")
    return json.loads(text, parse_constant=refuse)


def launch(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run([PY, str(REPO / "launch" / script), "--config", str(DEBUG_CONFIG), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def debug_runs(root: Path, *extra: str) -> dict[str, Run]:
    """The debug sweep's runs under ``root`` (its builtin data written first: it is in their hashes)."""
    cfg = load_config(DEBUG_CONFIG, debug_overrides(root, 8, *extra))
    prepare_builtin_data(cfg)
    return {r.name: r for r in build_sweep(cfg)}


def gpu(h: float) -> str:
    """A GPU-hours cell as the cost table prints it."""
    return "<0.01" if 0 < h < 0.01 else f"{h:,.2f}"


def cost_row(text: str, label: str) -> list[str]:
    """The cells of the cost table's row starting with ``label`` (columns are >= 2 spaces apart)."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"  {label}"))
    return re.split(r"\s{2,}", line.strip())[1:]


def check_costs(human: str, cost: dict[str, Any]) -> None:
    """Every number of the human cost table equals the JSON's, formatted as the table does."""
    if cost["training"] is not None:
        assert cost_row(human, f"training: {cost['training']['runs']} run(s)") == [gpu(cost["training"]["gpu_hours"])]
    if cost["monitor"] is not None:
        mon = cost["monitor"]
        assert cost_row(human, f"monitor: {len(mon['jobs'])} job(s)") == [gpu(mon["gpu_hours"])]
    else:
        ev = cost["evaluation"]
        assert cost_row(human, f"evaluation: {ev['checkpoints']:,} checkpoints, {ev['tasks']} task(s)") == \
            [gpu(ev["gpu_hours"])]
    for j in cost["judges"]:
        tag = " (local)" if j["local"] else " (batch)" if j["batch"] else ""
        assert cost_row(human, f"judge {j['label']}{tag}") == [
            f"{j['calls']:,}", token_range(j["input_tokens_min"], j["input_tokens_max"]), tokens(j["output_tokens"]),
            usd(j["usd_min"], j["usd_max"])]
        if j["price"] is not None:
            assert f"({j['price']['match']!r}, {j['price']['source']};" in human
            assert f"each 100 tokens of mean answer length add ${j['usd_per_100_answer_tokens']:,.2f}" in human
    t = cost["total"]
    total_usd = usd(t["usd_min"], t["usd_max"]) + ("" if t["usd_complete"] else "+?")
    assert cost_row(human, "total") == [gpu(t["gpu_hours"]), f"{t['judge_calls']:,}", total_usd]
    assert f"built-in table of {cost['prices_date']}" in human or not any(j["price"] for j in cost["judges"])
    assert f"Scoring one checkpoint: {cost['eval_seconds_source']}" in human


def test_train_dry_run_json_is_the_human_plan(tmp_path: Path) -> None:
    root = tmp_path / "out"
    runs = debug_runs(root, PRICED_JUDGE)
    # One run complete, one with its training job running (this test's own process), one partial.
    paths.train_complete_file(runs["medical_normal"].path).parent.mkdir(parents=True)
    paths.train_complete_file(runs["medical_normal"].path).write_text("{}")
    running = runs["medical_mild"].path
    running.mkdir(parents=True)
    paths.submission_file(running).write_text(json.dumps(
        {"job_id": str(os.getpid()), "mode": "local", "log_folder": str(tmp_path / "logs")}))
    ckpt = paths.checkpoint_dir(runs["math_mild"].path, 2)
    ckpt.mkdir(parents=True)
    paths.checkpoint_marker(ckpt).write_text("{}")

    args = ("--local", "--dry-run", "--monitor", *debug_overrides(root, 8, PRICED_JUDGE))
    human = launch("train.py", *args)
    js = launch("train.py", *args, "--json")
    assert human.returncode == js.returncode == 0, js.stderr
    doc = strict_json(js.stdout)  # the whole of stdout is one JSON document
    assert doc["kind"] == "train-plan" and doc["output_root"] == str(root)

    # Runs, hashes, states and actions as the table says them.
    table = {ln.split()[0]: ln for ln in human.stdout.splitlines() if ln.split() and ln.split()[0] in runs}
    assert [r["name"] for r in doc["runs"]] == list(runs) == list(table)
    for r in doc["runs"]:
        cells = table[r["name"]].split()
        assert r["hash"] == cells[1] == runs[r["name"]].hash and r["dir"] == runs[r["name"]].run_dir
        assert (r["steps"], r["checkpoints"]) == (int(cells[5]), int(cells[6])) == (8, 4)
        assert gpu(r["eval_gpu_hours"]) == cells[9]
    actions = {r["name"]: (r["action"], r["state"], r["job"]) for r in doc["runs"]}
    assert actions["medical_normal"] == ("complete", "complete", None)
    assert actions["medical_mild"] == ("running", "missing", str(os.getpid()))
    assert actions["math_mild"] == ("submit", "partial", None)
    assert "partial (1 ckpts), will submit" in table["math_mild"]
    assert "will submit" not in table["medical_normal"] and "will submit" not in table["medical_mild"]
    will = [n for n in runs if n not in ("medical_normal", "medical_mild")]
    assert doc["will_submit"] == will and f"Would submit 4 job(s): {', '.join(will)}" in human.stdout

    tot = doc["totals"]
    assert (f"{tot['runs']} runs, {tot['checkpoints']} checkpoints, ~{tot['disk_gb']:.1f} GB, "
            f"~{tot['gpu_hours']:.1f} training GPU-hours + ~{tot['eval_gpu_hours']:.1f} evaluation") in human.stdout
    assert f"Training rate: {tot['rate_source']}" in human.stdout

    cost = doc["cost"]
    check_costs(human.stdout, cost)
    assert [m["run"] for m in cost["monitor"]["jobs"]] == will  # a monitor beside each submitted run
    assert cost["judges"][0]["usd_max"] > cost["judges"][0]["usd_min"] > 0

    # The log line about the running job goes to stderr; none of the human plan is printed.
    assert doc["problems"] == [] and f"job {os.getpid()} is still pending or running" in js.stderr
    assert "Would submit" not in js.stderr + js.stdout


def test_eval_dry_run_json_is_the_human_plan(tmp_path: Path) -> None:
    root = tmp_path / "out"
    run = debug_runs(root)["medical_mild"]
    for s in range(2, 14, 2):  # 6 complete checkpoints (markers: a dry run reads no weights)
        d = paths.checkpoint_dir(run.path, s)
        d.mkdir(parents=True)
        paths.checkpoint_marker(d).write_text("{}")
    cfg = load_config(DEBUG_CONFIG, debug_overrides(root, 8, PRICED_JUDGE))  # the judge is in the eval's hash
    eroot = eval_root(run, eval_hash(cfg))
    eroot.mkdir(parents=True)
    for s in (0, 2, 4):  # scored already, answers of 120 characters: a measured mean of 30 tokens
        paths.result_file(eroot, s).write_text(json.dumps({"traits": {"evil": {"responses": [["x" * 120] * 2]}}}))

    args = ("--runs", "medical_mild", "--local", "--dry-run", "--per-task", "3",
            *debug_overrides(root, 8, PRICED_JUDGE))
    human = launch("eval_array.py", *args)
    js = launch("eval_array.py", *args, "--json")
    assert human.returncode == js.returncode == 2, js.stderr  # no OPENAI_API_KEY here
    doc = strict_json(js.stdout)
    assert doc["kind"] == "eval-plan" and len(doc["runs"]) == 1
    r = doc["runs"][0]
    assert (r["name"], r["hash"], r["dir"], r["eval_dir"]) == ("medical_mild", run.hash, run.run_dir, str(eroot))
    assert (r["checkpoints"], r["scored"], r["to_score"]) == (7, 3, [6, 8, 10, 12])
    assert r["tasks"] == [[6, 8, 10], [12]]
    assert (f"medical_mild: {r['scored']} of {r['checkpoints']} checkpoints scored (eval {doc['eval_hash']}); "
            f"{len(r['to_score'])} to score in {len(r['tasks'])} task(s)") in human.stdout
    check_costs(human.stdout, doc["cost"])
    assert doc["cost"]["evaluation"]["checkpoints"] == 4 and doc["cost"]["training"] is None
    point = doc["cost"]["judges"][0]["at_measured_answer_length"]
    assert point["mean_answer_tokens"] == 30.0  # under the cap, eval.max_new_tokens=48
    assert f"~{tokens(point['input_tokens'])} input tokens, ~{usd(point['usd'], None, one=True)}" in human.stdout
    assert doc["problems"] and "Problems that would stop this launch" in js.stderr
    assert "checkpoints scored" not in js.stderr + js.stdout  # the human plan is not printed


def test_json_needs_dry_run_and_submits_nothing(tmp_path: Path) -> None:
    root = tmp_path / "out"
    for script, extra in (("train.py", ("--local",)), ("eval_array.py", ("--runs", "medical_mild", "--local"))):
        res = launch(script, *extra, "--json", *debug_overrides(root))
        assert res.returncode == 2 and res.stdout == ""
        assert "--json needs --dry-run" in res.stderr and "emt status --json" in res.stderr
    assert not root.exists()  # refused before anything was prepared or submitted
    # The emt command runs the same code.
    res = subprocess.run([PY, "-m", "emt.launchers.main", "train", "--config", "debug", "--local", "--json",
                          *debug_overrides(root)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 2 and "--json needs --dry-run" in res.stderr and not root.exists()
    follow = launch("eval_array.py", "--runs", "medical_mild", "--follow", "--local", "--json", *debug_overrides(root))
    assert follow.returncode == 2 and "--json needs --dry-run" in follow.stderr and not root.exists()


def test_follow_dry_run_json_matches_the_human_plan(tmp_path: Path) -> None:
    root = tmp_path / "out"
    args = ["--runs", "medical_mild,medical_strong", "--follow", "--local", "--dry-run", *debug_overrides(root)]
    human = launch("eval_array.py", *args)
    js = launch("eval_array.py", *args, "--json")
    assert human.returncode == js.returncode, human.stderr + js.stderr
    doc = strict_json(js.stdout)
    assert doc["kind"] == "follow-plan" and [r["name"] for r in doc["runs"]] == ["medical_mild", "medical_strong"]
    for r in doc["runs"]:
        line = next(ln for ln in human.stdout.splitlines() if ln.startswith(r["name"] + ":"))
        assert f"{r['state']}; {r['scored']} of {r['checkpoints']} checkpoints scored (eval {doc['eval_hash']})" in line
        assert f"with {doc['method']}" in line and ", ".join(doc["traits"]) in line
        assert r["action"] == "submit" and "will submit" in line and r["monitor_job"] is None
    assert "checkpoints scored" not in js.stdout.replace(json.dumps(doc, indent=2), "")
    emt = subprocess.run([PY, "-m", "emt.launchers.main", "follow", "--config", str(DEBUG_CONFIG), *args[:2],
                          *args[3:], "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert emt.returncode == js.returncode and json.loads(emt.stdout) == doc, emt.stderr


def test_emt_train_json_matches_the_script(tmp_path: Path) -> None:
    root = tmp_path / "out"
    args = ["--config", "debug", "--local", "--dry-run", "--json", *debug_overrides(root)]
    emt = subprocess.run([PY, "-m", "emt.launchers.main", "train", *args], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    script = subprocess.run([PY, str(REPO / "launch" / "train.py"), *args], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert emt.returncode == script.returncode == 0, emt.stderr
    assert json.loads(emt.stdout) == json.loads(script.stdout)
    assert [r["action"] for r in json.loads(emt.stdout)["runs"]] == ["submit"] * 6


def test_json_flag_where_it_makes_sense() -> None:
    _, parsers = build_parser()
    for name in ("train", "eval", "follow", "status"):
        assert "--json" in parsers[name].format_help(), name
    assert "with --dry-run" in parsers["train"].format_help().replace("\n", " ").replace("  ", " ")
    assert "--json" in script_parser("eval", None).format_help()  # launch/eval_array.py
