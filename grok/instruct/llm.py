"""LLM mode plumbing: configuration, the OpenAI-compatible client, retries, rate limit, cache, cost.

Run as: GROK_LLM_BASE_URL=http://127.0.0.1:8000/v1 GROK_LLM_MODEL=Qwen/Qwen2-VL-7B-Instruct \\
        grok instruct studies.jsonl --out runs/instruct --mode llm

* :class:`LLMConfig` — base URL, model, sampling, concurrency, rate limit, timeouts, retries,
  structured output, prices: the one LLM settings model (``grok instruct``, the build's
  ``instruct.llm``, an evaluation judge), a :class:`grok.config.Settings`. The API key is read
  from the environment variable named by ``api_key_env`` (default ``GROK_LLM_API_KEY``, then
  ``OPENAI_API_KEY``) when the client is made; it is never kept in the config, a row, a log or the
  cache.
* :class:`OpenAIChatClient` — the real ``openai.AsyncOpenAI`` client (its own retries off, so the
  policy here is the only one and every failed try is recorded).
* :func:`call_with_retries` — exponential backoff with full jitter on 429, 5xx, timeouts,
  connection errors and unreadable responses; other 4xx fail at once.
* :class:`RateLimiter` — one requests-per-second limit shared by all async workers of a client (a
  build running several LLM shards at once gives each :meth:`LLMConfig.shared_by` its share).
* :class:`RequestCache` — SQLite, keyed on a canonical hash of model + messages + sampling
  parameters + template hash; each response is committed as soon as it arrives, so a crashed run
  resumes without repeating finished calls and a rerun makes none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from grok.config import ConfigError, Settings, read_yaml_mapping
from grok.instruct.http1 import Http1Transport, http_module

API_KEY_ENVS = ("GROK_LLM_API_KEY", "OPENAI_API_KEY")
#: LLMConfig fields read by :meth:`LLMConfig.from_env`, and their variables.
ENV_VARS = {"base_url": "GROK_LLM_BASE_URL", "model": "GROK_LLM_MODEL", "concurrency": "GROK_LLM_CONCURRENCY",
            "requests_per_second": "GROK_LLM_RPS", "timeout_s": "GROK_LLM_TIMEOUT_S"}


class LLMConfig(Settings):
    """Settings of the LLM client: one model for ``grok instruct --llm-config``, the build's
    ``instruct.llm`` section and any other caller (an evaluation judge). Defaults are defined here only.

    The API key is read from the environment variable named by ``api_key_env`` (then
    ``OPENAI_API_KEY``) when the client is made; it is never kept in the config, a row, a log or the
    cache. Backoff before retry ``k`` is ``uniform(0, min(backoff_max_s, backoff_base_s * 2**k))``
    (full jitter), or the server's ``Retry-After`` when it sends one (capped at ``backoff_max_s``).
    """

    # fields the build did not have before the two LLM settings classes became this one: content keys
    # hash them only when changed, so existing builds keep their build ids
    KEY_IF_CHANGED: ClassVar[frozenset[str]] = frozenset({
        "top_p", "max_retries", "backoff_base_s", "backoff_max_s", "structured_output", "image_root",
        "prompt_template", "prices", "http_transport"})

    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1`` (vLLM) or a hosted API."""
    model: str = "Qwen/Qwen2-VL-7B-Instruct"
    """Model name the server expects."""
    api_key_env: str = "GROK_LLM_API_KEY"
    """Environment variable holding the API key (the key itself is never stored)."""
    concurrency: int = Field(16, ge=1)
    """Requests in flight at once per client (async workers)."""
    requests_per_second: float = Field(10.0, ge=0)
    """Rate limit over everything that uses this config at once, 0 = unlimited. A build splits it evenly
    over the LLM shards it runs at once (``instruct.llm_parallel_shards``)."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout in seconds."""
    max_retries: int = Field(5, ge=0)
    """Retries of one request on 429 / 5xx / timeout / connection error / unreadable response."""
    backoff_base_s: float = Field(0.5, ge=0)
    """Base of the exponential backoff between retries (seconds)."""
    backoff_max_s: float = Field(30.0, ge=0)
    """Longest wait between retries (seconds), also the cap on a server's Retry-After."""
    max_attempts: int = Field(3, ge=1)
    """Generations per row: a row failing parsing or verification is regenerated (new seed) up to this
    many times in all."""
    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(800, ge=16)
    """Completion budget per request (a report is at most 300 words)."""
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    """``json_schema`` (strict JSON schema), ``json_object`` or ``none`` (plain text, parsed defensively)."""
    send_images: bool = True
    """Attach the row's images as base64 data URLs (for models that take images)."""
    image_root: str | None = None
    """Folder the row image paths are relative to (default: the studies file's folder; a build uses its
    build folder)."""
    prompt_template: str = "llm/grok_prompt.j2"
    """Prompt template, relative to the templates folder."""
    prices: dict[str, dict[Literal["input_per_1m_usd", "output_per_1m_usd"], Annotated[float, Field(ge=0)]]] = Field(
        default_factory=dict)
    """``{model: {input_per_1m_usd: x, output_per_1m_usd: y}}``; a model without a price gets cost
    ``None`` (flagged), never a guess."""
    http_transport: Literal["auto", "sdk"] = "auto"
    """``auto``: requests to an ``http://`` base URL go through the lean keep-alive transport of
    :mod:`grok.instruct.http1` (about half the client CPU per request), any other URL through the SDK's
    standard transport; ``sdk``: always the SDK's standard transport."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v or not urlsplit(v).scheme.startswith("http"):
            raise ValueError(f"{v!r} is not an http(s) URL; give one such as http://127.0.0.1:8000/v1 "
                             "(--base-url or GROK_LLM_BASE_URL)")
        return v

    @field_validator("model")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v:
            raise ValueError("empty: name the served model (--model or GROK_LLM_MODEL)")
        return v

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMConfig:
        """``GROK_LLM_BASE_URL``, ``GROK_LLM_MODEL``, ``GROK_LLM_CONCURRENCY``, ``GROK_LLM_RPS``,
        ``GROK_LLM_TIMEOUT_S`` where set, overridden by keyword arguments that are not None."""
        env = {key: os.environ[var] for key, var in ENV_VARS.items() if os.environ.get(var)}
        return cls.parse({**env, **{k: v for k, v in overrides.items() if v is not None}}, where="LLM settings: ")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> LLMConfig:
        """Read a YAML/JSON mapping of the fields above. A literal ``api_key`` entry is refused."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: LLM config not found")
        data = read_yaml_mapping(p)
        if "api_key" in data:
            raise ConfigError(f"{p}: api_key: do not put the API key in a file; set the variable named by "
                              "api_key_env (default GROK_LLM_API_KEY)")
        return cls.parse({**data, **{k: v for k, v in overrides.items() if v is not None}}, where=f"{p}: ")

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}

    def public(self) -> dict[str, Any]:
        """What may be recorded: no key, and only the host of the base URL."""
        return {"model": self.model, "base_url_host": base_url_host(self.base_url),
                "structured_output": self.structured_output, "send_images": self.send_images,
                "concurrency": self.concurrency, "requests_per_second": self.requests_per_second,
                "timeout_s": self.timeout_s, "max_retries": self.max_retries, "max_attempts": self.max_attempts,
                "http_transport": self.http_transport}

    def api_key(self) -> str:
        for var in (self.api_key_env, *API_KEY_ENVS):
            v = os.environ.get(var)
            if v:
                return v
        return "EMPTY"  # local servers (vLLM) accept any key; the string is not a secret

    def shared_by(self, clients: int) -> LLMConfig:
        """These settings for one of ``clients`` clients running at once: each gets an equal share of
        ``requests_per_second``, so together they stay under it (0 = unlimited stays unlimited)."""
        if clients <= 1 or self.requests_per_second == 0:
            return self
        return self.model_copy(update={"requests_per_second": self.requests_per_second / clients})


def base_url_host(url: str) -> str:
    """``host[:port]`` of a URL, without credentials, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


# ------------------------------------------------------------------------------------------------
# requests, responses, hashing
# ------------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """One chat completion request; ``key`` is its canonical hash (the cache key)."""

    model: str
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]
    response_format: dict[str, Any] | None
    template_sha256: str
    timeout_s: float
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = request_hash(self.model, self.messages, {**self.sampling, "response_format": self.response_format},
                                    self.template_sha256)


@dataclass
class ChatResponse:
    content: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChatResponse:
        return cls(**json.loads(text))


def request_hash(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any], template_sha256: str) -> str:
    """SHA-256 over sorted-key compact JSON of model, messages, sampling parameters and template hash."""
    blob = json.dumps({"model": model, "messages": messages, "sampling": sampling, "template": template_sha256},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ChatClient(Protocol):
    """What LLM mode needs from a client; tests may wrap :class:`OpenAIChatClient`."""

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def aclose(self) -> None: ...


class LLMCallError(Exception):
    """A failed try: ``kind`` (http_429, http_5xx, timeout, connection, malformed_response, http_4xx),
    ``retryable`` and, for 429/503, the server's ``retry_after_s``."""

    def __init__(self, kind: str, message: str, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def _retry_after(exc: Any) -> float | None:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    for name, div in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        v = headers.get(name)
        if v:
            try:
                return float(v) / div
            except ValueError:
                return None
    return None


#: Requests in flight per HTTP connection pool. The pool's bookkeeping walks all its connections
#: on every request and response, so 32 concurrent requests go through 4 pools of 8.
POOL_SHARD_SIZE = 8


class OpenAIChatClient:
    """:class:`ChatClient` over ``openai.AsyncOpenAI`` (its built-in retries disabled).

    Requests go through the client's own ``post`` (auth, headers, timeouts, and the SDK's error
    types for 4xx/5xx, timeouts and connection errors) with the body built here and the raw
    response read here: ``chat.completions.create`` would spend more CPU per request on
    transforming the parameters and building the typed ``ChatCompletion`` than the whole HTTP
    exchange costs, and LLM mode needs only the content, the finish reason, the usage and the
    model name. The body is the one ``create`` sends (a test checks this against the real
    ``create``). For an ``http://`` base URL (``http_transport: auto``) the SDK's HTTP client
    uses the lean transport of :mod:`grok.instruct.http1`; otherwise its standard transport, and
    then ``ceil(concurrency / POOL_SHARD_SIZE)`` clients, each with its own connection pool
    sized for its share, take requests in turn.
    """

    def __init__(self, config: LLMConfig, shards: int | None = None):
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - openai is a declared dependency of the pipeline extra
            raise ImportError("LLM mode needs the openai client: pip install 'grok-data-engine[pipeline]'") from exc

        self._openai = openai
        http = http_module(openai)  # the HTTP library this openai version is built on (httpx2 or httpx)
        self._raw_response = http.Response
        key = config.api_key()
        self.lean_http = config.http_transport == "auto" and urlsplit(config.base_url).scheme == "http"
        if self.lean_http:
            http_clients = [openai.DefaultAsyncHttpxClient(transport=Http1Transport(openai))]
        else:
            n = max(1, shards if shards is not None else -(-config.concurrency // POOL_SHARD_SIZE))
            per = max(1, -(-config.concurrency // n))
            http_clients = [openai.DefaultAsyncHttpxClient(
                limits=http.Limits(max_connections=2 * per, max_keepalive_connections=2 * per)) for _ in range(n)]
        self._clients = [openai.AsyncOpenAI(base_url=config.base_url, api_key=key, max_retries=0,
                                            timeout=config.timeout_s, http_client=hc) for hc in http_clients]
        self._turn = 0

    @staticmethod
    def request_body(request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``request`` (what ``chat.completions.create`` would send)."""
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        body.update({k: v for k, v in request.sampling.items() if v is not None})
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        oa = self._openai
        client = self._clients[self._turn]
        self._turn = (self._turn + 1) % len(self._clients)
        try:
            raw = await client.post("/chat/completions", body=self.request_body(request), cast_to=self._raw_response,
                                    options={"timeout": request.timeout_s})
        except oa.RateLimitError as exc:
            raise LLMCallError("http_429", str(exc)[:300], True, _retry_after(exc)) from exc
        except oa.APITimeoutError as exc:
            raise LLMCallError("timeout", f"no answer within {request.timeout_s:g} s", True) from exc
        except oa.APIConnectionError as exc:
            raise LLMCallError("connection", str(exc)[:300], True) from exc
        except oa.APIStatusError as exc:
            code = exc.status_code
            if code >= 500 or code in (408, 409):
                raise LLMCallError("http_5xx" if code >= 500 else f"http_{code}", str(exc)[:300], True,
                                   _retry_after(exc)) from exc
            raise LLMCallError(f"http_{code}", str(exc)[:300], False) from exc
        except (oa.APIResponseValidationError, ValueError, TypeError) as exc:
            raise LLMCallError("malformed_response", f"{type(exc).__name__}: {str(exc)[:300]}", True) from exc
        return parse_completion(raw.content)

    async def aclose(self) -> None:
        for c in self._clients:
            await c.close()


def parse_completion(body: bytes | str) -> ChatResponse:
    """A chat-completion response body -> :class:`ChatResponse`; :class:`LLMCallError`
    (``malformed_response``, retryable) when it is not JSON or has no ``choices[0].message``."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and undecodable bytes
        raise LLMCallError("malformed_response", f"{type(exc).__name__}: {str(exc)[:300]}", True) from exc
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        finish_reason, model = choice.get("finish_reason"), data.get("model")
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise LLMCallError("malformed_response", f"response without choices[0].message ({exc!r})", True) from exc
    if not isinstance(content, str):
        raise LLMCallError("malformed_response", f"message content is a {type(content).__name__}, not text", True)
    return ChatResponse(content, finish_reason, prompt_tokens, completion_tokens, model)


# ------------------------------------------------------------------------------------------------
# rate limit, retries
# ------------------------------------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart across all workers (0 = no limit)."""

    def __init__(self, requests_per_second: float):
        self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.interval == 0.0:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - now
        if delay > 0:
            await asyncio.sleep(delay)


def backoff_delay(try_index: int, base_s: float, max_s: float, retry_after_s: float | None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``try_index`` (0-based): Retry-After when given, else full jitter."""
    if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0:
        return min(max_s, retry_after_s)
    cap = min(max_s, base_s * (2 ** try_index))
    return (rng or random).uniform(0.0, cap)


async def call_with_retries(client: ChatClient, request: ChatRequest, config: LLMConfig, limiter: RateLimiter,
                            on_failure: Callable[[int, LLMCallError], None]) -> ChatResponse:
    """Call until success or ``max_retries`` retries are spent; every failed try goes to ``on_failure``.

    Raises the last :class:`LLMCallError` when the request gives up.
    """
    last: LLMCallError | None = None
    for try_index in range(config.max_retries + 1):
        await limiter.acquire()
        try:
            return await client.complete(request)
        except LLMCallError as exc:
            last = exc
            on_failure(try_index, exc)
            if not exc.retryable or try_index == config.max_retries:
                break
            await asyncio.sleep(backoff_delay(try_index, config.backoff_base_s, config.backoff_max_s,
                                              exc.retry_after_s))
    assert last is not None
    raise last


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


class RequestCache:
    """Persistent request cache (SQLite, WAL). ``get``/``put`` by request hash; each ``put`` commits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, "
                         "created_unix REAL NOT NULL)")

    def get(self, key: str) -> ChatResponse | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return ChatResponse.from_json(row[0]) if row else None

    def put(self, key: str, response: ChatResponse) -> None:
        self._db.execute("INSERT OR REPLACE INTO responses (key, response, created_unix) VALUES (?, ?, ?)",
                         (key, response.to_json(), time.time()))

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()


# ------------------------------------------------------------------------------------------------
# output parsing and cost
# ------------------------------------------------------------------------------------------------

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "the assistant's reply to the user's question"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def response_format(mode: str) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "grok_answer", "schema": ANSWER_SCHEMA, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


class ParseError(ValueError):
    """The model's output could not be read as an answer."""


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(content: str, finish_reason: str | None) -> str:
    """The ``answer`` string of a model output, read defensively.

    Accepts a JSON object (optionally in a code fence, or embedded in text) with a non-empty
    string ``answer``; plain text that does not try to be JSON is taken as the answer itself.
    Raises :class:`ParseError` for truncated output (``finish_reason == "length"``), broken JSON,
    a missing or empty ``answer``.
    """
    if finish_reason == "length":
        raise ParseError("output truncated (finish_reason=length)")
    text = (content or "").strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    if not text:
        raise ParseError("empty output")
    if not text.startswith(("{", "[")) and "{" not in text[:200]:
        return text
    candidates = [text]
    i, j = text.find("{"), text.rfind("}")
    if 0 <= i < j:
        candidates.append(text[i:j + 1])
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            raise ParseError(f"expected a JSON object, got {type(obj).__name__}")
        ans = obj.get("answer")
        if not isinstance(ans, str) or not ans.strip():
            raise ParseError("JSON without a non-empty string 'answer'")
        return ans.strip()
    raise ParseError(f"malformed JSON output ({text[:60]!r}...)")


def cost_usd(prices: dict[str, dict[str, float]], model: str, prompt_tokens: int | None,
             completion_tokens: int | None) -> float | None:
    """Cost of one call from the price table; ``None`` when the model has no price or usage is unknown."""
    p = prices.get(model)
    if p is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * float(p.get("input_per_1m_usd", 0.0))
            + completion_tokens * float(p.get("output_per_1m_usd", 0.0))) / 1e6
