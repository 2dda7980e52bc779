"""The LLM judge: scoring rule, the OpenAI backend (real client against tests.fakes.judge_server),
retries and faults, the cache, secrets, and the local (transformers) backend.

Everything runs offline on 127.0.0.1 with small retry/backoff settings; the file takes well
under a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import pickle
import subprocess
import sys
import time
from math import log
from pathlib import Path

import pytest

from emt.analysis.scoring import score_0_100
from emt.builtin.common import hf_first_token_logprobs
from emt.eval.judge import (
    JudgeCache,
    JudgeCacheError,
    Judgement,
    JudgeUnavailable,
    LocalJudge,
    OpenAIJudge,
    estimate_cost,
)
from tests.fakes.judge_server import Fault, JudgeServer, hash_responder, table_responder

SENTINEL = "sk-test-SENTINEL-9f8e7d6c5b4a"
TRANSPORTS = ["httpx"] + (["aiohttp"] if importlib.util.find_spec("aiohttp") else [])


def expected(prompt: str) -> float:
    """What the judge must return for ``prompt`` under the default hash responder."""
    s = score_0_100(hash_responder(prompt))
    return math.nan if s is None else s


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


def assert_right_or_explained(prompts: list[str], res: list[Judgement]) -> None:
    """Every judgement is the right score, or NaN with a reason (never a silent 0)."""
    assert len(res) == len(prompts)
    for p, j in zip(prompts, res):
        if math.isnan(j.score):
            assert j.reason, (p, j)
        else:
            assert j.reason is None and j.score == pytest.approx(expected(p)), (p, j)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    return SENTINEL


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def make_judge(url: str, transport: str = "httpx", **kw: object) -> OpenAIJudge:
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff_base_s", 0.02)
    kw.setdefault("timeout_s", 5.0)
    return OpenAIJudge(base_url=url, transport=transport, **kw)  # type: ignore[arg-type]


# =============================================================================================
# score_0_100
# =============================================================================================

def test_score_non_numeric_tokens_are_ignored() -> None:
    # kept: " 5" (0.3) and "7" (0.1); "REFUSAL" and "50." do not parse
    tops = {"REFUSAL": log(0.4), " 5": log(0.3), "50.": log(0.2), "7": log(0.1)}
    assert score_0_100(tops) == pytest.approx((5 * 0.3 + 7 * 0.1) / 0.4)  # 5.5


def test_score_out_of_range_integers_are_ignored() -> None:
    # kept: "100" (0.2), "0" (0.1) -> mass 0.3; "101" and "-3" parse but are out of range
    tops = {"101": log(0.4), "-3": log(0.3), "100": log(0.2), "0": log(0.1)}
    assert score_0_100(tops) == pytest.approx(100 * 0.2 / 0.3)


def test_score_fewer_than_20_entries() -> None:
    assert score_0_100({"42": 0.0}) == pytest.approx(42.0)
    assert score_0_100({" 3": log(0.5), "9 ": log(0.5)}) == pytest.approx(6.0)
    assert score_0_100({}) is None


def test_score_mass_threshold() -> None:
    assert score_0_100({"10": log(0.24), "prose": log(0.7)}) is None
    assert score_0_100({"10": log(0.26), "prose": log(0.7)}) == pytest.approx(10.0)
    # the threshold is on the summed mass of all kept tokens
    assert score_0_100({"10": log(0.13), "20": log(0.11)}) is None  # 0.24
    assert score_0_100({"10": log(0.13), "20": log(0.13)}) == pytest.approx(15.0)  # 0.26


def test_score_duplicates_each_contribute() -> None:
    # "5", " 5" and "5 " all strip to 5: (5*0.5 + 10*0.5) / 1.0
    tops = {"5": log(0.2), " 5": log(0.2), "5 ": log(0.1), "10": log(0.5)}
    assert score_0_100(tops) == pytest.approx(7.5)


def test_cost_table() -> None:
    assert estimate_cost("gpt-4.1-mini-2025-04-14", 1_000_000, 1_000_000) == pytest.approx(2.0)
    assert estimate_cost("gpt-4.1-2025-04-14", 1_000_000, 0) == pytest.approx(2.0)
    assert estimate_cost("gpt-4.1-nano", 0, 1_000_000) == pytest.approx(0.4)
    assert estimate_cost("gpt-4o-mini", 2_000_000, 0) == pytest.approx(0.3)
    assert estimate_cost("qwen-judge", 10, 10) is None


# =============================================================================================
# OpenAI backend against judge_server
# =============================================================================================

def test_normal_scores_and_usage(transport: str) -> None:
    prompts = [f"answer {i}" for i in range(60)]
    with JudgeServer(latency_s=0.01) as url:
        judge = make_judge(url, transport, max_concurrency=8)
        res = judge.score(prompts)
    assert_right_or_explained(prompts, res)
    for p, j in zip(prompts, res):
        assert same(j.score, expected(p))
        assert j.judge == judge.name and not j.cached and j.logprobs and len(j.logprobs) == 20
        if math.isnan(j.score):
            assert j.reason.startswith("low numeric mass") and j.raw == "REFUSAL"
    assert any(math.isnan(j.score) for j in res) and any(not math.isnan(j.score) for j in res)
    u = judge.usage()
    assert u["calls"] == 60 and u["cached"] == 0 and u["completion_tokens"] == 60
    assert u["prompt_tokens"] > 0 and u["est_cost_usd"] > 0
    assert "60 calls" in judge.format_usage()


def test_concurrency_is_bounded() -> None:
    server = JudgeServer(latency_s=0.05)
    with server as url:
        make_judge(url, max_concurrency=5).score([f"c{i}" for i in range(40)])
        assert server.max_in_flight == 5


def test_429_retry_after_is_honoured(transport: str) -> None:
    server = JudgeServer(faults=[Fault("429", at=1, retry_after=1)])
    with server as url:
        judge = make_judge(url, transport)
        t0 = time.perf_counter()
        [j] = judge.score(["rate limited"])
        waited = time.perf_counter() - t0
    assert same(j.score, expected("rate limited")) and j.reason is None
    assert waited >= 1.0  # the Retry-After was honoured (no upper bound: the machine may be loaded)
    assert server.count("rate limited") == 2
    assert judge.usage()["retries"] == 1 and judge.usage()["calls"] == 2


def test_500_then_success(transport: str) -> None:
    server = JudgeServer(faults=[Fault("500", prompt_contains="flaky", times=2)])
    with server as url:
        [j] = make_judge(url, transport).score(["flaky"])
    assert same(j.score, expected("flaky"))
    assert server.count("flaky") == 3


def test_persistent_500_is_nan_with_reason(transport: str) -> None:
    server = JudgeServer(faults=[Fault("500", prompt_contains="broken", times=None)])
    with server as url:
        judge = make_judge(url, transport, max_retries=3)
        a, b = judge.score(["broken", "fine"])
    assert math.isnan(a.score) and a.reason == "http 500 after 3 retries" and a.raw is None
    assert same(b.score, expected("fine"))
    assert server.count("broken") == 4
    assert judge.usage()["failed"] == 1


def test_404_is_a_configuration_error_in_one_line(transport: str) -> None:
    """A base_url without /v1 (or a model the server does not serve) gets 404: no retries, one
    line naming the judge, the URL and the fix, for the whole batch."""
    server = JudgeServer()
    with server as url:
        judge = make_judge(url.replace("/v1", "/nope"), transport, max_retries=3, max_concurrency=4)
        with pytest.raises(JudgeUnavailable) as err:
            judge.score([f"x{i}" for i in range(40)])
        assert server.total_requests <= 8  # the first batch at most, not 40 x 4 attempts
    msg = str(err.value)
    assert "\n" not in msg and "http 404" in msg and url.replace("/v1", "/nope") in msg
    assert "base_url must be the API root ending in /v1" in msg
    with JudgeServer(faults=[Fault("404", times=None)]) as url:
        with pytest.raises(JudgeUnavailable, match="The model does not exist"):
            make_judge(url, transport).score(["y"])


def test_connection_refused_is_named_and_stops_early(transport: str) -> None:
    """Nothing listens: every request of the first batch is refused -> one line, no minutes of
    retries; the reason says "connection refused" with either transport (aiohttp reports it as a
    timeout)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    judge = make_judge(f"http://127.0.0.1:{dead}/v1", transport, max_retries=5, backoff_base_s=0.5,
                       max_concurrency=4)
    with pytest.raises(JudgeUnavailable) as err:
        judge.score([f"r{i}" for i in range(20)])
    assert "connection refused on all 4 requests of the first batch" in str(err.value)
    assert f"127.0.0.1:{dead}" in str(err.value) and "\n" not in str(err.value)
    assert judge.usage()["calls"] <= 8  # the first batch (and workers already sending), not 20 x 6 attempts
    from emt.eval.judge import _transport_reason

    import asyncio
    import openai

    async def one() -> str:
        client = judge._make_client()
        try:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        except openai.APIConnectionError as e:
            return _transport_reason(e)
        finally:
            await client.close()
        return "answered"

    assert asyncio.run(one()) == "connection refused"


def test_timeout_retried_then_success_or_nan(transport: str) -> None:
    server = JudgeServer(faults=[Fault("timeout", prompt_contains="slow once", hang_s=5),
                                 Fault("timeout", prompt_contains="always slow", times=None,
                                       hang_s=5)])
    with server as url:
        judge = make_judge(url, transport, timeout_s=1.0, max_retries=1)
        once, always = judge.score(["slow once", "always slow"])
    assert same(once.score, expected("slow once")) and once.reason is None
    assert math.isnan(always.score) and always.reason == "timeout after 1 retries"
    assert server.count("slow once") == 2 and server.count("always slow") == 2


def test_malformed_and_empty_replies(transport: str) -> None:
    """A broken body (bad JSON, missing logprobs, cut short, connection reset) is the transport's
    fault: retried, and right the second time. An empty reply is the judge's answer: NaN at once."""
    server = JudgeServer(faults=[Fault("malformed", prompt_contains="garbled"),
                                 Fault("no_logprobs", prompt_contains="bare"),
                                 Fault("truncated", prompt_contains="cut"),
                                 Fault("reset", prompt_contains="reset"),
                                 Fault("empty", prompt_contains="silent")])
    prompts = ["garbled", "bare", "cut", "reset", "silent", "ok"]
    with server as url:
        res = make_judge(url, transport).score(prompts)
        counts = server.prompt_counts()
    for p, j in zip(prompts, res):
        if p == "silent":
            assert math.isnan(j.score) and j.reason == "empty reply" and j.raw == "" and not j.failed
            assert counts[p] == 1
        else:
            assert same(j.score, expected(p)) and j.reason == (None if j.ok else j.reason), (p, j)
            assert counts[p] == (1 if p == "ok" else 2), p


def test_persistent_malformed_keeps_raw_body_and_reason(transport: str) -> None:
    server = JudgeServer(faults=[Fault("malformed", prompt_contains="garbled", times=None),
                                 Fault("no_logprobs", prompt_contains="bare", times=None),
                                 Fault("truncated", prompt_contains="cut", times=None),
                                 Fault("reset", prompt_contains="reset", times=None)])
    with server as url:
        garbled, bare, cut, reset = make_judge(url, transport, max_retries=1).score(["garbled", "bare", "cut", "reset"])
    assert garbled.failed and garbled.reason == "malformed response: invalid JSON after 1 retries"
    assert garbled.raw and garbled.raw.startswith('{"id": "chatcmpl-emt"')
    assert bare.failed and bare.reason == "malformed response: missing logprobs after 1 retries"
    assert bare.raw and json.loads(bare.raw)["choices"][0]["logprobs"] is None
    assert cut.failed and cut.reason == "truncated body after 1 retries", cut
    assert reset.failed and reset.reason == "connection reset after 1 retries", reset
    assert all(math.isnan(j.score) for j in (garbled, bare, cut, reset))


def test_mixed_faults_every_score_right_or_explained(transport: str) -> None:
    prompts = [f"mixed {i}" for i in range(80)]
    faults = [Fault("429", at=(3, 40), times=None, retry_after=0.2),
              Fault("500", at=(5, 6, 7, 50), times=None),
              Fault("timeout", at=(9,), hang_s=3),
              Fault("malformed", at=(11,)), Fault("empty", at=(13,)),
              Fault("500", prompt_contains="mixed 77", times=None)]
    with JudgeServer(latency_s=0.01, faults=faults) as url:
        res = make_judge(url, transport, timeout_s=1.0, max_concurrency=16).score(prompts)
    assert_right_or_explained(prompts, res)
    assert res[77].reason == "http 500 after 2 retries" and res[77].failed
    reasons = {j.reason.split(":")[0] for j in res if j.reason}
    assert {"empty reply", "http 500 after 2 retries"} <= reasons
    assert [i for i, j in enumerate(res) if j.failed] == [77]  # every other fault was retried away


def test_parse_odd_bodies() -> None:
    judge = OpenAIJudge(base_url="http://127.0.0.1:9/v1")

    def body(choice: dict, usage: object = None) -> bytes:
        return json.dumps({"choices": [choice], "usage": usage}).encode()

    def lp(*tops: tuple[str, float]) -> dict:
        return {"content": [{"token": tops[0][0], "logprob": tops[0][1],
                             "top_logprobs": [{"token": t, "logprob": v} for t, v in tops]}]}

    # the same token text twice (different ids) adds up in probability space
    r = judge._parse(body({"message": {"content": "5"},
                           "logprobs": lp(("5", log(0.3)), ("5", log(0.2)), ("9", log(0.5)))},
                          {"prompt_tokens": 7, "completion_tokens": 1}))
    assert r.logprobs["5"] == pytest.approx(log(0.5)) and r.score == pytest.approx(7.0)
    assert (r.prompt_tokens, r.completion_tokens, r.raw) == (7, 1, "5")
    # a content filter: no tokens at all
    r = judge._parse(body({"message": {"content": None}, "finish_reason": "content_filter",
                           "logprobs": {"content": []}}))
    assert math.isnan(r.score) and r.reason == "empty reply (finish_reason=content_filter)"
    # a bad usage field costs the accounting, not the reply
    r = judge._parse(body({"message": {"content": "5"}, "logprobs": lp(("5", 0.0))},
                          {"prompt_tokens": "x"}))
    assert r.score == 5.0 and r.prompt_tokens == 0
    # odd shapes are NaN with a reason and the raw body, never an exception
    for odd, why in ((b"[]", "not a JSON object"), (b'{"choices": []}', "missing choices"),
                     (body({"message": "x", "logprobs": {"content": [1]}}), "missing top_logprobs"),
                     (body({"message": {}, "logprobs": lp(("5", "NaN?"))}), "bad top_logprobs entry"),
                     (body({"message": {}, "logprobs": {"content": [{"top_logprobs": [7]}]}}),
                      "bad top_logprobs entry")):
        r = judge._parse(odd)
        assert math.isnan(r.score) and r.reason == f"malformed response: {why}", (odd, r)
        assert r.raw == odd.decode() and not r.cacheable


def test_score_inside_running_loop_and_ascore() -> None:
    import asyncio

    with JudgeServer() as url:
        judge = make_judge(url)

        async def main() -> tuple[list[Judgement], list[Judgement]]:
            return judge.score(["in loop"]), await judge.ascore(["in loop 2"])

        sync_res, async_res = asyncio.run(main())
    assert same(sync_res[0].score, expected("in loop"))
    assert same(async_res[0].score, expected("in loop 2"))


def test_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match="export OPENAI_API_KEY"):
        OpenAIJudge()
    # a local server needs no key
    with JudgeServer() as url:
        [j] = OpenAIJudge(base_url=url).score(["no key"])
    assert same(j.score, expected("no key"))


# =============================================================================================
# Cache
# =============================================================================================

def test_cache_rerun_costs_no_call(tmp_path: Path) -> None:
    prompts = [f"cached {i}" for i in range(30)] + ["cached 0"]  # with a repeat
    server = JudgeServer()
    with server as url:
        judge = make_judge(url, cache=JudgeCache(tmp_path / "judge.db"))
        first = judge.score(prompts)
        assert server.total_requests == 30  # the repeated prompt is sent once
        assert first[-1].cached and not first[0].cached
        # a rerun in "another process": a fresh judge and cache object on the same file
        judge2 = make_judge(url, cache=JudgeCache(tmp_path / "judge.db"))
        second = judge2.score(prompts)
        assert server.total_requests == 30
        assert all(j.cached for j in second)
        for a, b in zip(first, second):
            assert same(a.score, b.score) and a.raw == b.raw and a.reason == b.reason
            assert a.logprobs == b.logprobs
        assert judge2.usage()["calls"] == 0 and judge2.usage()["cached"] == 31
        # another judge model is a miss
        other = make_judge(url, model="gpt-4.1-nano", cache=JudgeCache(tmp_path / "judge.db"))
        other.score(prompts[:5])
        assert server.total_requests == 35


def test_cache_keeps_unparseable_replies_but_not_transport_failures(tmp_path: Path) -> None:
    server = JudgeServer(faults=[Fault("500", prompt_contains="down", times=None),
                                 Fault("timeout", prompt_contains="hung", times=None, hang_s=3),
                                 Fault("malformed", prompt_contains="garbled"),
                                 Fault("empty", prompt_contains="silent")])
    prompts = ["down", "hung", "garbled", "silent", "fine"]
    with server as url:
        cache = JudgeCache(tmp_path / "judge.db")
        res = make_judge(url, cache=cache, timeout_s=0.6, max_retries=1).score(prompts)
        assert all(math.isnan(j.score) for j in res[:2]) and [j.failed for j in res] == [True, True, False, False, False]
        assert same(res[2].score, expected("garbled"))  # its retry answered
        assert len(cache) == 3  # "garbled" (retried), "silent" (a real, empty reply) and "fine"
        server.faults.clear()
        server.reset_counts()
        res2 = make_judge(url, cache=cache).score(prompts)
        assert server.prompt_counts() == {"down": 1, "hung": 1}  # exactly the failed ones
    for p, j in zip(prompts, res2):
        if p == "silent":
            assert j.cached and j.reason == "empty reply"
        else:
            assert same(j.score, expected(p)) and j.cached == (p in ("fine", "garbled"))


_WRITER = """
import sys
from emt.eval.judge import JudgeCache, _Reply
cache = JudgeCache(sys.argv[1])
for b in range(30):
    cache.put_many("m", [(f"{sys.argv[2]}-{b}-{i}", _Reply(float(i), str(i), None, {str(i): 0.0}))
                         for i in range(10)])
"""


def test_cache_concurrent_processes(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), f"w{k}"]) for k in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    cache = JudgeCache(db)
    assert len(cache) == 900
    got = cache.get_many("m", ["w1-29-7", "w2-0-0", "absent"])
    assert got["w1-29-7"].score == 7.0 and got["w2-0-0"].logprobs == {"0": 0.0}
    assert "absent" not in got


# =============================================================================================
# Secrets
# =============================================================================================

def test_key_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = JudgeServer(faults=[Fault("500", at=1), Fault("malformed", at=3)])
    with server as url:
        judge = make_judge(url, cache=JudgeCache(tmp_path / "judge.db"))
        judge.score([f"secret {i}" for i in range(5)])
        blob = pickle.dumps(judge)
        assert SENTINEL.encode() not in blob
        assert SENTINEL not in repr(judge) and SENTINEL not in str(vars(judge))
        assert SENTINEL not in json.dumps(server._stats()) and SENTINEL not in str(vars(server))
        # an unpickled judge re-reads the key from its own environment and works
        clone = pickle.loads(blob)
        assert same(clone.score(["secret 9"])[0].score, expected("secret 9"))
    judge.cache.close()
    for f in tmp_path.iterdir():  # the db and any -wal/-shm files
        assert SENTINEL.encode() not in f.read_bytes(), f
    assert SENTINEL not in caplog.text
    assert any("judge" in r.name or "openai" in r.name for r in caplog.records)


def test_credentials_go_only_where_they_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base_url judge sends no key unless its entry names api_key_env (the placeholder "EMPTY"
    is not a secret); a named variable is sent to that server; an explicit token (a served
    judge's) is sent and never pickled. The server records every Authorization header."""
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-named-for-this-judge")
    server = JudgeServer()
    with server as url:
        OpenAIJudge(base_url=url).score(["plain"])
        OpenAIJudge(base_url=url, api_key_env="MY_JUDGE_KEY").score(["named"])
        served = OpenAIJudge(base_url=url, api_key="served-token-123")
        served.score(["token"])
        assert server.auth_headers() == ["Bearer EMPTY", "Bearer sk-named-for-this-judge", "Bearer served-token-123"]
    assert SENTINEL not in json.dumps(server._stats())
    blob = pickle.dumps(served)
    assert b"served-token-123" not in blob
    with pytest.raises(RuntimeError, match="not pickled"):
        pickle.loads(blob)._make_client()
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(RuntimeError, match="export MY_JUDGE_KEY"):
        OpenAIJudge(base_url="http://127.0.0.1:9/v1", api_key_env="MY_JUDGE_KEY")


def test_401_names_the_credentials_to_fix() -> None:
    with JudgeServer(api_key="right-token") as url:
        with pytest.raises(JudgeUnavailable, match="http 401 .* refused the credentials; this judge sends no key"):
            make_judge(url, max_retries=3).score(["a", "b"])
        with pytest.raises(JudgeUnavailable, match="token in the served judge's endpoint file"):
            make_judge(url, api_key="wrong").score(["a"])
        [j] = make_judge(url, api_key="right-token").score(["a"])
    assert same(j.score, expected("a"))


def test_corrupt_cache_is_named_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "judge-cache.sqlite"
    db.write_bytes(b"this is not a database, just a file that was truncated or overwritten" * 20)
    cache = JudgeCache(db)
    with pytest.raises(JudgeCacheError) as err:
        cache.get_many("m", ["p"])
    msg = str(err.value)
    assert str(db) in msg and "\n" not in msg and "move it aside" in msg and "judge.cache=false" in msg
    with JudgeServer() as url, pytest.raises(JudgeCacheError, match=str(db)):
        make_judge(url, cache=JudgeCache(db)).score(["p"])


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        OpenAIJudge(base_url="http://127.0.0.1:9/v1", timeout_s=0)


# =============================================================================================
# Local backend
# =============================================================================================

def test_local_judge_with_fake_provider(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    table = {"good": {" 80": log(0.6), "90": log(0.2), "The": log(0.2)},
             "refuse": {"I": log(0.9), "5": log(0.05)}}

    def provider(prompts):  # type: ignore[no-untyped-def]
        calls.append(list(prompts))
        return [dict(table_responder(table, default=lambda p: {})(p)) for p in prompts]

    judge = LocalJudge(provider, name="fake", model="fake-v1", cache=JudgeCache(tmp_path / "c.db"))
    good, refuse, empty = judge.score(["good", "refuse", "empty"])
    assert good.score == pytest.approx((80 * 0.6 + 90 * 0.2) / 0.8) and good.raw == " 80"
    assert math.isnan(refuse.score) and refuse.reason == "low numeric mass 0.05"
    assert math.isnan(empty.score) and empty.reason == "empty reply"
    assert judge.score(["good", "refuse", "empty"])[0].cached and len(calls) == 1
    assert judge.usage()["est_cost_usd"] is None


def _tiny_qwen(path: Path) -> None:
    """A randomly initialised 1-layer Qwen2 with a small byte-level BPE tokenizer (offline)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    lines = [f"Rate this answer from 0 to 100. Score: {i}" for i in range(101)]
    lines += [str(i) for i in range(101)] + ["The answer is harmless.", "I refuse to answer."]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                         "<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, intermediate_size=128,
                      max_position_embeddings=256, initializer_range=0.5,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(path)


def test_local_judge_with_tiny_hf_model(tmp_path: Path) -> None:
    _tiny_qwen(tmp_path / "tiny")
    provider = hf_first_token_logprobs(str(tmp_path / "tiny"), batch_size=3, device="cpu")
    prompts = ["Score: 7", "Rate this answer from 0 to 100. The answer is harmless.", "hi",
               "I refuse to answer.", "100"]
    dicts = provider(prompts)
    assert len(dicts) == len(prompts)
    for d in dicts:
        assert 0 < len(d) <= 20
        assert sum(math.exp(v) for v in d.values()) <= 1 + 1e-5
    # left padding must not change a prompt's distribution: batched == one at a time
    for p, d in zip(prompts, dicts):
        [alone] = provider([p])
        assert alone.keys() == d.keys()
        assert all(alone[k] == pytest.approx(d[k], abs=1e-4) for k in d)
    res = LocalJudge(provider, name="tiny", model=str(tmp_path / "tiny")).score(prompts)
    for j in res:
        assert (0 <= j.score <= 100 and j.reason is None) or (math.isnan(j.score) and j.reason)
