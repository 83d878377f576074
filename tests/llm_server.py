"""A local OpenAI-compatible chat-completions server for tests and benchmarks, with fault injection.

Run as: python tests/llm_server.py --port 0 --latency-ms 100   (prints its base URL, serves until killed)

Stdlib only (asyncio streams, HTTP/1.1 keep-alive). ``POST /v1/chat/completions`` answers with a
ChatCompletion whose content is written by a tiny rule-based "model" that reads the GROK prompt
(task, eye, measurements, diagnosis to reach) and replies ``{"answer": ...}``. Faults are drawn per
request from a seeded generator:

* ``p429`` -> HTTP 429 with ``Retry-After``; ``p500`` -> HTTP 500;
* ``p_timeout`` -> the answer is held for ``timeout_hold_s`` (longer than the client's timeout);
* ``p_truncated`` -> the content is cut mid-JSON with ``finish_reason: "length"``;
* ``p_malformed`` -> the content is not valid JSON;
* ``p_bad_body`` -> HTTP 200 whose body is not JSON at all;
* ``p_wrong_number`` -> a well-formed answer with a wrong measurement (the verifier must catch it).

``stats`` counts requests and faults; ``bodies`` keeps the SHA-256 of every request body served.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Faults:
    p429: float = 0.0
    p500: float = 0.0
    p_timeout: float = 0.0
    p_truncated: float = 0.0
    p_malformed: float = 0.0
    p_bad_body: float = 0.0
    p_wrong_number: float = 0.0
    timeout_hold_s: float = 2.0

    def draw(self, rng: random.Random) -> str | None:
        x = rng.random()
        for name in ("p429", "p500", "p_timeout", "p_truncated", "p_malformed", "p_bad_body", "p_wrong_number"):
            p = getattr(self, name)
            if x < p:
                return name
            x -= p
        return None


_MEAS = re.compile(r"^- (?P<name>[^:\n]+): (?P<value>\d+(?:\.\d+)?)(?: (?P<unit>[^\s(]+))?", re.MULTILINE)


def _prompt_text(messages) -> str:
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            out.extend(p.get("text", "") for p in c if isinstance(p, dict))
        elif isinstance(c, str):
            out.append(c)
    return "\n".join(out)


def fake_answer(messages, wrong_number: bool = False) -> str:
    """The rule-based "model": a short, grounded reply built only from the prompt's facts."""
    text = _prompt_text(messages)
    task = (re.search(r"^Task: (\w+)", text, re.MULTILINE) or [None, "report"])[1]
    eye = (re.search(r"^Eye: (right eye|left eye)", text, re.MULTILINE) or [None, "eye"])[1]
    dx = (re.search(r"^Diagnosis to reach: ([^(\n]+)", text, re.MULTILINE) or [None, "a normal eye"])[1].strip()
    meas_block = text.split("Measurements:", 1)[-1].split("Findings present:", 1)[0]
    m = _MEAS.search(meas_block)
    if m:
        v = m.group("value")
        if wrong_number:
            dec = len(v.split(".")[1]) if "." in v else 0
            v = f"{float(v) * 1.6 + 7:.{dec}f}"
        meas = f"{m.group('name')} of {v}{(' ' + m.group('unit')) if m.group('unit') else ''}"
    else:
        meas = "no measurable value"
    if task == "diagnosis":
        name = "Normal" if dx == "a normal eye" else dx
        return f"Answer: {name}. The {meas} is consistent with this."
    if task == "cot":
        return (f"Step 1 (measurements): {meas}.\nStep 2 (findings): the images were reviewed.\n"
                f"Step 3 (differential): the alternatives were weighed.\nStep 4 (diagnosis): Diagnosis: {dx}.")
    if task == "biomarker_qa":
        return f"The {meas}."
    return f"The {eye} shows {meas}. Diagnosis: {dx}."


@dataclass
class ServerState:
    faults: Faults = field(default_factory=Faults)
    latency_s: float = 0.0
    seed: int = 0
    model: str = "grok-test-model"
    stats: Counter = field(default_factory=Counter)
    bodies: list = field(default_factory=list)
    keep_bodies: bool = True
    #: Parsed request bodies, kept only when ``keep_requests`` is set (tests that compare bodies).
    requests: list = field(default_factory=list)
    keep_requests: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


def _response(status: int, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
              400: "Bad Request"}.get(status, "OK")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: keep-alive"]
    for k, v in (extra or {}).items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _handle_completion(state: ServerState, raw: bytes) -> bytes:
    state.stats["requests"] += 1
    try:
        req = json.loads(raw)
    except json.JSONDecodeError:
        state.stats["bad_request"] += 1
        return _response(400, b'{"error": {"message": "invalid JSON body"}}')
    if state.keep_bodies:
        state.bodies.append(hashlib.sha256(raw).hexdigest())
    if state.keep_requests:
        state.requests.append(req)
    for m in req.get("messages", []):
        if isinstance(m.get("content"), list):
            state.stats["image_parts"] += sum(1 for p in m["content"] if isinstance(p, dict)
                                              and p.get("type") == "image_url"
                                              and str(p.get("image_url", {}).get("url", "")).startswith("data:image/"))
    fault = state.faults.draw(state.rng)
    if fault:
        state.stats[fault] += 1
    if state.latency_s:
        await asyncio.sleep(state.latency_s)
    if fault == "p429":
        return _response(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', {"Retry-After": "0"})
    if fault == "p500":
        return _response(500, b'{"error": {"message": "injected server error"}}')
    if fault == "p_timeout":
        await asyncio.sleep(state.faults.timeout_hold_s)
    if fault == "p_bad_body":
        return _response(200, b'{"id": "x", "choices": [ {"message": ')
    answer = fake_answer(req.get("messages", []), wrong_number=fault == "p_wrong_number")
    content = json.dumps({"answer": answer})
    finish = "stop"
    if fault == "p_truncated":
        content, finish = content[: max(5, len(content) // 2)], "length"
    elif fault == "p_malformed":
        content = "{'answer': " + answer[:40] + "..."
    state.stats["late" if fault == "p_timeout" else "ok"] += 1  # a late answer reaches no client
    prompt_tokens = max(1, len(raw) // 4)
    completion_tokens = max(1, len(content) // 4)
    body = {"id": f"chatcmpl-{state.stats['requests']}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", state.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
    return _response(200, json.dumps(body).encode())


async def _serve_conn(state: ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            if method == "POST" and path.rstrip("/").endswith("/chat/completions"):
                out = await _handle_completion(state, body)
            elif method == "GET" and path.rstrip("/").endswith("/models"):
                out = _response(200, json.dumps({"object": "list", "data": [{"id": state.model, "object": "model"}]})
                                .encode())
            else:
                out = _response(404, b'{"error": {"message": "not found"}}')
            writer.write(out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass


class LocalLLMServer:
    """Runs the server on 127.0.0.1 (ephemeral port) in a background thread. Use as a context manager."""

    def __init__(self, faults: Faults | None = None, latency_s: float = 0.0, seed: int = 0, port: int = 0):
        self.state = ServerState(faults or Faults(), latency_s, seed)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def stats(self) -> Counter:
        return self.state.stats

    def start(self) -> LocalLLMServer:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(
                asyncio.start_server(lambda r, w: _serve_conn(self.state, r, w), "127.0.0.1", self._port, backlog=512))
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            try:
                self._loop.run_forever()
            finally:
                server.close()
                pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
                for t in pending:
                    t.cancel()
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self._loop.close()

        self._thread = threading.Thread(target=run, name="llm-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("local LLM test server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Local OpenAI-compatible test server with fault injection.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    for name in ("p429", "p500", "p_timeout", "p_truncated", "p_malformed", "p_bad_body", "p_wrong_number"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, dest=name)
    a = ap.parse_args(argv)
    faults = Faults(**{k: getattr(a, k) for k in ("p429", "p500", "p_timeout", "p_truncated", "p_malformed",
                                                  "p_bad_body", "p_wrong_number")})
    state = ServerState(faults, a.latency_ms / 1000.0, a.seed, keep_bodies=False)

    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: _serve_conn(state, r, w), "127.0.0.1", a.port, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port}/v1", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
