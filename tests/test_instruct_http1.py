"""The lean HTTP/1.1 transport of LLM mode (grok.instruct.http1) against a raw asyncio server."""

from __future__ import annotations

import asyncio

import openai
import pytest

from grok.instruct.http1 import Http1Transport, http_module

HTTP = http_module(openai)


class _RawServer:
    """Answers each request with the next canned response (bytes, or a callable that gets the writer)."""

    def __init__(self, responses):
        self.responses = list(responses)
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                          if ln.lower().startswith(b"content-length")), 0)
                self.requests.append(head + await reader.readexactly(n))
                out = self.responses.pop(0)
                if callable(out):
                    if await out(writer):
                        return
                    continue
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def _resp(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def _run(coro):
    return asyncio.run(coro)


def test_content_length_chunked_and_close_delimited_bodies_and_keep_alive():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")

    async def close_delimited(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        return True  # close the connection: that ends the body

    async def go():
        async with _RawServer([_resp(b'{"a": 1}'), chunked, b"HTTP/1.1 100 Continue\r\n\r\n" + _resp(b"after 100"),
                               close_delimited, _resp(b"new connection")]) as srv:
            async with HTTP.AsyncClient(transport=Http1Transport(openai)) as client:
                r1 = await client.post(srv.url + "/v1/x?q=1", json={"k": "v"})
                r2 = await client.get(srv.url + "/a")
                r3 = await client.get(srv.url + "/b")
                r4 = await client.get(srv.url + "/c")
                r5 = await client.get(srv.url + "/d")
            return srv, [r1, r2, r3, r4, r5]

    srv, (r1, r2, r3, r4, r5) = _run(go())
    assert r1.status_code == 200 and r1.json() == {"a": 1} and r1.headers["content-type"] == "application/json"
    assert srv.requests[0].startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n") and srv.requests[0].endswith(b'{"k":"v"}')
    assert r2.content == b"hello, world" and r3.content == b"after 100" and r4.content == b"until the end"
    assert r5.content == b"new connection"
    assert srv.connections == 2  # kept alive for four responses; a new connection after "Connection: close"


def test_a_server_that_closed_an_idle_connection_gets_a_new_one():
    async def answer_then_close(writer):
        writer.write(_resp(b"first"))
        await writer.drain()
        return True

    async def go():
        async with _RawServer([answer_then_close, _resp(b"second")]) as srv:
            async with HTTP.AsyncClient(transport=Http1Transport(openai)) as client:
                r1 = await client.get(srv.url + "/")
                await asyncio.sleep(0.05)  # the close reaches the client
                r2 = await client.get(srv.url + "/")
            return srv, r1, r2

    srv, r1, r2 = _run(go())
    assert (r1.content, r2.content, srv.connections) == (b"first", b"second", 2)


def test_failures_are_the_http_librarys_exceptions():
    async def hang(writer):
        await asyncio.sleep(1.0)
        return True

    async def drop(writer):
        return True  # close without answering

    async def go():
        async with _RawServer([hang, drop]) as srv, \
                HTTP.AsyncClient(transport=Http1Transport(openai), timeout=0.2) as client:
            with pytest.raises(HTTP.ReadTimeout):
                await client.get(srv.url + "/slow")
            with pytest.raises(HTTP.RemoteProtocolError):
                await client.get(srv.url + "/drop")
            with pytest.raises(HTTP.ConnectError):
                await client.get("http://127.0.0.1:1/closed-port")

    _run(go())


def test_non_http_urls_go_to_the_fallback_transport():
    seen = []

    async def handler(request):
        seen.append(str(request.url))
        return HTTP.Response(200, content=b"fallback")

    async def go():
        async with HTTP.AsyncClient(transport=Http1Transport(openai, fallback=HTTP.MockTransport(handler))) as client:
            return await client.get("https://example.invalid/v1/models")

    r = _run(go())
    assert r.content == b"fallback" and seen == ["https://example.invalid/v1/models"]
