"""A minimal OpenAI-compatible chat-completions server for tests, benchmarks and offline dry runs.

It answers ``POST /v1/chat/completions`` with a body in the real format (one choice, first-token
``logprobs`` with ``top_logprobs``, ``usage``), from a scriptable *responder* (prompt -> {token:
logprob}) after a fixed latency, and can inject scripted faults (429 with ``Retry-After``, 500,
404, hangs past the client timeout, malformed and truncated bodies, connections reset, empty
replies). It also serves the Batch API (``/v1/files`` upload and content, ``/v1/batches``
create, retrieve and list; states validating -> in_progress -> finalizing -> completed / expired /
failed / cancelled, scripted per batch with :class:`BatchScript`; per-line errors go to the error
file). It counts requests in total and per prompt, so tests can assert that a rerun made no
calls, and records the ``Authorization`` header each request carried (``auth_headers()``), so
tests can assert which credentials reached it. With ``api_key`` it requires that bearer token
(401 otherwise), as ``vllm serve --api-key`` does.

It is a plain asyncio HTTP/1.1 server (keep-alive, Content-Length or chunked bodies): latency is
an ``asyncio.sleep``, so thousands of concurrent requests cost no threads. It binds loopback
addresses only and is bounded: it answers 503 after ``max_requests`` and shuts itself down after
``max_lifetime_s``. It never logs the ``Authorization`` header; it keeps it in memory for the
tests (``auth_headers()``), which is why it must only ever see test credentials.

Use it in-process (a background thread)::

    with JudgeServer(latency_s=0.05, faults=[Fault("429", at=1, retry_after=1)]) as base_url:
        judge = OpenAIJudge(base_url=base_url)
        ...

or in a child process (``process=True``; the responder must then be importable, see
``--responder``), which keeps the server's CPU off the client's core in benchmarks, or from the
shell for an offline dry run::

    python -m tests.fakes.judge_server --port 8000 --latency 0.05 --lifetime 3600
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib
import inspect
import ipaddress
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Responder = Callable[[str], Mapping[str, float]]

REPO = Path(__file__).resolve().parents[2]  # the repository root, which holds the `tests` package

FAULT_KINDS = ("429", "500", "404", "timeout", "malformed", "truncated", "reset", "no_logprobs", "empty")
_TRUNCATED, _RESET = -1, -2  # pseudo-statuses: cut the body short / reset the connection
_MAX_HEAD = 64 * 1024  # bytes of request line + headers we accept
_MAX_BODY = 16 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Responders: prompt -> first-token {token text: natural-log probability}
# --------------------------------------------------------------------------------------------

def hash_responder(prompt: str) -> dict[str, float]:
    """A deterministic, realistic-looking top-20 distribution derived from the prompt's hash.

    Most prompts put most mass on one integer ``c`` in 0..100 (with a few other integers, a
    space-prefixed duplicate of ``c`` and non-numeric tokens); about 1 prompt in 16 is a
    "refusal" whose numeric mass is below 0.25 (so its score is NaN). Probabilities sum to < 1,
    as a real top-20 does. Tests compute the expected score with ``score_0_100`` on this output.
    """
    h = hashlib.sha256(prompt.encode("utf-8")).digest()
    c = int.from_bytes(h[:2], "big") % 101
    refusal = h[2] % 16 == 0
    probs: dict[str, float] = {}
    if refusal:
        probs.update({"REFUSAL": 0.55, "I": 0.2, "Sorry": 0.1, str(c): 0.05})
    else:
        probs.update({str(c): 0.5, str((c + 7) % 101): 0.15, str((c + 50) % 101): 0.08,
                      " " + str(c): 0.05, "REFUSAL": 0.04, "The": 0.03})
    # Fill up to 20 entries with small non-numeric tokens, as a real top-20 would have.
    i = 0
    while len(probs) < 20:
        probs[f"tok{i}"] = 0.002 * (1 + (h[3 + i % 20] % 5))
        i += 1
    return {t: math.log(p) for t, p in probs.items()}


def fixed_responder(top_logprobs: Mapping[str, float]) -> Responder:
    """A responder that answers every prompt with the same ``top_logprobs``."""
    table = dict(top_logprobs)
    return lambda prompt: table


def table_responder(table: Mapping[str, Mapping[str, float]],
                    default: Responder | None = None) -> Responder:
    """A responder keyed by prompt substring: the first key found in the prompt wins.

    Prompts matching no key get ``default`` (``hash_responder`` when None).
    """
    items = [(k, dict(v)) for k, v in table.items()]
    fallback = default or hash_responder

    def respond(prompt: str) -> Mapping[str, float]:
        for key, tops in items:
            if key in prompt:
                return tops
        return fallback(prompt)

    return respond


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------

@dataclass
class Fault:
    """A scripted fault.

    kind: ``"429"`` (with ``Retry-After: retry_after`` when that is not None), ``"500"``,
        ``"404"`` (as a wrong base_url or model gets), ``"timeout"`` (sleep ``hang_s`` before
        answering normally: longer than the client's timeout), ``"malformed"`` (200 with an
        invalid JSON body), ``"truncated"`` (200 whose Content-Length promises more than is sent
        before the connection closes), ``"reset"`` (the connection is reset, TCP RST, without an
        answer), ``"no_logprobs"`` (200, valid JSON, ``logprobs: null``), ``"empty"`` (200,
        content ``""``, empty top_logprobs).
    at: 1-based request numbers (counted over all requests) that get the fault; None: any. A
        ``range`` stays a range (``range(401, 10**9)``: "down after 400 requests" costs nothing).
    prompt_contains: only requests whose prompt contains this substring; None: any.
    times: how many matching requests get the fault; None: every matching request.
    """

    kind: str
    at: int | Sequence[int] | None = None
    prompt_contains: str | None = None
    times: int | None = 1
    retry_after: float | None = 1.0
    hang_s: float = 30.0
    hits: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if isinstance(self.at, int):
            self.at = (self.at,)
        elif self.at is not None and not isinstance(self.at, range):
            self.at = tuple(self.at)

    def matches(self, n: int, prompt: str) -> bool:
        """True when request number ``n`` with ``prompt`` should get this fault (and count it)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.at is not None and n not in self.at:  # type: ignore[operator]
            return False
        if self.prompt_contains is not None and self.prompt_contains not in prompt:
            return False
        self.hits += 1
        return True

    def to_json(self) -> dict[str, Any]:
        at = self.at
        d = dataclasses.asdict(dataclasses.replace(self, at=None))
        d.pop("hits")
        d["at"] = list(at) if at is not None else None  # type: ignore[arg-type]
        return d


BATCH_STATES = ("completed", "expired", "failed", "cancelled")


@dataclass
class BatchScript:
    """How one batch (the next one created) ends, for the Batch API routes.

    status: its final state: ``"completed"``, ``"expired"`` (the lines listed by ``expire`` get a
        ``batch_expired`` error, the others their reply), ``"failed"`` (validation failed: no
        line runs, ``errors`` says why) or ``"cancelled"`` (no line has a reply).
    expire: prompt substrings whose lines expire (None: every line) when ``status`` is expired.
    line_status: prompt substring -> HTTP status of that line's response (e.g. 500: a per-line
        error in the error file).
    polls: ``batches.retrieve`` calls it answers ``validating`` / ``in_progress`` / ``finalizing``
        before the final state.
    """

    status: str = "completed"
    expire: Sequence[str] | None = None
    line_status: Mapping[str, int] = field(default_factory=dict)
    polls: int = 3

    def __post_init__(self) -> None:
        if self.status not in BATCH_STATES:
            raise ValueError(f"unknown batch status {self.status!r}; expected one of {BATCH_STATES}")


def _check_loopback(host: str) -> None:
    # The server has no authentication: refuse anything but loopback.
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"judge_server binds loopback addresses only, not {host!r}")


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

class JudgeServer:
    """An OpenAI-compatible fake judge; a context manager yielding ``http://127.0.0.1:PORT/v1``.

    ``responder`` maps a prompt (the last message's content) to the first token's top logprobs
    (a responder with a ``tags`` keyword also receives the request's ``X-EMT-*`` tags, e.g.
    ``{"run": "medical_mild", "step": "42"}``: scores planted per checkpoint);
    ``latency_s`` is added to every answer without blocking others; ``faults`` are matched in
    order against each request. Counters: ``total_requests``, ``count(prompt)``,
    ``prompt_counts()``, ``reset_counts()``; ``add_fault()`` scripts more faults while running
    (thread mode only).
    """

    def __init__(self, responder: Responder | None = None, latency_s: float = 0.0,
                 faults: Iterable[Fault] = (), *, host: str = "127.0.0.1", port: int = 0,
                 max_requests: int = 200_000, max_lifetime_s: float = 900.0,
                 process: bool = False, responder_path: str | None = None,
                 api_key: str | None = None, batch_scripts: Iterable[BatchScript] = ()) -> None:
        _check_loopback(host)
        self.api_key = api_key  # required as "Bearer <api_key>" when set
        self.responder: Responder = responder or hash_responder
        # A responder with a ``tags`` parameter also gets the request's emt tags (run, step):
        # tests plant scores that depend on the checkpoint being judged.
        try:
            self._wants_tags = "tags" in inspect.signature(self.responder).parameters
        except (TypeError, ValueError):
            self._wants_tags = False
        self.latency_s = float(latency_s)
        self.faults: list[Fault] = list(faults)
        self.host = host
        self.port = port
        self.max_requests = max_requests
        self.max_lifetime_s = max_lifetime_s
        self.process = process
        # In process mode the responder travels as "module:function" (functions don't pickle
        # across a command line); None means the default hash responder.
        self.responder_path = responder_path
        if process and responder is not None and responder_path is None:
            raise ValueError("process=True needs responder_path='module:function', not a callable")
        self._lock = threading.Lock()
        self._total = 0
        self._per_prompt: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()
        self._auth: list[str | None] = []  # the Authorization header of each request, in order
        self._in_flight = 0
        self._max_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._proc: subprocess.Popen[str] | None = None
        # The Batch API (thread mode): uploaded files, batches, and how the next batches end.
        self.batch_scripts: list[BatchScript] = list(batch_scripts)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> the batch object (plus "_script", "_polls")
        self.batch_line_counts: Counter[str] = Counter()  # prompt -> lines answered in batches

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` once started."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> str:
        self.start()
        return self.base_url

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start serving (thread or child process); returns the base URL."""
        if self.process:
            return self._start_process()
        self._thread = threading.Thread(target=self._run_thread, name="emt-judge-server",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("judge_server did not start within 30 s")
        if self._start_error is not None:
            raise RuntimeError("judge_server failed to start") from self._start_error
        return self.base_url

    def stop(self) -> None:
        """Stop serving; cancels hanging requests. Idempotent."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                if proc.stdin:
                    proc.stdin.close()  # the child exits when its stdin closes
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            return
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(self._shutdown_event.set)
            except RuntimeError:  # loop already closed
                pass
            thread.join(10)
        self._thread = None

    def _run_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # surface start-up errors to start()
            self._start_error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self, on_ready: Callable[[], None] | None = None) -> None:
        self._shutdown_event = asyncio.Event()
        self._server = await asyncio.start_server(self._handle_conn, self.host, self.port,
                                                  backlog=2048, limit=_MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        if on_ready:
            on_ready()
        try:
            await asyncio.wait_for(self._shutdown_event.wait(), self.max_lifetime_s)
        except asyncio.TimeoutError:
            pass  # lifetime bound reached
        finally:
            self._server.close()
            # Cancel in-flight handlers (e.g. scripted hangs) so shutdown is prompt.
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _start_process(self) -> str:
        cmd = [sys.executable, "-m", "tests.fakes.judge_server", "--host", self.host,
               "--port", str(self.port), "--latency", str(self.latency_s),
               "--max-requests", str(self.max_requests), "--lifetime", str(self.max_lifetime_s),
               "--faults-json", json.dumps([f.to_json() for f in self.faults]),
               "--exit-on-stdin-eof"]
        if self.responder_path:
            cmd += ["--responder", self.responder_path]
        # `tests` is a package of the repository root: importable in the child from any working directory.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        if self.api_key is not None:  # through the environment: not visible in `ps`
            env["EMT_JUDGE_SERVER_KEY"] = self.api_key
            cmd += ["--api-key-env", "EMT_JUDGE_SERVER_KEY"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # "listening on http://127.0.0.1:PORT/v1"
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"judge_server child failed to start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
        return self.base_url

    # ---------------------------------------------------------------- counters

    @property
    def total_requests(self) -> int:
        """Requests received (all paths, faulted ones included)."""
        if self._proc is not None:
            return int(self._remote_stats()["total"])
        return self._total

    def count(self, prompt: str) -> int:
        """Chat-completion requests received for exactly this prompt."""
        return self.prompt_counts().get(prompt, 0)

    def prompt_counts(self) -> dict[str, int]:
        """Requests per prompt text."""
        if self._proc is not None:
            return dict(self._remote_stats()["per_prompt"])
        with self._lock:
            return dict(self._per_prompt)

    def status_counts(self) -> dict[int, int]:
        """Responses per HTTP status."""
        if self._proc is not None:
            return {int(k): v for k, v in self._remote_stats()["statuses"].items()}
        with self._lock:
            return dict(self._statuses)

    @property
    def max_in_flight(self) -> int:
        """The most chat-completion requests that were being answered at once."""
        if self._proc is not None:
            return int(self._remote_stats()["max_in_flight"])
        return self._max_in_flight

    def auth_headers(self) -> list[str | None]:
        """The ``Authorization`` header of every request received, in order (None: absent)."""
        if self._proc is not None:
            return list(self._remote_stats()["auth"])
        with self._lock:
            return list(self._auth)

    def reset_counts(self) -> None:
        """Zero the counters (thread mode)."""
        with self._lock:
            self._total = 0
            self._per_prompt.clear()
            self._statuses.clear()
            self._auth.clear()
            self._max_in_flight = 0

    def add_fault(self, fault: Fault) -> None:
        """Script another fault (thread mode)."""
        if self._proc is not None:
            raise RuntimeError("add_fault works in thread mode only; pass faults= up front")
        with self._lock:
            self.faults.append(fault)

    def _remote_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/_emt/stats", timeout=10) as r:
            return json.loads(r.read())

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self._total, "per_prompt": dict(self._per_prompt),
                    "statuses": {str(k): v for k, v in self._statuses.items()},
                    "max_in_flight": self._max_in_flight, "auth": list(self._auth)}

    # ---------------------------------------------------------------- HTTP

    async def _handle_conn(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, version, length, chunked, close, tags, auth = _parse_head(head)
                if chunked:
                    body = await _read_chunked(reader)
                elif length:
                    if length > _MAX_BODY:
                        await self._write(writer, 413, {}, b"", close=True)
                        return
                    body = await reader.readexactly(length)
                else:
                    body = b""
                keep_alive = version == "HTTP/1.1" and not close
                status, headers, payload = await self._dispatch(method, target, body, tags, auth)
                if status == _RESET:  # SO_LINGER 0: close() sends RST instead of FIN
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        import socket
                        import struct

                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if status == _TRUNCATED:  # promise the whole body, send a third, hang up
                    head_out = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n"
                                "Content-Type: application/json\r\nConnection: close\r\n\r\n")
                    writer.write(head_out.encode("latin-1") + payload[: len(payload) // 3])
                    await writer.drain()
                    return
                await self._write(writer, status, headers, payload, close=not keep_alive)
                if not keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return  # client went away (e.g. it timed out during a scripted hang) or bad request
        except asyncio.CancelledError:
            return  # the server is stopping (a scripted hang was still sleeping): nothing to answer
        finally:
            try:
                writer.close()
            except Exception:
                pass

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str],
                     payload: bytes, *, close: bool) -> None:
        reason = _REASONS.get(status, "OK")
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(payload)}",
                 "Content-Type: application/json",
                 "Connection: close" if close else "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    async def _dispatch(self, method: str, target: str, body: bytes,
                        tags: Mapping[str, str] | None = None,
                        auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
        path = target.split("?", 1)[0]
        if method == "GET" and path == "/_emt/stats":
            return 200, {}, json.dumps(self._stats()).encode()
        with self._lock:
            self._total += 1
            n = self._total
            self._auth.append(auth)
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return self._count(401, _error("Unauthorized", "invalid_request_error", "invalid_api_key"))
        if n > self.max_requests:
            return self._count(503, _error("request bound of this test server reached", "server_error"))
        if method == "GET" and path in ("/v1/models", "/models"):
            return self._count(200, json.dumps({"object": "list", "data": [
                {"id": "emt-judge-server", "object": "model", "owned_by": "emt"}]}).encode())
        if path.startswith(("/v1/files", "/v1/batches")):
            return self._count(*self._batch_api(method, path, body))
        if method != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            return self._count(404, _error(f"no route {method} {path}", "invalid_request_error"))
        try:
            req = json.loads(body)
            prompt = _prompt_of(req)
        except (ValueError, KeyError, TypeError, IndexError):
            return self._count(400, _error("body must be a chat.completions request", "invalid_request_error"))
        with self._lock:
            self._per_prompt[prompt] += 1
            fault = next((f for f in self.faults if f.matches(n, prompt)), None)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return await self._answer(req, prompt, fault, tags or {})
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _answer(self, req: Mapping[str, Any], prompt: str, fault: Fault | None,
                      tags: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if fault is not None:
            if fault.kind == "429":
                hdrs = {} if fault.retry_after is None else {"Retry-After": _fmt_num(fault.retry_after)}
                return self._count(429, _error("Rate limit reached (scripted)", "requests",
                                               "rate_limit_exceeded"), hdrs)
            if fault.kind == "500":
                return self._count(500, _error("The server had an error (scripted)", "server_error"))
            if fault.kind == "404":
                return self._count(404, _error("The model does not exist (scripted)", "invalid_request_error",
                                               "model_not_found"))
            if fault.kind == "reset":
                return self._count(_RESET, b"")
            if fault.kind == "timeout":
                await asyncio.sleep(fault.hang_s)  # the client should have given up by now
            elif fault.kind == "malformed":
                return self._count(200, b'{"id": "chatcmpl-emt", "object": "chat.completion", "choices": [{"ind')
        try:
            tops = self.responder(prompt, tags=tags) if self._wants_tags else self.responder(prompt)
        except Exception as e:  # a broken responder is a 500, not a dead server
            return self._count(500, _error(f"responder failed: {type(e).__name__}", "server_error"))
        kind = fault.kind if fault is not None else None
        body = json.dumps(_completion(req, prompt, tops, kind)).encode()
        return self._count(_TRUNCATED if kind == "truncated" else 200, body)

    # ---------------------------------------------------------------- the Batch API

    def _batch_api(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """/v1/files (upload, content) and /v1/batches (create, retrieve, list), as the API does."""
        parts = path.strip("/").split("/")  # ["v1", "files", id, "content"]
        with self._lock:
            if method == "POST" and parts == ["v1", "files"]:
                fields = _multipart(body)
                if fields.get("purpose", b"").decode() != "batch" or "file" not in fields:
                    return 400, _error("purpose must be batch, with a file", "invalid_request_error")
                fid = f"file-emt{len(self.files) + 1:04d}"
                self.files[fid] = fields["file"]
                return 200, json.dumps({"id": fid, "object": "file", "bytes": len(fields["file"]),
                                        "created_at": int(time.time()), "filename": "batch.jsonl",
                                        "purpose": "batch", "status": "processed"}).encode()
            if method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                if parts[2] not in self.files:
                    return 404, _error(f"no file {parts[2]}", "invalid_request_error")
                return 200, self.files[parts[2]]
            if method == "POST" and parts == ["v1", "batches"]:
                req = json.loads(body)
                if req.get("input_file_id") not in self.files:
                    return 400, _error("no such input_file_id", "invalid_request_error")
                if req.get("endpoint") != "/v1/chat/completions" or req.get("completion_window") != "24h":
                    return 400, _error("endpoint must be /v1/chat/completions, window 24h", "invalid_request_error")
                bid = f"batch_emt{len(self.batches) + 1:04d}"
                script = self.batch_scripts.pop(0) if self.batch_scripts else BatchScript()
                self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"],
                                     "input_file_id": req["input_file_id"], "completion_window": "24h",
                                     "status": "validating", "created_at": int(time.time()),
                                     "output_file_id": None, "error_file_id": None, "errors": None,
                                     "metadata": req.get("metadata"),
                                     "_script": script, "_polls": 0}
                return 200, json.dumps(_public(self.batches[bid])).encode()
            if method == "GET" and parts == ["v1", "batches"]:
                data = [_public(b) for b in reversed(self.batches.values())]
                return 200, json.dumps({"object": "list", "data": data, "has_more": False,
                                        "first_id": data[0]["id"] if data else None,
                                        "last_id": data[-1]["id"] if data else None}).encode()
            if method == "GET" and len(parts) == 3 and parts[1] == "batches":
                b = self.batches.get(parts[2])
                if b is None:
                    return 404, _error(f"no batch {parts[2]}", "invalid_request_error")
                self._advance(b)
                return 200, json.dumps(_public(b)).encode()
        return 404, _error(f"no route {method} {path}", "invalid_request_error")

    def _advance(self, b: dict[str, Any]) -> None:
        """One retrieve further along validating -> in_progress -> finalizing -> the scripted end."""
        if b["status"] in BATCH_STATES:
            return
        script: BatchScript = b["_script"]
        b["_polls"] += 1
        if b["_polls"] < script.polls:
            b["status"] = ("validating", "in_progress", "finalizing")[min(b["_polls"], 2)]
            return
        lines = [json.loads(x) for x in self.files[b["input_file_id"]].decode("utf-8").splitlines() if x.strip()]
        ids = [ln.get("custom_id") for ln in lines]
        problems = []
        if len(set(ids)) != len(ids):
            problems.append({"code": "duplicate_custom_id", "message": "custom_id values must be unique", "line": None})
        if len({ln.get("body", {}).get("model") for ln in lines}) > 1:
            problems.append({"code": "mixed_models", "message": "every line must name the same model", "line": None})
        if script.status == "failed" or problems:
            problems = problems or [{"code": "invalid_request",
                                     "message": "The model `gpt-x` does not exist (scripted)", "line": 1}]
            b.update(status="failed", errors={"object": "list", "data": problems}, failed_at=int(time.time()))
            return
        out, err = [], []
        for ln in lines:
            prompt = _prompt_of(ln["body"])
            rid = {"id": f"batch_req_{uuid_hex(ln['custom_id'])}", "custom_id": ln["custom_id"]}
            if script.status == "cancelled" or (script.status == "expired" and (
                    script.expire is None or any(k in prompt for k in script.expire))):
                if script.status == "expired":
                    err.append({**rid, "response": None, "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}})
                continue
            status = next((c for k, c in script.line_status.items() if k in prompt), 200)
            self.batch_line_counts[prompt] += 1
            if status != 200:
                err.append({**rid, "error": None, "response": {"status_code": status, "request_id": rid["id"],
                            "body": json.loads(_error("scripted line error", "server_error"))}})
                continue
            tops = self.responder(prompt, tags={}) if self._wants_tags else self.responder(prompt)
            out.append({**rid, "error": None, "response": {"status_code": 200, "request_id": rid["id"],
                        "body": _completion(ln["body"], prompt, tops, None)}})
        for rows, key in ((out, "output_file_id"), (err, "error_file_id")):
            if rows:
                fid = f"file-emt{len(self.files) + 1:04d}"
                self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[key] = fid
        b["status"] = script.status
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        b[f"{script.status}_at"] = int(time.time())

    def _count(self, status: int, payload: bytes,
               headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._statuses[status] += 1
        return status, dict(headers or {}), payload


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def _parse_head(head: bytes) -> tuple[str, str, str, int, bool, bool, dict[str, str], str | None]:
    """Request line, the three headers we need, emt's request tags (``X-EMT-Step: 42`` ->
    ``{"step": "42"}``) and the Authorization header (None when absent)."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    length, chunked, close = 0, False, False
    tags: dict[str, str] = {}
    auth: str | None = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name.startswith("x-emt-"):
            tags[name[len("x-emt-"):].replace("-", "_")] = value.strip()
        elif name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            close = value.strip().lower() == "close"
        elif name == "authorization":
            auth = value.strip()
    return method, target, version.strip(), length, chunked, close, tags, auth


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # (no trailers expected)
            return b"".join(parts)
        total += size
        if total > _MAX_BODY:
            raise ValueError("body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _multipart(body: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (the boundary is its first line)."""
    boundary = body.split(b"\r\n", 1)[0]
    out: dict[str, bytes] = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode() if b'name="' in head else ""
        out[name] = content[:-2] if content.endswith(b"\r\n") else content
    return out


def _public(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def uuid_hex(text: str) -> str:
    """A stable id fragment for a custom_id."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _prompt_of(req: Mapping[str, Any]) -> str:
    content = req["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    # content parts: concatenate the text parts
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _error(message: str, type_: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _completion(req: Mapping[str, Any], prompt: str, tops: Mapping[str, float],
                fault: str | None) -> dict[str, Any]:
    """A chat.completion body in the real API's format for a one-token reply."""
    n_top = max(0, min(20, int(req.get("top_logprobs") or 0)))
    ranked = sorted(tops.items(), key=lambda kv: -kv[1])
    token = ranked[0][0] if ranked else ""
    first = _entry(token, ranked[0][1] if ranked else 0.0)
    first["top_logprobs"] = [_entry(t, lp) for t, lp in ranked[:n_top]]
    logprobs: dict[str, Any] | None = {"content": [first], "refusal": None}
    if fault == "empty":
        token = ""
        logprobs = {"content": [{**_entry("", 0.0), "top_logprobs": []}], "refusal": None}
    elif fault == "no_logprobs" or not req.get("logprobs"):
        logprobs = None
    prompt_tokens = 8 + len(prompt.encode("utf-8")) // 4  # a rough token count is enough here
    return {
        "id": "chatcmpl-emt-" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "emt-judge-server"),
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": token, "refusal": None,
                                 "annotations": []},
                     "finish_reason": "length",
                     "logprobs": logprobs}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                  "total_tokens": prompt_tokens + 1},
        "service_tier": "default",
        "system_fingerprint": "fp_emt",
    }


def _key_from_env(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var)
    if not key:
        raise SystemExit(f"--api-key-env {var}: the variable is not set")
    return key


def _load_responder(path: str) -> Responder:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: serve until the lifetime ends, Ctrl-C, or (with --exit-on-stdin-eof) stdin closes."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--lifetime", type=float, default=900.0, help="seconds before shutting down")
    ap.add_argument("--responder", default=None, help="module:function (default: hash responder)")
    ap.add_argument("--faults-json", default="[]", help="JSON list of Fault fields")
    ap.add_argument("--api-key-env", default=None,
                    help="require 'Authorization: Bearer $VAR' (the key read from this variable)")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="stop when stdin closes (used by JudgeServer(process=True))")
    args = ap.parse_args(argv)
    server = JudgeServer(
        _load_responder(args.responder) if args.responder else None, args.latency,
        [Fault(**f) for f in json.loads(args.faults_json)], host=args.host, port=args.port,
        max_requests=args.max_requests, max_lifetime_s=args.lifetime,
        api_key=_key_from_env(args.api_key_env))

    loop = asyncio.new_event_loop()
    server._loop = loop

    def announce() -> None:
        print(f"listening on {server.base_url}", flush=True)
        if args.exit_on_stdin_eof:
            def watch() -> None:
                sys.stdin.read()  # returns at EOF: the parent is gone or asked us to stop
                loop.call_soon_threadsafe(server._shutdown_event.set)
            threading.Thread(target=watch, daemon=True).start()

    try:
        loop.run_until_complete(server._serve(on_ready=announce))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main()
