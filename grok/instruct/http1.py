"""A lean HTTP/1.1 keep-alive transport for the openai client, for plain-http servers (a local vLLM).

Run as: python -c "from grok.instruct.http1 import Http1Transport; print(Http1Transport)"

The openai SDK sends every request through an ``httpx``-style client (``httpx2`` in the installed
SDK). Its default transport (httpcore + h11 + anyio) spends about half of the client's CPU per
chat completion on connection-pool bookkeeping and header validation, which caps LLM mode at a
few hundred requests per second per core. :class:`Http1Transport` is a drop-in transport for that
client: the SDK still builds the request (URL, auth, headers, JSON body), maps status codes to
its error types and applies its timeouts; this transport only writes the request bytes on a
pooled asyncio connection and reads the response (Content-Length, chunked or close-delimited
body). It serves ``http://`` URLs only; anything else (``https://``, a proxy set in the
environment) goes through the SDK's standard transport. Failures surface as the HTTP library's
own exceptions (``ConnectError``, ``ReadError``, ``ReadTimeout``, ``RemoteProtocolError``...), so the
SDK reports them exactly as it reports those of its default transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

#: Largest response head (status line + headers) accepted, in bytes.
MAX_HEAD_BYTES = 64 * 1024


def http_module(openai_module: Any):
    """The HTTP library the given openai SDK is built on (``httpx2``, or ``httpx`` for older SDKs)."""
    limits_cls = type(openai_module._constants.DEFAULT_CONNECTION_LIMITS)
    return importlib.import_module(limits_cls.__module__.split(".")[0])


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def reusable(self) -> bool:
        # the peer closed an idle connection (EOF seen) or we did: open a new one instead
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection may already be gone
            self.writer.close()


def make_transport_class(http: Any) -> type:
    """:class:`Http1Transport` for the HTTP library ``http`` (see :func:`http_module`)."""

    class Http1Transport(http.AsyncBaseTransport):
        """Keep-alive HTTP/1.1 over asyncio streams; ``fallback`` serves every non-``http`` URL."""

        def __init__(self, max_idle_per_host: int = 256, fallback: Any = None):
            self._idle: dict[tuple[str, int], list[_Conn]] = {}
            self._max_idle = max_idle_per_host
            self._fallback = fallback if fallback is not None else http.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            url = request.url
            if url.scheme != "http":
                return await self._fallback.handle_async_request(request)
            timeouts = request.extensions.get("timeout") or {}
            key = (url.host, url.port or 80)
            body = await request.aread()
            target = url.raw_path or b"/"
            head = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
            for name, value in request.headers.raw:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"\r\n")
            data = b"".join(head) + body
            conn = await self._acquire(key, timeouts.get("connect"), request)
            try:
                conn.writer.write(data)
                await _within(conn.writer.drain(), timeouts.get("write"), http.WriteTimeout, request)
                status, reason, headers, content, keep = await self._read_response(conn.reader, request, timeouts)
            except BaseException:
                conn.close()  # a half-read response leaves the connection unusable (timeouts, cancellation)
                raise
            if keep:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self._max_idle:
                    idle.append(conn)
                else:
                    conn.close()
            else:
                conn.close()
            return http.Response(status, headers=headers, stream=http.ByteStream(content),
                                 extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

        async def _acquire(self, key: tuple[str, int], connect_timeout: float | None, request: Any) -> _Conn:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.reusable():
                    return conn
                conn.close()
            try:
                reader, writer = await _within(asyncio.open_connection(key[0], key[1], limit=MAX_HEAD_BYTES),
                                               connect_timeout, http.ConnectTimeout, request)
            except OSError as exc:
                raise http.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}", request=request) from exc
            return _Conn(reader, writer)

        async def _read_response(self, reader: asyncio.StreamReader, request: Any, timeouts: dict):
            read_t = timeouts.get("read")
            while True:
                try:
                    raw = await _within(reader.readuntil(b"\r\n\r\n"), read_t, http.ReadTimeout, request)
                except asyncio.IncompleteReadError as exc:
                    raise http.RemoteProtocolError("server disconnected without sending a response",
                                                   request=request) from exc
                except asyncio.LimitOverrunError as exc:
                    raise http.RemoteProtocolError("response head too large", request=request) from exc
                except OSError as exc:
                    raise http.ReadError(str(exc), request=request) from exc
                lines = raw[:-4].split(b"\r\n")
                parts = lines[0].split(b" ", 2)
                try:
                    version, status = parts[0], int(parts[1])
                except (IndexError, ValueError) as exc:
                    raise http.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request) from exc
                if 100 <= status < 200 and status != 101:
                    continue  # informational response: the real one follows
                break
            reason = parts[2] if len(parts) > 2 else b""
            headers = []
            length = None
            chunked = close = False
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise http.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
                name, value = name.strip(), value.strip()
                headers.append((name, value))
                low = name.lower()
                if low == b"content-length":
                    try:
                        length = int(value)
                    except ValueError as exc:
                        raise http.RemoteProtocolError(f"bad Content-Length {value!r}", request=request) from exc
                elif low == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif low == b"connection":
                    close = b"close" in value.lower()
            keep = not close and version == b"HTTP/1.1"
            try:
                if request.method == "HEAD" or status in (204, 304):
                    content = b""
                elif chunked:
                    content = await _within(_read_chunked(reader), read_t, http.ReadTimeout, request)
                elif length is not None:
                    content = await _within(reader.readexactly(length), read_t, http.ReadTimeout, request)
                else:
                    content = await _within(reader.read(), read_t, http.ReadTimeout, request)
                    keep = False
            except asyncio.IncompleteReadError as exc:
                raise http.RemoteProtocolError("connection closed before the response body ended",
                                               request=request) from exc
            except (OSError, ValueError) as exc:
                raise http.ReadError(str(exc), request=request) from exc
            return status, reason, headers, content, keep

        async def aclose(self) -> None:
            for conns in self._idle.values():
                for c in conns:
                    c.close()
            self._idle.clear()
            await self._fallback.aclose()

    Http1Transport.__module__ = __name__
    return Http1Transport


async def _within(awaitable, timeout_s: float | None, exc_type: type, request: Any):
    """``await awaitable`` with a time limit; an expiry raises ``exc_type`` (the HTTP library's)."""
    if timeout_s is None:
        return await awaitable
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError as exc:
        raise exc_type(f"no progress within {timeout_s:g} s", request=request) from exc


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the final blank line
                pass
            return b"".join(out)
        out.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")


_CLASSES: dict[str, type] = {}


def Http1Transport(openai_module: Any = None, **kwargs: Any):
    """An :class:`Http1Transport` for the HTTP library of the installed openai SDK."""
    if openai_module is None:
        import openai as openai_module
    http = http_module(openai_module)
    cls = _CLASSES.get(http.__name__)
    if cls is None:
        cls = _CLASSES[http.__name__] = make_transport_class(http)
    return cls(**kwargs)
