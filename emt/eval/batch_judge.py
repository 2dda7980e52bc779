"""Scoring through the OpenAI Batch API: the same judgements as :class:`~emt.eval.judge.OpenAIJudge`
at half the price, for offline scoring (the eval task, never the monitor, which needs answers now).

Requests and scores are exactly the synchronous judge's: each prompt is one ``/v1/chat/completions``
request (one user message, ``max_tokens=1, temperature=0, logprobs=True, top_logprobs=20,
seed=0``), the reply's body is parsed by the same code, and every real reply goes into the same
judge cache (``judge-cache.sqlite``, keyed by judge model and prompt), so a prompt scored through a
batch and the same prompt scored synchronously are interchangeable.

Semantics (``judge.judges[i].batch: true``):

- Submission: the prompts the cache lacks are written as JSONL, one request a line with
  ``custom_id`` = the prompt's cache key (its sha256), uploaded with ``purpose="batch"`` and
  submitted with ``completion_window="24h"``; more than :data:`BATCH_MAX_REQUESTS` requests or
  :data:`BATCH_MAX_BYTES` of JSONL are split into several batches.
- Resume: every batch is recorded in a ledger (``<state dir>/<judge>.json``, written atomically
  after the upload and again after the batch is created) before it is waited for. The eval task
  puts the state dir next to its results (``<eval root>/judge-batches/step-N/``,
  :func:`emt.core.paths.judge_batch_dir`; see :func:`batch_state`), so a rerun or a requeued task finds the ledger and polls the same batch
  instead of paying twice; an upload whose batch id was not recorded yet (killed in between) is
  matched against the account's batches by input file before a new batch is created. Without a
  state dir the ledger lives in memory only (no resume).
- Harvest: a batch that ends ``completed``, ``expired`` or ``cancelled`` is read (output and error
  files); every real reply is cached, then the batch leaves the ledger. Harvesting is idempotent:
  killed half-way, a rerun harvests again at no cost.
- Retries: lines that did not get a reply (``batch_expired``, cancelled, 408/409/429/5xx, a
  malformed body) are resubmitted in a new batch, up to ``judge.max_retries`` times; lines still
  failing then are NaN with ``failed`` set (reason "batch_expired after 1 retries", ...) and not
  cached, exactly like a synchronous judgement lost in transport: the eval task leaves their
  checkpoint unscored and a rerun asks them again. Other 4xx lines are NaN with their reason at
  once, as in the synchronous path.
- A batch that fails entirely (``failed``: the input did not validate, a wrong model or endpoint)
  raises :class:`~emt.eval.judge.JudgeUnavailable` with one line naming the judge, the batch and
  the API's errors; it leaves the ledger, so a rerun after the fix submits afresh.
- Modes (:func:`batch_mode`): the GPU eval task submits and does not wait (``submit``: the
  checkpoint is deferred with :class:`BatchPending`, its answers and ledger kept); the
  consolidation job waits and harvests (``wait``, :func:`emt.eval.task.harvest_run`); the persona
  vectors' few judgements, needed at once on the GPU, are asked synchronously (``sync``).
- Polling: ``batches.retrieve`` every ``poll_s`` seconds; transport errors while polling are
  retried ``max_retries`` times, then :class:`~emt.eval.judge.JudgeIncomplete` (the ledger is
  kept: a rerun resumes).
- Cost: usage is priced at the Batch price (:data:`~emt.eval.judge.BATCH_DISCOUNT` of the
  standard price). The API key is read as for the synchronous judge and never written: the ledger
  holds only file and batch ids and the JSONL holds only requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emt.core import atomic
from emt.eval.judge import JudgeIncomplete, JudgeUnavailable, OpenAIJudge, _Reply, estimate_cost, prompt_key

log = logging.getLogger(__name__)

BATCH_MAX_REQUESTS = 50_000
"""The API's limit of requests per batch."""
BATCH_MAX_BYTES = 190 * 1024 * 1024
"""JSONL bytes per batch: the API's limit is 200 MB; a margin keeps us clear of its rounding."""
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "cancelled", "failed")
RETRYABLE_STATUS = (408, 409, 429)

# Where the batch ledger of the scoring in progress lives (set by the eval task per checkpoint).
_STATE_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("emt_batch_state", default=None)
# How a Batch API judge answers inside the block (batch_mode): see BATCH_MODES.
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("emt_batch_mode", default="wait")
BATCH_MODES = ("wait", "submit", "sync")
"""``wait``: submit (or resume) the batches and wait for them (the consolidation job's harvest).
``submit``: submit (or resume) them, harvest what already ended, and raise :class:`BatchPending`
for the rest instead of waiting (the GPU eval task, which must not hold its GPU for hours).
``sync``: ask synchronously at the standard price (a few prompts a GPU job needs at once, e.g.
the persona vectors' judgements)."""


class BatchPending(Exception):
    """Raised in ``submit`` mode: these prompts' batches are in flight; their ledger is kept in
    the state dir, so a later call with the same state dir (in ``wait`` mode) harvests them."""

    def __init__(self, judge: str, batches: int, lines: int) -> None:
        super().__init__(f"judge {judge}: {lines} request(s) in {batches} Batch API batch(es) still running")
        self.judge, self.batches, self.lines = judge, batches, lines


@contextlib.contextmanager
def batch_mode(mode: str) -> Iterator[None]:
    """Answer inside the block in ``mode`` (one of :data:`BATCH_MODES`); a context variable like
    :func:`batch_state`."""
    if mode not in BATCH_MODES:
        raise ValueError(f"batch mode {mode!r}; valid: {', '.join(BATCH_MODES)}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


@contextlib.contextmanager
def batch_state(directory: str | os.PathLike[str] | None) -> Iterator[None]:
    """Keep the ledger of the batches submitted inside the block under ``directory`` (a rerun with
    the same directory resumes them). Like :func:`emt.eval.judge.request_tags`, a context
    variable: it reaches the judge's event loop started in the same thread."""
    token = _STATE_DIR.set(Path(directory) if directory is not None else None)
    try:
        yield
    finally:
        _STATE_DIR.reset(token)


@dataclass
class _Line:
    """One prompt on its way through batches."""

    prompt: str
    key: str
    round: int = 0  # 0: first submission; r: the r-th retry
    reason: str | None = None  # why its last round gave no reply


class _Ledger:
    """The batches a judge submitted and has not harvested yet, persisted atomically (or in memory)."""

    def __init__(self, directory: Path | None, judge: str) -> None:
        self.dir = directory
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", judge) or "judge"
        self.path = directory / f"{safe}.json" if directory is not None else None
        self.entries: list[dict[str, Any]] = []
        if self.path is not None and self.path.is_file():
            try:
                self.entries = list(json.loads(self.path.read_text(encoding="utf-8"))["batches"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise JudgeIncomplete(f"{self.path}: unreadable batch ledger ({e}); it lists the batches already "
                                      f"paid for: repair it, or delete it to submit afresh") from None

    def save(self) -> None:
        if self.path is None:
            return
        if self.entries:
            atomic.write_json(self.path, {"batches": self.entries})
        elif self.path.exists():
            self.path.unlink()

    def jsonl(self, entry: dict[str, Any]) -> Path | None:
        return self.dir / entry["input"] if self.dir is not None else None


class BatchOpenAIJudge(OpenAIJudge):
    """An :class:`~emt.eval.judge.OpenAIJudge` that scores through the Batch API (module docstring).

    ``poll_s``: seconds between status checks. ``max_requests`` / ``max_bytes``: the split into
    batches (the API's limits by default). Everything else as for OpenAIJudge; ``max_retries``
    counts resubmissions of the lines that got no reply.
    """

    def __init__(self, *args: Any, poll_s: float = 30.0, max_requests: int = BATCH_MAX_REQUESTS,
                 max_bytes: int = BATCH_MAX_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0 seconds, not {poll_s!r}")
        if max_requests < 1 or max_bytes < 1:
            raise ValueError("max_requests and max_bytes must be >= 1")
        self.poll_s = poll_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.batches_created = 0
        self._sync_tokens = [0, 0]  # prompt, completion tokens of the calls asked synchronously (sync mode)

    def _reset_usage(self) -> None:
        self._sync_tokens = [0, 0]

    def __repr__(self) -> str:
        return "Batch" + super().__repr__()[:-1] + f", poll_s={self.poll_s})"

    def usage(self) -> dict[str, Any]:
        """As :meth:`OpenAIJudge.usage`, priced at the Batch API's price (the calls asked in
        ``sync`` mode at the standard price); ``batch: True``."""
        d = super().usage()
        sp, sc = self._sync_tokens
        batch = estimate_cost(self.model, d["prompt_tokens"] - sp, d["completion_tokens"] - sc, self.prices, batch=True)
        sync = estimate_cost(self.model, sp, sc, self.prices)
        d["est_cost_usd"] = None if batch is None or sync is None else batch + sync
        d["batch"] = True
        return d

    def _config_error(self, status: int, message: str) -> JudgeUnavailable | None:
        if status == 404:  # the synchronous judge's hint (the /v1 root, the model) does not fit here
            state = _STATE_DIR.get()
            stale = (f"; a ledger in {state} recorded under another server or account names batches this one "
                     f"does not know: delete that folder to submit afresh"
                     if state is not None and state.is_dir() else "")
            return JudgeUnavailable(
                f"judge {self.name}: http 404 from {self._where()} ({message}): the server has no Batch API "
                f"(/v1/files, /v1/batches) or does not know that file or batch; set judge.judges[].batch: false "
                f"for a server without one{stale}")
        return super()._config_error(status, message)

    # ---------------------------------------------------------------- the batch loop

    async def _judge_missing(self, prompts: list[str]) -> list[_Reply]:
        mode = _MODE.get()
        if mode == "sync":
            # Priced at the standard price in usage(): the tokens these calls add are kept apart.
            with self._usage.lock:
                before = (self._usage.prompt_tokens, self._usage.completion_tokens)
            try:
                return await super()._judge_missing(prompts)
            finally:
                with self._usage.lock:
                    self._sync_tokens[0] += self._usage.prompt_tokens - before[0]
                    self._sync_tokens[1] += self._usage.completion_tokens - before[1]
        wait = mode == "wait"
        state = await self._acquire_state()
        try:
            client = state.client
            ledger = _Ledger(_STATE_DIR.get(), self.name)
            lines = {prompt_key(p): _Line(p, prompt_key(p)) for p in prompts}
            replies: dict[str, _Reply] = {}
            pending: set[str] = set()  # submit mode: keys whose batch is still running
            # Resume: whatever an earlier run submitted is polled and harvested first.
            if ledger.entries:
                log.info("judge %s: resuming %d batch(es) from %s", self.name, len(ledger.entries), ledger.path)
                for keys in await asyncio.gather(*(self._finish(client, ledger, e, lines, replies, wait=wait)
                                                   for e in list(ledger.entries))):
                    pending |= keys
            while True:
                todo = [ln for k, ln in lines.items() if k not in replies and k not in pending]
                if not todo:
                    break
                send: list[_Line] = []
                retried: Counter[str] = Counter()
                for ln in todo:
                    if ln.reason is not None and ln.round >= self.max_retries:
                        suffix = f" after {ln.round} retries" if ln.round else ""
                        replies[ln.key] = _Reply(math.nan, None, ln.reason + suffix, None, cacheable=False,
                                                 transport_failure=True)
                    else:
                        if ln.reason is not None:  # it was sent and got no reply: a retry
                            ln.round += 1
                            with self._usage.lock:
                                self._usage.retries += 1
                            retried[ln.reason] += 1
                        send.append(ln)
                if not send:
                    break
                if retried:
                    log.info("judge %s: resubmitting %d line(s) that got no reply (%s; at most %d retries)",
                             self.name, sum(retried.values()),
                             ", ".join(f"{k} x{v}" for k, v in retried.most_common(5)), self.max_retries)
                entries = [await self._submit(client, ledger, chunk) for chunk in self._chunks(send)]
                for keys in await asyncio.gather(*(self._finish(client, ledger, e, lines, replies, wait=wait)
                                                   for e in entries)):
                    pending |= keys
            if pending:
                raise BatchPending(self.name, len(ledger.entries), len(pending & lines.keys()))
            return [replies[prompt_key(p)] for p in prompts]
        finally:
            await self._release_state(state)

    def _request(self, ln: _Line) -> bytes:
        body = {"model": self.model, "messages": [{"role": "user", "content": ln.prompt}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0}
        return (json.dumps({"custom_id": ln.key, "method": "POST", "url": ENDPOINT, "body": body},
                           ensure_ascii=False) + "\n").encode("utf-8")

    def _chunks(self, send: Sequence[_Line]) -> list[list[tuple[_Line, bytes]]]:
        """Split into batches of at most max_requests lines and max_bytes of JSONL."""
        out: list[list[tuple[_Line, bytes]]] = []
        cur: list[tuple[_Line, bytes]] = []
        size = 0
        for ln in send:
            data = self._request(ln)
            if len(data) > self.max_bytes:
                raise ValueError(f"judge {self.name}: one request is {len(data):,} bytes, over the batch limit")
            if cur and (len(cur) >= self.max_requests or size + len(data) > self.max_bytes):
                out.append(cur)
                cur, size = [], 0
            cur.append((ln, data))
            size += len(data)
        if cur:
            out.append(cur)
        return out

    async def _submit(self, client: Any, ledger: _Ledger, chunk: list[tuple[_Line, bytes]]) -> dict[str, Any]:
        """Upload one JSONL and create its batch, recording both in the ledger as they happen."""
        data = b"".join(d for _, d in chunk)
        name = f"batch-{uuid.uuid4().hex[:12]}.jsonl"
        entry: dict[str, Any] = {"input": name, "model": self.model, "n": len(chunk),
                                 "round": max(ln.round for ln, _ in chunk), "file_id": None, "batch_id": None,
                                 "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path = ledger.jsonl(entry)
        if path is not None:
            # Kept until harvested: the custom_id -> prompt map (else downloaded back from the API).
            await asyncio.to_thread(atomic.write_bytes, path, data)
        # Uploading again is harmless (an unused file); creating a batch again is not, so only
        # the upload is retried here (_find_batch covers a create whose answer was lost).
        up = await self._api(lambda: client.files.create(file=(name, data, "application/jsonl"), purpose="batch"),
                             "upload the batch input")
        entry["file_id"] = up.id
        ledger.entries.append(entry)
        ledger.save()
        with self._usage.lock:
            self._usage.calls += len(chunk)
        await self._create(client, ledger, entry)
        return entry

    async def _create(self, client: Any, ledger: _Ledger, entry: dict[str, Any]) -> None:
        batch = await self._api(client.batches.create(
            input_file_id=entry["file_id"], endpoint=ENDPOINT, completion_window="24h",
            metadata={"emt_judge": self.name[:512]}), "create the batch")
        self.batches_created += 1
        entry["batch_id"] = batch.id
        ledger.save()
        log.info("judge %s: submitted batch %s (%d requests%s)", self.name, batch.id, entry["n"],
                 f", retry round {entry['round']}" if entry["round"] else "")

    async def _api(self, call: Any, what: str) -> Any:
        """One management call (upload, create, retrieve, download): configuration errors raise
        JudgeUnavailable; transient ones are retried with backoff, then JudgeIncomplete."""
        import openai

        factory = call if callable(call) else None
        retries = 0
        while True:
            try:
                return await (factory() if factory is not None else call)
            except openai.APIStatusError as e:
                what_e, retryable, _, retry_after = self._status_error(e)  # raises on 401/403/404/quota
            except openai.APIConnectionError as e:
                what_e, retryable, retry_after = self._connection_error(e, retries), True, None
            if factory is None or not retryable or retries >= self.max_retries:
                raise JudgeIncomplete(f"judge {self.name}: could not {what} at {self._where()}: {what_e}"
                                      + (f" after {retries} retries" if retries else "")
                                      + "; the batches already submitted are kept in the ledger: a rerun resumes them")
            delay = retry_after if retry_after is not None else self._backoff(retries)
            retries += 1
            await asyncio.sleep(delay)

    async def _finish(self, client: Any, ledger: _Ledger, entry: dict[str, Any], lines: dict[str, _Line],
                      replies: dict[str, _Reply], *, wait: bool = True) -> set[str]:
        """Wait for one ledger entry's batch and harvest it into the cache and ``replies``; the
        empty set. Without ``wait``, a batch still running is left in the ledger and the keys of
        its requests are returned instead."""
        if entry.get("batch_id") is None:
            found = await self._find_batch(client, entry["file_id"])
            if found is None:
                await self._create(client, ledger, entry)
            else:
                entry["batch_id"] = found
                ledger.save()
        bid = entry["batch_id"]
        while True:
            batch = await self._api(lambda: client.batches.retrieve(bid), f"check batch {bid}")
            if batch.status in TERMINAL:
                break
            if not wait:
                log.info("judge %s: batch %s is %s; left to the harvest", self.name, bid, batch.status)
                return set(await self._inputs(client, ledger, entry))
            await asyncio.sleep(self.poll_s)
        if batch.status == "failed":
            errs = getattr(getattr(batch, "errors", None), "data", None) or []
            first = "; ".join(f"{getattr(e, 'code', None) or 'error'}: {getattr(e, 'message', '')}"
                              + (f" (line {e.line})" if getattr(e, "line", None) is not None else "")
                              for e in errs[:3]) or "no reason given"
            ledger.entries.remove(entry)
            ledger.save()
            raise JudgeUnavailable(
                f"judge {self.name}: batch {bid} failed as a whole ({len(errs)} error(s); {first}): fix the judge's "
                f"model or endpoint ({self._where()}) and rerun; no line of it was billed")
        inputs = await self._inputs(client, ledger, entry)
        got: dict[str, _Reply] = {}
        why: dict[str, str] = {}
        for fid in (batch.output_file_id, batch.error_file_id):
            if fid:
                text = (await self._api(lambda f=fid: client.files.content(f), f"download {fid}")).content
                self._read_results(text, got, why)
        # Cache first, then forget the batch: killed in between, a rerun harvests it again for free.
        await self._store([(inputs[k], r) for k, r in got.items() if k in inputs])
        for key, prompt in inputs.items():
            ln = lines.get(key)
            if ln is None or key in replies:
                continue  # a line of an earlier run's batch that this call does not need (it is cached)
            r = got.get(key)
            if r is not None:
                replies[key] = r
            else:
                ln.reason = why.get(key) or f"no reply (batch {batch.status})"
                ln.round = max(ln.round, int(entry.get("round", 0)))
        ledger.entries.remove(entry)
        ledger.save()
        path = ledger.jsonl(entry)
        if path is not None and path.exists():
            path.unlink()
        counts = getattr(batch, "request_counts", None)
        log.info("judge %s: batch %s %s: %d replies, %d to retry%s", self.name, bid, batch.status, len(got),
                 len(inputs) - len(got), f" (API counts {counts.completed}/{counts.total})" if counts else "")
        return set()

    async def _find_batch(self, client: Any, file_id: str) -> str | None:
        """The batch already created from ``file_id`` (the task was killed before recording it)."""
        page = await self._api(lambda: client.batches.list(limit=100), "list batches")
        for b in getattr(page, "data", []) or []:
            if b.input_file_id == file_id and b.status not in ("failed",):
                return str(b.id)
        return None

    async def _inputs(self, client: Any, ledger: _Ledger, entry: dict[str, Any]) -> dict[str, str]:
        """custom_id -> prompt of a batch: from the local JSONL, else downloaded back."""
        path = ledger.jsonl(entry)
        if path is not None and path.is_file():
            data = await asyncio.to_thread(path.read_bytes)
        else:
            data = (await self._api(lambda: client.files.content(entry["file_id"]), "download the input")).content
        out: dict[str, str] = {}
        for raw in data.decode("utf-8").splitlines():
            if raw.strip():
                req = json.loads(raw)
                out[req["custom_id"]] = req["body"]["messages"][-1]["content"]
        return out

    def _read_results(self, text: bytes, got: dict[str, _Reply], why: dict[str, str]) -> None:
        """Parse an output or error file: replies into ``got``, reasons of lines to retry into ``why``."""
        for raw in text.decode("utf-8", "replace").splitlines():
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                key = str(rec["custom_id"])
            except (ValueError, KeyError, TypeError):
                log.warning("judge %s: unreadable batch result line skipped (%.80s)", self.name, raw)
                continue
            resp = rec.get("response") if isinstance(rec.get("response"), dict) else None
            err = rec.get("error") if isinstance(rec.get("error"), dict) else None
            if resp is None:
                why[key] = str((err or {}).get("code") or "batch error")
                continue
            status = int(resp.get("status_code") or 0)
            body = resp.get("body")
            if status == 200:
                r = self._parse(json.dumps(body).encode("utf-8"))
                with self._usage.lock:
                    self._usage.prompt_tokens += r.prompt_tokens
                    self._usage.completion_tokens += r.completion_tokens
                if r.malformed:
                    why[key] = r.reason or "malformed response"
                else:
                    got[key] = r
                continue
            code = body.get("error", {}).get("code") if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
            reason = f"http {status}" + (f" ({code})" if isinstance(code, str) and len(code) < 64 else "")
            if status in RETRYABLE_STATUS or status >= 500 or status == 0:
                why[key] = reason
            else:  # about this prompt (400 context too long, 422): NaN with its reason, not failed, not cached
                got[key] = _Reply(math.nan, None, reason, None, cacheable=False)
