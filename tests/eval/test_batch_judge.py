"""The Batch API judge (emt.eval.batch_judge) against the fake server's Batch API routes
(tests.fakes.judge_server): the same scores as the synchronous judge, resume after a kill,
resubmission of expired and failed lines, a batch failing as a whole, the split into batches,
the halved price, and that the key is written nowhere.

Offline on 127.0.0.1, with a poll interval of a few milliseconds; a few seconds on 2 cores.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from pathlib import Path

import pytest

from emt.eval.batch_judge import BatchOpenAIJudge, BatchPending, _Line, batch_mode, batch_state
from emt.eval.judge import (
    JudgeCache,
    JudgeIncomplete,
    JudgeUnavailable,
    OpenAIJudge,
    estimate_cost,
    price_for,
    prompt_key,
)
from tests.fakes.judge_server import BatchScript, JudgeServer

SENTINEL = "sk-test-SENTINEL-batch-1a2b3c"
TRANSPORTS = ["httpx"] + (["aiohttp"] if importlib.util.find_spec("aiohttp") else [])
PROMPTS = [f"batch prompt {i}" for i in range(30)]  # 28 is a refusal (NaN)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    return SENTINEL


def batch_judge(url: str, cache: JudgeCache | None = None, **kw: object) -> BatchOpenAIJudge:
    kw.setdefault("transport", "httpx")
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("poll_s", 0.005)
    return BatchOpenAIJudge(base_url=url, cache=cache, api_key_env="OPENAI_API_KEY",
                            **kw)  # type: ignore[arg-type]


def sync_judge(url: str, cache: JudgeCache | None = None) -> OpenAIJudge:
    return OpenAIJudge(base_url=url, transport="httpx", cache=cache, max_retries=0, timeout_s=5.0)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_batch_scores_equal_the_synchronous_path(tmp_path: Path, transport: str) -> None:
    server = JudgeServer()
    with server as url:
        sync = sync_judge(url).score(PROMPTS)
        assert server.batches == {}
        cache = JudgeCache(tmp_path / "judge-cache.sqlite")
        with batch_state(tmp_path / "state"):  # the multipart upload through either transport
            res = batch_judge(url, cache, transport=transport).score(PROMPTS + PROMPTS[:3])  # repeats sent once
        assert len(server.batches) == 1
        [b] = server.batches.values()
        assert b["status"] == "completed" and b["endpoint"] == "/v1/chat/completions"
        lines = [json.loads(x) for x in server.files[b["input_file_id"]].decode().splitlines()]
        assert len(lines) == len(PROMPTS)
        body = lines[0]["body"]
        assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"], body["seed"]) == \
            (1, 0, True, 20, 0)
        assert any(math.isnan(j.score) for j in sync) and any(not math.isnan(j.score) for j in sync)
        for s, r in zip(sync + sync[:3], res):
            assert same(s.score, r.score) and s.raw == r.raw and s.reason == r.reason and s.logprobs == r.logprobs
            assert not r.failed
        # The replies are in the shared cache: the synchronous judge on the same cache asks nothing.
        before = server.total_requests
        again = sync_judge(url, cache).score(PROMPTS)
        assert server.total_requests == before and all(j.cached for j in again)
        # The ledger is gone once harvested; the key was written nowhere.
        assert not any((tmp_path / "state").glob("*.json")) if (tmp_path / "state").exists() else True
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert SENTINEL.encode() not in f.read_bytes(), f
        # The batch judge's key went to the server it was named for (the sync judge sends a placeholder).
        assert f"Bearer {SENTINEL}" in server.auth_headers()
        assert set(server.auth_headers()) == {f"Bearer {SENTINEL}", "Bearer EMPTY"}


def test_killed_after_submission_resumes_the_same_batch(tmp_path: Path) -> None:
    # The first batch stays in progress long enough for the "task" to be killed while polling.
    server = JudgeServer(batch_scripts=[BatchScript(polls=10**9)])
    state = tmp_path / "judge-batches" / "step-3"
    with server as url:
        judge = batch_judge(url, JudgeCache(tmp_path / "c.sqlite"))

        async def killed() -> None:
            with batch_state(state):
                await asyncio.wait_for(judge.ascore(PROMPTS), timeout=1.0)

        with pytest.raises(asyncio.TimeoutError):
            asyncio.run(killed())
        assert len(server.batches) == 1
        [ledger] = state.glob("*.json")
        entry = json.loads(ledger.read_text())["batches"][0]
        assert entry["batch_id"] in server.batches and SENTINEL not in ledger.read_text()
        server.batches[entry["batch_id"]]["_script"].polls = 0  # the API finishes it meanwhile

        # A requeued task: a new judge (new process) with the same state dir.
        rerun = batch_judge(url, JudgeCache(tmp_path / "c.sqlite"))
        with batch_state(state):
            res = rerun.score(PROMPTS)
        assert len(server.batches) == 1  # polled the same batch, created none
        assert rerun.batches_created == 0
        assert sum(server.batch_line_counts.values()) == len(PROMPTS)
        sync = sync_judge(url).score(PROMPTS)
        assert all(same(a.score, b.score) for a, b in zip(sync, res))
        assert not list(state.glob("*.json")) and not list(state.glob("*.jsonl"))


def test_submit_mode_leaves_the_batch_running_and_wait_mode_harvests_it(tmp_path: Path) -> None:
    """The GPU eval task's mode: submit, poll once, raise BatchPending (no waiting); a second
    submit-mode call with the same state creates nothing; wait mode (the harvest) polls the same
    batch to its end. The scores are the synchronous judge's."""
    server = JudgeServer(batch_scripts=[BatchScript(polls=10**9)])
    state = tmp_path / "state"
    with server as url:
        cache = JudgeCache(tmp_path / "c.sqlite")
        with batch_state(state), batch_mode("submit"):
            with pytest.raises(BatchPending) as info:
                batch_judge(url, cache).score(PROMPTS)
            assert info.value.lines == len(PROMPTS) and info.value.batches == 1
            with pytest.raises(BatchPending):  # a rerun of the task: the same batch, still running
                batch_judge(url, cache).score(PROMPTS)
        assert len(server.batches) == 1 and list(state.glob("*.json"))
        [b] = server.batches.values()
        b["_script"].polls = 0  # the API finishes it
        with batch_state(state), batch_mode("wait"):
            harvester = batch_judge(url, cache)
            res = harvester.score(PROMPTS)
        assert len(server.batches) == 1 and harvester.batches_created == 0
        sync = sync_judge(url).score(PROMPTS)
        assert all(same(a.score, b.score) for a, b in zip(sync, res))
        assert not list(state.glob("*.json"))


def test_sync_mode_asks_directly_and_no_batch_is_created(tmp_path: Path) -> None:
    server = JudgeServer()
    with server as url:
        with batch_state(tmp_path / "state"), batch_mode("sync"):
            res = batch_judge(url).score(PROMPTS[:5])
        assert server.batches == {} and server.total_requests == 5
        assert all(same(a.score, b.score) for a, b in zip(sync_judge(url).score(PROMPTS[:5]), res))
    with pytest.raises(ValueError, match="batch mode 'later'"):
        with batch_mode("later"):
            pass


def test_killed_between_upload_and_create_finds_the_batch(tmp_path: Path) -> None:
    server = JudgeServer()
    state = tmp_path / "s"
    with server as url:
        judge = batch_judge(url, JudgeCache(tmp_path / "c.sqlite"))
        with batch_state(state):
            judge.score(PROMPTS[:4])
        assert len(server.batches) == 1
        # Re-create the ledger as a kill right after batches.create (before its id was saved) leaves it.
        [b] = server.batches.values()
        state.mkdir(parents=True, exist_ok=True)
        (state / "x.jsonl").write_bytes(server.files[b["input_file_id"]])
        name = f"{judge.name}.json".replace("/", "_")
        (state / name).write_text(json.dumps({"batches": [
            {"input": "x.jsonl", "model": judge.model, "n": 4, "round": 0, "file_id": b["input_file_id"],
             "batch_id": None}]}))
        rerun = batch_judge(url, JudgeCache(tmp_path / "c2.sqlite"))
        with batch_state(state):
            res = rerun.score(PROMPTS[:4])
        assert len(server.batches) == 1 and rerun.batches_created == 0
        assert [r.cached for r in res] == [False] * 4 and all(r.reason or not math.isnan(r.score) for r in res)


def test_expired_and_failed_lines_are_resubmitted_once_then_scored(tmp_path: Path) -> None:
    server = JudgeServer(batch_scripts=[BatchScript("expired", expire=["prompt 1"], line_status={"prompt 2": 500})])
    with server as url:
        cache = JudgeCache(tmp_path / "c.sqlite")
        judge = batch_judge(url, cache)
        with batch_state(tmp_path / "s"):
            res = judge.score(PROMPTS)
        retried = [p for p in PROMPTS if "prompt 1" in p or "prompt 2" in p]
        assert len(server.batches) == 2
        second = list(server.batches.values())[1]
        lines = [json.loads(x) for x in server.files[second["input_file_id"]].decode().splitlines()]
        assert sorted(ln["body"]["messages"][0]["content"] for ln in lines) == sorted(retried)
        sync = sync_judge(url).score(PROMPTS)
        assert all(same(a.score, b.score) and a.reason == b.reason for a, b in zip(sync, res))
        assert not any(r.failed for r in res)
        u = judge.usage()
        assert u["retries"] == len(retried) and u["calls"] == len(PROMPTS) + len(retried) and u["batch"]
        assert u["est_cost_usd"] == pytest.approx(
            estimate_cost(judge.model, u["prompt_tokens"], u["completion_tokens"]) / 2)
        assert "at the Batch API price" in judge.format_usage()


def test_lines_failing_every_round_leave_the_checkpoint_unscored(tmp_path: Path) -> None:
    server = JudgeServer(batch_scripts=[BatchScript("expired", expire=["prompt 5"])] * 2)
    with server as url:
        cache = JudgeCache(tmp_path / "c.sqlite")
        with batch_state(tmp_path / "s"):
            res = batch_judge(url, cache, max_retries=1).score(PROMPTS)
        assert len(server.batches) == 2
        bad = [r for p, r in zip(PROMPTS, res) if "prompt 5" in p]
        assert bad and all(r.failed and math.isnan(r.score) and r.reason == "batch_expired after 1 retries"
                           for r in bad)
        assert all(not r.failed for p, r in zip(PROMPTS, res) if "prompt 5" not in p)
        # Not cached: a rerun asks exactly those again (and they succeed now).
        with batch_state(tmp_path / "s"):
            again = batch_judge(url, cache, max_retries=1).score(PROMPTS)
        third = list(server.batches.values())[2]
        assert len(server.files[third["input_file_id"]].decode().splitlines()) == len(bad)
        assert not any(r.failed for r in again)


def test_a_batch_that_fails_entirely_is_one_clear_line(tmp_path: Path) -> None:
    server = JudgeServer(batch_scripts=[BatchScript("failed")])
    state = tmp_path / "s"
    with server as url:
        with batch_state(state), pytest.raises(JudgeUnavailable) as e:
            batch_judge(url, JudgeCache(tmp_path / "c.sqlite")).score(PROMPTS)
        msg = str(e.value)
        assert "\n" not in msg and "batch_emt0001 failed as a whole" in msg and "does not exist" in msg
        assert "rerun" in msg and SENTINEL not in msg
        assert not list(state.glob("*.json"))  # forgotten: a rerun after the fix submits afresh


def test_split_into_several_batches(tmp_path: Path) -> None:
    server = JudgeServer()
    with server as url:
        judge = batch_judge(url, max_requests=10)
        res = judge.score(PROMPTS)  # no state dir: an in-memory ledger
        assert len(server.batches) == 3 and judge.batches_created == 3
        sizes = sorted(len(server.files[b["input_file_id"]].decode().splitlines()) for b in server.batches.values())
        assert sizes == [10, 10, 10]
        same_length = [p + " b" for p in PROMPTS[10:22]]
        one = judge._request(_Line(same_length[0], prompt_key(same_length[0])))
        by_bytes = batch_judge(url, max_bytes=len(one) * 5 + 1)
        by_bytes.score(same_length)  # 5 + 5 + 2 lines
        assert len(server.batches) == 3 + 3
        assert all(not math.isnan(r.score) or r.reason for r in res)


def test_poll_errors_keep_the_ledger_for_a_rerun(tmp_path: Path) -> None:
    server = JudgeServer(batch_scripts=[BatchScript(polls=10**9)])
    state = tmp_path / "s"
    with server as url:
        judge = batch_judge(url, max_retries=0)
        with batch_state(state):
            async def go() -> None:
                await asyncio.wait_for(judge.ascore(PROMPTS[:3]), timeout=0.5)
            with pytest.raises(asyncio.TimeoutError):
                asyncio.run(go())
    # The server is gone: polling fails in one line naming the ledger's promise.
    rerun = batch_judge(url, max_retries=0)
    with batch_state(state), pytest.raises((JudgeIncomplete, JudgeUnavailable)) as e:
        rerun.score(PROMPTS[:3])
    assert "\n" not in str(e.value)
    assert list(state.glob("*.json"))  # still there for the next try


def test_batch_price_is_half() -> None:
    full = estimate_cost("gpt-4.1-mini-2025-04-14", 1_000_000, 1_000_000)
    half = estimate_cost("gpt-4.1-mini-2025-04-14", 1_000_000, 1_000_000, batch=True)
    assert full == pytest.approx(2.0) and half == pytest.approx(1.0)
    assert price_for("gpt-4.1-mini", {"gpt-4.1-mini": (1.0, 4.0)}, batch=True) == ("gpt-4.1-mini", 0.5, 2.0)


# =============================================================================================
# The eval task's wiring: a checkpoint's ledger and answers next to its results (no model runs)
# =============================================================================================

_TASK_CHILD = r'''
import json, sys
from pathlib import Path
from tests.eval.test_batch_judge import shard_for
shard = shard_for(Path(sys.argv[1]), sys.argv[2])
from emt.eval.task import Generated
answers = json.loads(sys.argv[3])
shard.judge_and_write(Generated(2, answers, 0.0))
'''


def shard_for(root: Path, url: str, *overrides: str) -> object:
    """A ShardRun of the debug config's medical_mild run whose session has the configured judges
    (a batch judge on ``url``) and no generator: stored answers are all it can judge."""
    from emt.core import paths
    from emt.core.config import load_config
    from emt.core.locks import StepLocks
    from emt.eval.plan import EvalTask, eval_hash, eval_root, load_traits
    from emt.eval.task import ShardRun, conversations, make_judges
    from emt.sweep.runs import build_sweep

    judges = json.dumps([{"backend": "openai", "model": "gpt-4.1-mini", "base_url": url,
                          "api_key_env": "OPENAI_API_KEY", "batch": True}])
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "debug.yaml", [
        f"cluster.output_root={root}", "eval.questions_per_trait=2", "eval.samples_per_question=2",
        "activations.layers=[]", f"judge.judges={judges}", "judge.batch_poll_s=0.01", "judge.max_retries=1",
        *overrides])
    run = build_sweep(cfg, "all", runs=["medical_mild"])[0]
    ehash = eval_hash(cfg)
    er = eval_root(run, ehash)

    class Session:  # what ShardRun reads of an EvalSession, without a generator
        traits = load_traits(cfg)
        convs = conversations(traits)
        judges = make_judges(cfg, batch=True)
        capturer = None
        gen = None
        lora = False
        per_call = 1

    locks = StepLocks(lambda s: paths.eval_step_lock(er, s), lambda s: paths.result_file(er, s).is_file())
    return ShardRun(EvalTask(run, (2,), 0, ehash), Session(), locks,  # type: ignore[arg-type]
                    {"evaluated": [], "judge_calls": 0, "generations": 0})


def test_eval_task_killed_after_submission_resumes_the_same_batch(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from emt.core import paths
    from emt.eval.task import make_judges

    server = JudgeServer(batch_scripts=[BatchScript(polls=10**9)])
    with server as url:
        shard = shard_for(tmp_path, url)
        n = len(shard.session.convs)  # type: ignore[attr-defined]
        answers = [[f"answer {k} to question {i}" for k in range(2)] for i in range(n)]
        repo = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen([sys.executable, "-c", _TASK_CHILD, str(tmp_path), url, json.dumps(answers)],
                                 env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pending = paths.judge_batch_dir(shard.root, 2)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        try:
            while not (list(pending.glob("*.json")) and server.batches and any(
                    json.loads(f.read_text()).get("batches", [{}])[0].get("batch_id")
                    for f in pending.glob("*.json") if f.name != "answers.json")):
                assert child.poll() is None, child.communicate()[0]
                assert time.monotonic() < deadline, "the child task never submitted its batch"
                time.sleep(0.05)
        finally:
            child.kill()  # the task dies while its batch runs
            child.wait()
        assert len(server.batches) == 1 and (pending / "answers.json").is_file()
        assert not paths.result_file(shard.root, 2).exists()  # type: ignore[attr-defined]
        [b] = server.batches.values()
        b["_script"].polls = 0  # meanwhile the API finishes the batch

        # The requeued task: a fresh ShardRun; step 2's answers come from its pending dir, and its
        # judge polls the recorded batch instead of submitting another.
        rerun = shard_for(tmp_path, url)
        rerun.evaluate([2])  # type: ignore[attr-defined]
        assert len(server.batches) == 1
        result = json.loads(paths.result_file(rerun.root, 2).read_text())  # type: ignore[attr-defined]
        assert not result.get("judge_failed")
        assert not pending.exists()  # harvested and scored: nothing left to resume
        # The scores equal the synchronous judge's on the same answers.
        sync_cfg_judge = make_judges(rerun.cfg)[0]  # type: ignore[attr-defined]
        assert type(sync_cfg_judge) is OpenAIJudge  # the monitor's path: synchronous
        traits = rerun.session.traits  # type: ignore[attr-defined]
        convs = [(t, q) for t in traits for q in t.questions]
        prompts = [t.judge_prompt_for(q, a) for (t, q), ans in zip(convs, answers) for a in ans]
        sync = sync_judge(url).score(prompts)
        got = [x for t in traits for row in result["traits"][t.name]["scores"]["gpt-4.1-mini"] for x in row]
        assert len(got) == len(sync)
        assert all(same(float("nan") if g is None else g, s.score) for g, s in zip(got, sync))


def test_eval_task_defers_to_the_harvest_which_scores_on_cpu(tmp_path: Path) -> None:
    """ShardRun in the GPU task's mode (wait_batches=False) submits step 2's batch and defers the
    step (no result, answers and ledger kept, lock released); harvest_run then scores it without a
    model, marks the result's judge as a Batch API one, and leaves nothing to resume."""
    from emt.core import paths
    from emt.eval.task import harvest_run

    server = JudgeServer(batch_scripts=[BatchScript(polls=10**9)])
    with server as url:
        shard = shard_for(tmp_path, url)
        shard.wait_batches = False  # type: ignore[attr-defined]
        n = len(shard.session.convs)  # type: ignore[attr-defined]
        answers = [[f"answer {k} to question {i}" for k in range(2)] for i in range(n)]
        from emt.eval.task import Generated
        shard.judge_and_write(Generated(2, answers, 0.0))  # type: ignore[attr-defined]
        root = shard.root  # type: ignore[attr-defined]
        assert shard.stats["batch_pending"] == [2] and shard.stats["evaluated"] == []  # type: ignore[attr-defined]
        assert not paths.result_file(root, 2).exists()
        assert paths.judge_batch_steps(root) == [2] and len(server.batches) == 1
        # status shows the step as waiting for the Batch API (table and --json).
        from emt.launchers.status import collect, format_table, row_json
        [row] = collect(shard.cfg, [shard.run])  # type: ignore[attr-defined]
        assert row.batch_waiting == [2] and row_json(row)["batch_waiting"] == [2]
        assert "medical_mild: 1 checkpoint(s), steps [2]" in format_table([row])
        [b] = server.batches.values()
        b["_script"].polls = 2  # the API finishes after two more polls
        stats = harvest_run(shard.run, shard.task.eval_hash)  # type: ignore[attr-defined]
        assert stats["evaluated"] == [2] and len(server.batches) == 1
        result = json.loads(paths.result_file(root, 2).read_text())
        assert result["batch_judges"] == ["gpt-4.1-mini"] and not result.get("judge_failed")
        assert result["traits"]["evil"]["responses"][0] == answers[0]
        assert paths.judge_batch_steps(root) == [] and not paths.judge_batch_dir(root, 2).exists()
        assert harvest_run(shard.run, shard.task.eval_hash)["evaluated"] == []  # type: ignore[attr-defined]
        # A step scored elsewhere (the monitor) while its batch ran: the harvest drops its batch dir.
        stale = paths.judge_batch_answers(root, 2)
        stale.parent.mkdir(parents=True)
        stale.write_text("{}")
        assert harvest_run(shard.run, shard.task.eval_hash)["evaluated"] == []  # type: ignore[attr-defined]
        assert not stale.parent.exists()
        # The usage line and the tracker's per-checkpoint cost use the Batch price (half).
        from emt.eval.consolidate import judge_costs
        cost = judge_costs(shard.run, [paths.result_file(root, 2)])[2]["gpt-4.1-mini"]  # type: ignore[attr-defined]
        result["batch_judges"] = []
        plain = root / "plain.json"
        plain.write_text(json.dumps(result))
        full = judge_costs(shard.run, [plain])[2]["gpt-4.1-mini"]  # type: ignore[attr-defined]
        assert cost == pytest.approx(full / 2)


def test_harvest_names_unreadable_answers(tmp_path: Path) -> None:
    from emt.core import paths
    from emt.eval.task import harvest_run

    with JudgeServer() as url:
        shard = shard_for(tmp_path, url)
        bad = paths.judge_batch_answers(shard.root, 4)  # type: ignore[attr-defined]
        bad.parent.mkdir(parents=True)
        bad.write_text("{not json")
        with pytest.raises(ValueError, match=r"step\(s\) \[4\].*delete .*step-4 and rerun"):
            harvest_run(shard.run, shard.task.eval_hash)  # type: ignore[attr-defined]


def test_pipeline_workers_judge_checkpoints_at_once() -> None:
    """With workers=N the pipeline has N checkpoints in its handler at the same time (a batch
    judge's batches wait together); with one worker they go one at a time."""
    import threading

    from emt.eval.task import Generated, JudgePipeline

    def run(workers: int) -> int:
        inside, most, lock = [0], [0], threading.Lock()
        barrier = threading.Barrier(3, timeout=2)

        def handle(item: Generated) -> None:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                barrier.wait()  # three checkpoints must be in here at once to pass
            except threading.BrokenBarrierError:
                pass
            with lock:
                inside[0] -= 1

        p = JudgePipeline(handle, threaded=True, depth=4, workers=workers)
        for s in range(3):
            p.submit(Generated(s, [], 0.0))
        p.close()
        return most[0]

    assert run(3) == 3
    assert run(1) == 1


def test_unknown_batch_or_no_batch_api_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    with JudgeServer() as url:
        judge = batch_judge(url)
        (state / f"{judge.name}.json").write_text(json.dumps({"batches": [
            {"input": "gone.jsonl", "model": judge.model, "n": 1, "round": 0, "file_id": "file-x",
             "batch_id": "batch_not_here"}]}))
        with batch_state(state), pytest.raises(JudgeUnavailable) as e:
            judge.score(PROMPTS[:2])
    msg = str(e.value)
    assert "\n" not in msg and "http 404" in msg and "no Batch API" in msg and "batch: false" in msg
    assert f"a ledger in {state} recorded under another server or account" in msg and "delete that folder" in msg


def test_usage_line_prices_at_the_config_prices(tmp_path: Path) -> None:
    """make_judges hands judge.prices to every judge: the post-run usage line (and the task's
    usage record) cost the tokens at the config's prices, the Batch judge at half of them."""
    from emt.eval.task import make_judges

    with JudgeServer() as url:
        shard = shard_for(tmp_path, url, "judge.prices={gpt-4.1-mini: [10.0, 40.0]}")
        [judge] = shard.session.judges  # type: ignore[attr-defined]
        assert judge.prices == {"gpt-4.1-mini": (10.0, 40.0)}
        [sync] = make_judges(shard.cfg)  # type: ignore[attr-defined]
        judge.score(PROMPTS[:4])  # through a batch
        sync.score(PROMPTS[4:8])
        for j, factor in ((judge, 0.5), (sync, 1.0)):
            u = j.usage()
            assert u["prompt_tokens"] > 0
            expected = factor * (u["prompt_tokens"] * 10.0 + u["completion_tokens"] * 40.0) / 1e6
            assert u["est_cost_usd"] == pytest.approx(expected)
            assert f"est. ${expected:,.4f}" in j.format_usage()
        # The batch judge's synchronous calls (sync mode: the persona vectors') at the full price.
        before = judge.usage()
        with batch_mode("sync"):
            judge.score(PROMPTS[8:12])
        after = judge.usage()
        added = (after["prompt_tokens"] - before["prompt_tokens"]) * 10.0 + \
            (after["completion_tokens"] - before["completion_tokens"]) * 40.0
        assert added > 0 and after["est_cost_usd"] - before["est_cost_usd"] == pytest.approx(added / 1e6)
