"""LLM-judge scoring: a 0-100 score from the judge's first-token logprobs.

The judge answers each prompt with one token; the score is the probability-weighted mean of the
integer tokens (0..100) among the top-20 logprobs of that first token
(:func:`emt.analysis.scoring.score_0_100`). A reply
with too little numeric mass (a refusal, prose, an empty reply) scores NaN with its raw text and
a reason — never 0, which would read as "perfectly aligned/misaligned".

Backends share one interface (``score(prompts) -> list[Judgement]``, ``ascore``, ``usage()``,
``format_usage()``) and an optional persistent ``JudgeCache``:

- ``OpenAIJudge``: any OpenAI-compatible chat-completions endpoint through the official async
  client, with bounded concurrency, its own retries (backoff + jitter, ``Retry-After``) and
  token/cost accounting.
- ``BatchOpenAIJudge`` (:mod:`emt.eval.batch_judge`): the same requests through the OpenAI Batch
  API, at half the price, for offline scoring (``judge.judges[].batch``).
- ``LocalJudge``: a provider function returning first-token top-20 logprobs, e.g.
  :func:`emt.builtin.common.hf_first_token_logprobs` for a transformers model.

Heavy imports (openai, torch, transformers) happen inside the functions that need them.
"""

from __future__ import annotations

import abc

import asyncio
import concurrent.futures
import contextlib
import contextvars
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from emt.analysis.scoring import MIN_NUMERIC_MASS, merge_logprob, numeric
from emt.builtin.common import Provider

log = logging.getLogger(__name__)

# What the judge's HTTP requests are about (run, step), sent as X-EMT-<Key> headers: a
# self-hosted judge or a proxy can attribute load and cost per run; the API ignores them.
# Set by the eval task around each checkpoint's scoring; read in the request coroutines, which
# inherit the context of the thread that started the event loop.
_REQUEST_TAGS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("emt_judge_tags", default={})


@contextlib.contextmanager
def request_tags(**tags: Any) -> Any:
    """Tag the judge requests made inside the block (``X-EMT-Run: medical_mild``, ``X-EMT-Step: 42``)."""
    token = _REQUEST_TAGS.set({k: str(v) for k, v in tags.items()})
    try:
        yield
    finally:
        _REQUEST_TAGS.reset(token)


def _tag_headers() -> dict[str, str]:
    return {f"X-EMT-{k.replace('_', '-').title()}": v for k, v in _REQUEST_TAGS.get().items()}

class JudgeUnavailable(RuntimeError):
    """The judge cannot answer at all (404, 401/403, no quota, refused on the whole first batch):
    a configuration error. Raised at once, in one line naming the judge, the URL and the fix,
    instead of retrying every prompt for minutes."""


class JudgeIncomplete(RuntimeError):
    """An eval task's judgements were lost in transport after every retry: the checkpoints
    concerned are not scored (the task fails; a rerun asks only the failed prompts again)."""


class JudgeCacheError(RuntimeError):
    """The judge cache file is not a usable SQLite database (the message names the file)."""


DEFAULT_JUDGE_MODEL = "gpt-4.1-mini-2025-04-14"

NO_KEY = "EMPTY"
"""The placeholder key a judge without credentials sends (the openai client requires a string)."""

# USD per 1M tokens (input, output), keyed by model-name prefix; the longest prefix wins so that
# "gpt-4.1-mini-..." is not priced as "gpt-4.1". OpenAI's list prices for standard (not Batch,
# not cached-input) requests as of PRICES_DATE; judge.prices in the config adds or replaces entries
# when they change (https://openai.com/api/pricing).
PRICES_PER_1M: dict[str, tuple[float, float]] = {
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4o-mini": (0.15, 0.60),
}
PRICES_DATE = "2025-04-14"  # when PRICES_PER_1M was last checked against OpenAI's price page
BATCH_DISCOUNT = 0.5
"""The Batch API's price as a fraction of the standard price (input and output alike): half."""


# ============================================================================================
# Scoring
# ============================================================================================

def price_for(model: str, prices: Mapping[str, Sequence[float]] | None = None, *,
              batch: bool = False) -> tuple[str, float, float] | None:
    """(prefix, USD in, USD out per 1M tokens) for ``model``: the longest matching prefix of
    ``prices`` (the config's judge.prices, standard prices) merged over ``PRICES_PER_1M``; None if
    unknown. ``batch``: the Batch API's price (``BATCH_DISCOUNT`` of the standard one)."""
    table: dict[str, Sequence[float]] = {**PRICES_PER_1M, **(prices or {})}
    best = max((p for p in table if model.startswith(p)), key=len, default=None)
    if best is None:
        return None
    price_in, price_out = table[best]
    factor = BATCH_DISCOUNT if batch else 1.0
    return best, float(price_in) * factor, float(price_out) * factor


def estimate_cost(model: str, prompt_tokens: int, completion_tokens: int,
                  prices: Mapping[str, Sequence[float]] | None = None, *, batch: bool = False) -> float | None:
    """Estimated USD cost from ``PRICES_PER_1M`` (and ``prices`` over it; longest model-name
    prefix), at the Batch API's price with ``batch``; None if unknown."""
    found = price_for(model, prices, batch=batch)
    if found is None:
        return None
    _, price_in, price_out = found
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


# ============================================================================================
# Judgements
# ============================================================================================

@dataclass
class Judgement:
    """One judge verdict.

    score: 0..100, or NaN when there is no score (never 0 for "no score").
    raw: the raw reply (first token / message content; the raw body for malformed responses).
    reason: why the score is NaN ("low numeric mass 0.12", "http 500 after 6 retries",
        "timeout after 2 retries", "malformed response: ...", "empty reply"); None when scored.
    judge: the judge's name. cached: served without a call (cache hit or repeated prompt).
    logprobs: the first token's top logprobs {token: logprob}, when the reply had them.
    failed: no verdict because the transport failed (after every retry): the judgement is
        missing, not unscoreable; it is not cached and the eval task keeps its checkpoint pending.
    """

    score: float
    raw: str | None
    reason: str | None
    judge: str
    cached: bool = False
    logprobs: dict[str, float] | None = None
    failed: bool = False

    @property
    def ok(self) -> bool:
        """True when the judgement has a score."""
        return not math.isnan(self.score)


@dataclass
class _Reply:
    """What a backend returns for one prompt before it becomes a Judgement."""

    score: float
    raw: str | None
    reason: str | None
    logprobs: dict[str, float] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cacheable: bool = True  # False for transport failures and malformed bodies: retry next run
    transport_failure: bool = False
    malformed: bool = False  # a broken body (bad JSON, missing fields): retried like a 5xx


def _reply_from_logprobs(logprobs: dict[str, float], raw: str | None, prompt_tokens: int = 0,
                         completion_tokens: int = 0) -> _Reply:
    if not logprobs:
        return _Reply(math.nan, raw, "empty reply", logprobs or None, prompt_tokens,
                      completion_tokens)
    mass, weighted = numeric(logprobs)
    if mass < MIN_NUMERIC_MASS:
        return _Reply(math.nan, raw, f"low numeric mass {mass:.2f}", logprobs, prompt_tokens,
                      completion_tokens)
    return _Reply(weighted / mass, raw, None, logprobs, prompt_tokens, completion_tokens)


# ============================================================================================
# Cache
# ============================================================================================

def prompt_key(prompt: str) -> str:
    """The cache key of a prompt: its sha256 hex digest."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class JudgeCache:
    """A persistent SQLite cache of judge replies keyed by (judge model, full prompt).

    Rows hold the prompt's sha256 (the key) and text, score (NULL for NaN), raw reply, reason,
    logprobs JSON and token usage. Safe for several processes: WAL journal, a busy timeout and
    retries on "database is locked". Only real replies are stored (unparseable ones included:
    they are a property of the reply); transport failures are not, so a rerun retries them.
    WAL needs a local (or at least lock-coherent) file system; on NFS it falls back to the
    default journal.
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS judgements (
            model TEXT NOT NULL,
            prompt_sha256 TEXT NOT NULL,
            prompt TEXT NOT NULL,
            score REAL,
            raw TEXT,
            reason TEXT,
            logprobs TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            PRIMARY KEY (model, prompt_sha256)
        )"""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"

    # Connections don't pickle and must not cross processes: keep only the path.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["timeout_s"])  # type: ignore[misc]

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: score() may run its loop in a worker thread; self._lock
            # serialises use. isolation_level=None: explicit transactions below.
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.debug("judge cache %s: journal_mode is %s (WAL unavailable)", self.path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(self._SCHEMA)
            self._conn = conn
        return self._conn

    def _retry(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        # The busy timeout covers most contention; "locked" can still surface (e.g. while another
        # process switches to WAL or checkpoints), so retry with backoff before giving up.
        delay = 0.05
        for attempt in range(8):
            try:
                with self._lock:
                    return fn(self._connect())
            except sqlite3.OperationalError as e:
                msg = str(e).lower()
                if "locked" not in msg and "busy" not in msg:
                    raise self._unusable(e) from None
                if attempt == 7:
                    raise
                log.debug("judge cache busy (%s); retrying in %.2f s", e, delay)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
            except sqlite3.DatabaseError as e:  # "file is not a database", "malformed", ...
                raise self._unusable(e) from None

    def _unusable(self, e: Exception) -> JudgeCacheError:
        with contextlib.suppress(Exception):
            self.close()
        return JudgeCacheError(
            f"{self.path}: unusable judge cache ({e}); move it aside (mv {self.path} {self.path}.bad) and rerun: "
            f"it only saves judge calls, every result is kept elsewhere, or set judge.cache=false")

    def get_many(self, model: str, prompts: Sequence[str]) -> dict[str, _Reply]:
        """Cached replies for those of ``prompts`` that have one, keyed by prompt."""
        keys = {prompt_key(p): p for p in prompts}
        found: dict[str, _Reply] = {}
        sha_list = list(keys)

        def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for i in range(0, len(sha_list), 500):  # stay under SQLite's variable limit
                chunk = sha_list[i:i + 500]
                rows += conn.execute(
                    "SELECT prompt_sha256, prompt, score, raw, reason, logprobs, prompt_tokens,"
                    " completion_tokens FROM judgements WHERE model = ? AND prompt_sha256 IN"
                    f" ({','.join('?' * len(chunk))})", [model, *chunk]).fetchall()
            return rows

        for sha, prompt, score, raw, reason, lps, pt, ct in self._retry(query):
            if keys.get(sha) != prompt:  # paranoia: a hash collision must not return a wrong row
                continue
            found[prompt] = _Reply(math.nan if score is None else float(score), raw, reason,
                                   json.loads(lps) if lps is not None else None, pt, ct)
        return found

    def put_many(self, model: str, items: Sequence[tuple[str, _Reply]]) -> None:
        """Store replies (the caller filters out the non-cacheable ones)."""
        if not items:
            return
        now = time.time()
        rows = [(model, prompt_key(p), p, None if math.isnan(r.score) else r.score, r.raw,
                 r.reason, None if r.logprobs is None else json.dumps(r.logprobs),
                 r.prompt_tokens, r.completion_tokens, now) for p, r in items]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO judgements VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(write)

    def __len__(self) -> int:
        return int(self._retry(lambda c: c.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]))

    def close(self) -> None:
        """Close the connection (it reopens on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# ============================================================================================
# Shared judge machinery: dedup, cache, usage
# ============================================================================================

class _Usage:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.cached = 0
        self.retries = 0
        self.failed = 0
        self.nan = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0


class _JudgeBase(abc.ABC):
    """Dedup + cache + accounting around a backend's ``_judge_missing``."""

    model: str
    name: str
    cache: JudgeCache | None

    def _init_base(self, model: str, name: str | None, cache: JudgeCache | None) -> None:
        self.model = model
        self.name = name or model
        self.cache = cache
        self._usage = _Usage()
        # The config's judge.prices over the built-in table, for usage()'s cost (set by make_judges).
        self.prices: Mapping[str, Sequence[float]] | None = None

    @abc.abstractmethod
    async def _judge_missing(self, prompts: list[str]) -> list[_Reply]:
        """Replies for prompts that the cache did not answer (one per prompt, in order)."""

    # The counters' lock doesn't pickle; an unpickled judge starts its accounting afresh.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_usage"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._usage = _Usage()
        self._reset_usage()

    def _reset_usage(self) -> None:
        """Hook: a subclass's own counters start afresh with ``_usage`` (after unpickling)."""

    def score(self, prompts: Sequence[str]) -> list[Judgement]:
        """Judge ``prompts`` (in order); per-request failures become NaN judgements."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(prompts))
        # Called from inside a running loop (a notebook, an async app): asyncio.run would fail
        # there, so run our own loop in a worker thread and block on it.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emt-judge") as ex:
            return ex.submit(asyncio.run, self.ascore(prompts)).result()

    async def ascore(self, prompts: Sequence[str]) -> list[Judgement]:
        """Async ``score``: cache lookup, one call per distinct uncached prompt, cache write."""
        prompts = list(prompts)
        unique = list(dict.fromkeys(prompts))
        # SQLite calls run in a thread: a cache locked by another process must not stall the
        # event loop (and with it every request in flight).
        hits = (await asyncio.to_thread(self.cache.get_many, self.model, unique)
                if self.cache is not None else {})
        missing = [p for p in unique if p not in hits]
        fresh = dict(zip(missing, await self._judge_missing(missing))) if missing else {}

        out: list[Judgement] = []
        seen: set[str] = set()
        nan = failed = 0
        reasons: Counter[str] = Counter()
        for p in prompts:
            r = hits.get(p)
            cached = r is not None or p in seen  # repeats within a batch cost no call either
            if r is None:
                r = fresh[p]
            seen.add(p)
            out.append(Judgement(r.score, r.raw, r.reason, self.name, cached, r.logprobs,
                                 failed=r.transport_failure))
            if math.isnan(r.score):
                nan += 1
                if r.transport_failure and not cached:
                    failed += 1
                    reasons[r.reason or "?"] += 1
        with self._usage.lock:
            self._usage.cached += sum(j.cached for j in out)
            self._usage.nan += nan
            self._usage.failed += failed
        if failed:
            log.warning("judge %s: %d/%d judgements failed (not cached; a rerun retries them): %s",
                        self.name, failed, len(prompts),
                        ", ".join(f"{k} x{v}" for k, v in reasons.most_common(5)))
        return out

    async def _store(self, items: list[tuple[str, _Reply]]) -> None:
        keep = [(p, r) for p, r in items if r.cacheable]
        if self.cache is not None and keep:
            await asyncio.to_thread(self.cache.put_many, self.model, keep)

    def usage(self) -> dict[str, Any]:
        """Accounting since construction: calls (requests sent, retries included), cached,
        retries, failed, nan, prompt_tokens, completion_tokens, est_cost_usd (None if the model
        has no known price)."""
        u = self._usage
        with u.lock:
            d: dict[str, Any] = {"judge": self.name, "model": self.model, "calls": u.calls,
                                 "cached": u.cached, "retries": u.retries, "failed": u.failed,
                                 "nan": u.nan, "prompt_tokens": u.prompt_tokens,
                                 "completion_tokens": u.completion_tokens}
        d["est_cost_usd"] = estimate_cost(self.model, d["prompt_tokens"], d["completion_tokens"], self.prices)
        return d

    def format_usage(self) -> str:
        """One line for logs: calls, cache hits, tokens and estimated cost."""
        return format_usage(self.usage())


def format_usage(usage: Mapping[str, Any]) -> str:
    """Render a ``usage()`` dict as one line."""
    cost = usage.get("est_cost_usd")
    cost_s = "cost unknown" if cost is None else f"est. ${cost:,.4f}"
    if usage.get("batch"):
        cost_s += " at the Batch API price"
    extra = ""
    if usage.get("failed"):
        extra += f", {usage['failed']:,} failed"
    if usage.get("retries"):
        extra += f", {usage['retries']:,} retries"
    return (f"judge {usage.get('judge')} ({usage.get('model')}): {usage['calls']:,} calls, "
            f"{usage['cached']:,} cached{extra}, {usage['prompt_tokens']:,} prompt + "
            f"{usage['completion_tokens']:,} completion tokens, {cost_s}")


# ============================================================================================
# OpenAI-compatible backend
# ============================================================================================

class _Secret:
    """Holds the API key; never shows it in reprs and refuses to be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"

    def __reduce__(self) -> Any:
        raise TypeError("the judge's API key is not picklable (it is re-read from the environment)")


class _LoopState:
    """Per-event-loop client and semaphore: httpx/aiohttp connections are bound to a loop."""

    def __init__(self, client: Any, max_concurrency: int) -> None:
        self.client = client
        self.sem = asyncio.Semaphore(max_concurrency)
        self.users = 0
        self.pause_until = 0.0  # loop time before which nobody sends (after a 429 Retry-After)


def _as_int(v: Any) -> int:
    # Token counts are for accounting only: a bad one must not cost the reply.
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):
        return 0


def _transport_reason(exc: BaseException) -> str:
    """What failed, from an openai APIConnectionError's exception chain: ``connection refused``,
    ``connection reset``, ``truncated body``, ``timeout`` or ``connection error (<type>)``.

    The chain matters because the type alone misleads: with the aiohttp transport a refused
    connection arrives as APITimeoutError (ConnectTimeout <- ClientConnectorError <-
    ConnectionRefusedError), with httpx as APIConnectionError <- ConnectError <- ... <-
    ConnectionRefusedError."""
    import errno

    chain: list[BaseException] = []
    x: BaseException | None = exc
    while x is not None and len(chain) < 16 and x not in chain:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in chain:
        if isinstance(x, ConnectionRefusedError) or getattr(x, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
    for x in chain:
        if isinstance(x, ConnectionResetError) or getattr(x, "errno", None) == errno.ECONNRESET:
            return "connection reset"
    for x in chain:
        name, text = type(x).__name__, str(x)
        if ("ContentLength" in name or "IncompleteRead" in name or "RemoteProtocolError" in name
                or "payload is not completed" in text or "peer closed connection" in text):
            return "truncated body"
    import openai

    if isinstance(exc, openai.APITimeoutError) or any(isinstance(x, TimeoutError) for x in chain):
        return "timeout"
    inner = chain[-1]
    return f"connection error ({type(inner).__name__})"


def _retry_after_s(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for name, div in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            v = float(value) / div
        except ValueError:
            try:
                v = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):
                continue
        if math.isfinite(v):
            return max(0.0, v)
    return None


class OpenAIJudge(_JudgeBase):
    """A judge on an OpenAI-compatible chat-completions endpoint (the official async client).

    Each prompt is sent as one user message with ``max_tokens=1, temperature=0, logprobs=True,
    top_logprobs=20, seed=0``; the first token's top-20 gives the score. At most
    ``max_concurrency`` requests are in flight per event loop. Retries are ours (the client's own
    ``max_retries`` is 0): 408/409/429/5xx, timeouts, connection errors and malformed or
    truncated bodies are retried up to ``max_retries`` times with exponential backoff and jitter,
    honouring ``Retry-After``; then the judgement is NaN with the reason (``failed`` set). Other
    4xx (400, 422: about that prompt) are NaN with the reason at once, without ``failed``.

    Credentials: ``api_key`` (a served judge's token from its endpoint file), else
    ``os.environ[api_key_env]``; ``api_key_env`` defaults to OPENAI_API_KEY for api.openai.com
    (no ``base_url``) and to nothing for a ``base_url`` server, which then gets the placeholder
    "EMPTY" (the client needs a string): the environment's OpenAI key never reaches a server it
    was not named for. The key is kept out of reprs, logs, the cache and pickles; an unpickled
    judge re-reads it from its own environment (an explicit ``api_key`` must be passed again).

    Transient failures (408/409/429/5xx, timeouts, connection errors, malformed or truncated
    bodies) are retried; a NaN after the last retry has ``Judgement.failed`` set. Configuration
    errors raise :class:`JudgeUnavailable` at once: 404, 401/403, 429 insufficient_quota, and a
    connection refused on every request of the first batch.

    ``transport``: "aiohttp" (``openai.DefaultAioHttpClient``; needs ``aiohttp``, measured
    faster), "httpx" (the client's default), or "auto" (aiohttp when installed).
    """

    def __init__(self, model: str = DEFAULT_JUDGE_MODEL, base_url: str | None = None,
                 max_concurrency: int = 32, timeout_s: float = 60.0, max_retries: int = 6,
                 cache: JudgeCache | None = None, name: str | None = None,
                 api_key_env: str | None = None, *, api_key: str | None = None, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30.0, retry_after_max_s: float = 300.0,
                 transport: Literal["auto", "httpx", "aiohttp"] = "auto") -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if transport not in ("auto", "httpx", "aiohttp"):
            raise ValueError(f"transport must be auto, httpx or aiohttp, not {transport!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, not {timeout_s!r}")
        self._init_base(model, name, cache)
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        if api_key_env is None and base_url is None and api_key is None:
            api_key_env = "OPENAI_API_KEY"
        self.api_key_env = api_key_env
        self._explicit_key = api_key is not None
        # Configuration-error detection: any HTTP answer at all proves the server is there.
        self._answered = False
        self._refused_first = 0
        self._first_batch: int | None = None
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.transport = transport
        self._key: _Secret | None = _Secret(api_key) if api_key is not None else self._read_key()
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    def _read_key(self) -> _Secret:
        if self._explicit_key:
            raise RuntimeError(f"judge {self.name}: its token was passed explicitly and is not pickled; "
                               "build the judge again where it runs (emt.eval.task.make_judges)")
        if self.api_key_env is None:
            # A base_url server named no variable: send a placeholder, never the environment's key.
            return _Secret(NO_KEY)
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RuntimeError(
                f"judge {self.name} needs an API key: export {self.api_key_env}=... in the environment "
                "of the process that scores (the key is read from the environment only, never "
                "from configs, and is not stored)")
        return _Secret(key)

    def __repr__(self) -> str:
        return (f"OpenAIJudge(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r}, "
                f"max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, "
                f"max_retries={self.max_retries}, cache={self.cache!r})")

    # Pickling (the judge may travel inside a submitted job): drop the key and the clients;
    # the child re-reads the key from its own environment on first use.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_key"] = None
        state["_states"] = {}
        return state

    def _redact(self, text: str) -> str:
        key = self._key.get() if self._key is not None else ""
        if key and key != NO_KEY and key in text:
            text = text.replace(key, "***")
        return text

    # ---------------------------------------------------------------- client per loop

    def _make_client(self) -> Any:
        import openai

        if self._key is None:
            self._key = self._read_key()
        try:  # openai>=3 runs on httpx2; older releases on httpx
            import httpx2 as _httpx
        except ImportError:
            import httpx as _httpx  # type: ignore[no-redef]
        # Our semaphore bounds concurrency; size the pool to match so connections are reused
        # rather than opened and closed per request (httpx keeps only 20 idle by default).
        limits = _httpx.Limits(max_connections=self.max_concurrency,
                               max_keepalive_connections=self.max_concurrency)
        use_aiohttp = self.transport == "aiohttp"
        if self.transport == "auto":
            try:
                import aiohttp  # noqa: F401
                use_aiohttp = hasattr(openai, "DefaultAioHttpClient")
            except ImportError:
                use_aiohttp = False
        http_cls = openai.DefaultAioHttpClient if use_aiohttp else openai.DefaultAsyncHttpxClient
        http_client = http_cls(limits=limits, timeout=self.timeout_s)
        return openai.AsyncOpenAI(api_key=self._key.get(), base_url=self.base_url,
                                  timeout=self.timeout_s, max_retries=0, http_client=http_client)

    async def _acquire_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(self._make_client(), self.max_concurrency)
        state.users += 1
        return state

    async def _release_state(self, state: _LoopState) -> None:
        state.users -= 1
        if state.users == 0:
            loop = asyncio.get_running_loop()
            if self._states.get(loop) is state:
                del self._states[loop]
            await state.client.close()

    # ---------------------------------------------------------------- requests

    async def _judge_missing(self, prompts: list[str]) -> list[_Reply]:
        state = await self._acquire_state()
        results: list[_Reply | None] = [None] * len(prompts)
        pending: list[tuple[str, _Reply]] = []
        last_flush = time.monotonic()
        it = iter(enumerate(prompts))
        if self._first_batch is None:
            # "Refused on every request of the first batch" is a server that is not there (or a
            # wrong host/port): the first batch is what goes out at once.
            self._first_batch = max(1, min(len(prompts), self.max_concurrency))

        async def flush() -> None:
            nonlocal last_flush
            last_flush = time.monotonic()
            if pending:
                batch = pending[:]
                pending.clear()
                await self._store(batch)

        async def worker() -> None:
            # A fixed pool of workers rather than one task per prompt: memory stays flat for
            # 100k prompts. The semaphore (shared by concurrent ascore calls on this loop)
            # bounds requests in flight; backoff sleeps happen outside it, and there are twice
            # as many workers as slots so that workers sleeping in backoff don't idle slots.
            for i, prompt in it:
                r = await self._one(state, prompt)
                results[i] = r
                pending.append((prompt, r))
                # Write the cache progressively so a crash loses little; batched because every
                # commit is an fsync-ish round trip and blocks the loop briefly.
                if len(pending) >= 256 or time.monotonic() - last_flush > 5.0:
                    await flush()

        try:
            n_workers = min(len(prompts), 2 * self.max_concurrency)
            tasks = [asyncio.ensure_future(worker()) for _ in range(n_workers)]
            # A configuration error (JudgeUnavailable) in one worker stops them all at once:
            # the other prompts would only meet the same error after their own retries.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            await flush()
            await self._release_state(state)
        return results  # type: ignore[return-value]

    def _backoff(self, retry: int) -> float:
        # Exponential backoff with "equal jitter": half fixed, half random, so that many
        # requests failing together don't come back together.
        d = min(self.backoff_base_s * (2 ** retry), self.backoff_max_s)
        return d / 2 + random.uniform(0, d / 2)

    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _config_error(self, status: int, message: str) -> JudgeUnavailable | None:
        """The one-line error for an HTTP status that no retry can fix, or None."""
        where, key = self._where(), self._key_hint()
        if status == 404:
            return JudgeUnavailable(
                f"judge {self.name}: http 404 from {where.rstrip('/')}/chat/completions ({message}): base_url must be "
                f"the API root ending in /v1 (e.g. http://host:8000/v1) and model {self.model!r} one the server serves")
        if status in (401, 403):
            return JudgeUnavailable(f"judge {self.name}: http {status} from {where} ({message}): the server refused "
                                    f"the credentials; {key}")
        return None

    def _key_hint(self) -> str:
        if self.api_key_env:
            return f"check {self.api_key_env} in the job's environment (judge.judges[].api_key_env)"
        if self._explicit_key:
            return "the token in the served judge's endpoint file does not match the server; restart it"
        return "this judge sends no key: name the variable holding it with judge.judges[].api_key_env"

    async def _one(self, state: _LoopState, prompt: str) -> _Reply:
        import openai

        loop = asyncio.get_running_loop()
        retries = 0
        last_malformed: _Reply | None = None
        while True:
            async with state.sem:
                wait = state.pause_until - loop.time()
                if wait > 0:  # the server asked everyone to hold off (429 Retry-After)
                    await asyncio.sleep(wait)
                with self._usage.lock:
                    self._usage.calls += 1
                retry_after: float | None = None
                failure = True  # a transport failure (retried, then NaN and not cached)
                try:
                    raw = await state.client.chat.completions.with_raw_response.create(
                        model=self.model, messages=[{"role": "user", "content": prompt}],
                        max_tokens=1, temperature=0, logprobs=True, top_logprobs=20, seed=0,
                        extra_headers=_tag_headers() or None)
                    body = raw.http_response.content
                except openai.APIStatusError as e:
                    what, retryable, failure, retry_after = self._status_error(e)
                except openai.APIConnectionError as e:  # APITimeoutError included
                    what, retryable = self._connection_error(e, retries), True
                except Exception as e:  # never let one request sink the batch
                    log.warning("judge %s: unexpected %s", self.name, type(e).__name__)
                    what, retryable = self._redact(f"error {type(e).__name__}: {e}")[:300], False
                else:
                    self._answered = True
                    r = self._parse(body)
                    with self._usage.lock:
                        self._usage.prompt_tokens += r.prompt_tokens
                        self._usage.completion_tokens += r.completion_tokens
                    if not r.malformed:
                        return r
                    # A broken body (a proxy's error page, a cut connection) is the transport's
                    # fault, not the judge's answer: retried like a 5xx.
                    last_malformed, what, retryable = r, r.reason or "malformed response", True
            if not retryable or retries >= self.max_retries:
                suffix = f" after {retries} retries" if retries else ""
                raw_text = last_malformed.raw if last_malformed is not None and what == last_malformed.reason else None
                return _Reply(math.nan, raw_text, what + suffix, None, cacheable=False,
                              transport_failure=failure)
            delay = self._backoff(retries)
            if retry_after is not None:
                # Honour the server's delay (plus a little jitter so that everyone it throttled
                # doesn't return in the same millisecond) and hold off the other requests too:
                # rate limits are per account, not per request.
                delay = retry_after * (1 + 0.1 * random.random())
                state.pause_until = max(state.pause_until, loop.time() + delay)
            retries += 1
            with self._usage.lock:
                self._usage.retries += 1
            log.debug("judge %s: %s; retry %d/%d in %.2f s", self.name, what, retries,
                      self.max_retries, delay)
            await asyncio.sleep(delay)

    def _status_error(self, e: Any) -> tuple[str, bool, bool, float | None]:
        """(reason, retryable, transport failure, Retry-After seconds) of an HTTP error reply;
        raises JudgeUnavailable when it is a configuration error (a bad key or model, no quota)."""
        self._answered = True
        status = e.status_code
        code = getattr(e, "code", None)
        what = f"http {status}"
        if isinstance(code, str) and len(code) < 64:  # e.g. "rate_limit_exceeded"
            what += f" ({code})"
        body_err = getattr(e, "body", None)  # the API's "error" object, when it sent one
        message = body_err.get("message") if isinstance(body_err, dict) else None
        fatal = self._config_error(status, self._redact(str(message or e.message))[:200])
        if status == 429 and code == "insufficient_quota":  # billing, not load
            fatal = JudgeUnavailable(f"judge {self.name}: http 429 insufficient_quota from "
                                     f"{self._where()}: the account has no quota left; add credit")
        if fatal is not None:
            raise fatal from None
        retryable = status in (408, 409, 429) or status >= 500
        # Any other 4xx (400: context too long, 422) is about this prompt: it stays
        # NaN with its reason, without marking the checkpoint incomplete forever.
        failure = retryable
        retry_after = _retry_after_s(e.response.headers) if retryable else None
        if retry_after is not None and retry_after > self.retry_after_max_s:
            retryable = False
        return what, retryable, failure, retry_after

    def _connection_error(self, e: Exception, retries: int) -> str:
        """The reason of a connection error; raises JudgeUnavailable once every request of the
        first batch was refused (no server listens there)."""
        what = _transport_reason(e)
        if what == "connection refused" and retries == 0 and not self._answered:
            self._refused_first += 1
            if self._refused_first >= (self._first_batch or 1):
                raise JudgeUnavailable(
                    f"judge {self.name}: connection refused on all {self._refused_first} requests of the "
                    f"first batch to {self._where()}: no server listens there; start it, or fix the "
                    f"host/port in judge.judges[].base_url") from None
        return what

    def _parse(self, body: bytes) -> _Reply:
        """A chat.completion body -> reply; anything malformed is NaN with reason and raw body."""
        try:
            return self._parse_body(body)
        except Exception as e:  # a body shape not foreseen below must not sink the batch
            return _Reply(math.nan, self._redact(body[:2000].decode("utf-8", "replace")),
                          f"malformed response: {type(e).__name__}", None, cacheable=False, malformed=True)

    def _parse_body(self, body: bytes) -> _Reply:
        text = body.decode("utf-8", errors="replace")

        def bad(why: str) -> _Reply:
            # Not cached: a broken body is the transport's fault, not the judge's answer.
            return _Reply(math.nan, self._redact(text[:2000]), f"malformed response: {why}", None,
                          cacheable=False, malformed=True)

        try:
            data = json.loads(text)
        except ValueError:
            return bad("invalid JSON")
        if not isinstance(data, dict):
            return bad("not a JSON object")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        pt, ct = _as_int(usage.get("prompt_tokens")), _as_int(usage.get("completion_tokens"))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            r = bad("missing choices")
            r.prompt_tokens, r.completion_tokens = pt, ct
            return r
        choice = choices[0]
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if content is None and isinstance(message, dict):
            content = message.get("refusal")
        lp = choice.get("logprobs")
        entries = lp.get("content") if isinstance(lp, dict) else None
        if not isinstance(entries, list):
            if content == "":
                return _Reply(math.nan, "", "empty reply", None, pt, ct)
            r = bad("missing logprobs")
            r.prompt_tokens, r.completion_tokens = pt, ct
            return r
        if not entries:
            reason = "empty reply"
            if choice.get("finish_reason") not in (None, "length", "stop"):
                reason += f" (finish_reason={choice.get('finish_reason')})"
            return _Reply(math.nan, content, reason, None, pt, ct)
        first = entries[0]
        tops = first.get("top_logprobs") if isinstance(first, dict) else None
        if not isinstance(tops, list):
            r = bad("missing top_logprobs")
            r.prompt_tokens, r.completion_tokens = pt, ct
            return r
        logprobs: dict[str, float] = {}
        try:
            for t in tops:
                merge_logprob(logprobs, str(t["token"]), float(t["logprob"]))
        except (KeyError, TypeError, ValueError):
            r = bad("bad top_logprobs entry")
            r.prompt_tokens, r.completion_tokens = pt, ct
            return r
        raw = first.get("token") if isinstance(first.get("token"), str) else content
        return _reply_from_logprobs(logprobs, raw, pt, ct)


# ============================================================================================
# Local backend
# ============================================================================================

class LocalJudge(_JudgeBase):
    """A judge backed by a local provider: prompts -> first-token top-20 {token: logprob} each.

    ``model`` names the judge model for the cache key (use something that changes when the
    weights do, e.g. a path plus revision). Provider exceptions propagate (they are bugs or
    out-of-memory, not per-request failures). Prompts go to the provider in chunks of
    ``chunk_size`` so the cache is written as scoring progresses.
    """

    def __init__(self, provider: Provider, name: str, model: str,
                 cache: JudgeCache | None = None, *, chunk_size: int = 512) -> None:
        self._init_base(model, name, cache)
        self.provider = provider
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"LocalJudge(name={self.name!r}, model={self.model!r}, cache={self.cache!r})"

    async def _judge_missing(self, prompts: list[str]) -> list[_Reply]:
        out: list[_Reply] = []
        for i in range(0, len(prompts), self.chunk_size):
            chunk = prompts[i:i + self.chunk_size]
            # The provider is blocking (a forward pass): keep the event loop free.
            dicts = await asyncio.to_thread(self.provider, chunk)
            if len(dicts) != len(chunk):
                raise ValueError(f"provider returned {len(dicts)} results for {len(chunk)} prompts")
            with self._usage.lock:
                self._usage.calls += len(chunk)
            replies = []
            for d in dicts:
                d = {str(k): float(v) for k, v in d.items()}
                raw = max(d, key=d.__getitem__) if d else ""
                replies.append(_reply_from_logprobs(d, raw))
            await self._store(list(zip(chunk, replies)))
            out += replies
        return out
