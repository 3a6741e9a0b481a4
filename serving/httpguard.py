"""Bounds on what a client can make a worker hold before the app sees a request.

BentoML starts uvicorn itself and passes none of its limits through, and uvicorn's httptools
parser has none of its own: a request head can grow without bound (the parser buffers a
header until it ends), a connection that never sends, or sends a byte every few seconds
(slowloris), is kept forever, and so is a body that trickles. This protocol is uvicorn's,
with the three bounds every hardened front server has (nginx: `large_client_header_buffers`,
`client_header_timeout`, `client_body_timeout`; Node: `maxHeaderSize`, `headersTimeout`,
`requestTimeout`):

- the request line and headers at most `max_head_bytes` (431, then close);
- the head complete within `head_timeout_s` of the connection opening or of the previous
  answer (408, then close; an idle kept-alive connection is closed silently, as before);
- the body complete within `body_timeout_s` of its head (408, then close).

And at shutdown a connection whose request has begun to arrive is left to finish, where
uvicorn would close it with the request unanswered.

`install()` registers it as uvicorn's "auto" HTTP implementation (what BentoML asks for) in
the worker process, before the server starts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class Limits:
    """The bounds; their defaults and checks live in serving/config.py (ServingEnv)."""

    max_head_bytes: int
    head_timeout_s: float
    body_timeout_s: float


LINGER_S = 2.0


def _answer(status: int, reason: bytes, detail: bytes) -> bytes:
    body = b'{"detail":"%s"}' % detail
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))  # fmt: skip


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: Limits  # set by install()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._heads = 0  # heads completed on this connection
        self._in_head = True  # waiting for (the rest of) a request line and headers
        self._begun = False  # bytes of the current request have arrived
        # one deadline at a time, checked by a sweep every SWEEP_S: a timer per request
        # (call_later + cancel) costs more than the rest of this class on a single-row call
        self._deadline: float | None = None
        self._expire = self._head_timeout
        self._lingering = False
        self._arm(self.limits.head_timeout_s, self._head_timeout)
        _sweeper(self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered and closing: what the client still sends is read and dropped
        heads, in_head = self._heads, self._in_head
        super().data_received(data)
        if in_head and self._heads == heads and not self.transport.is_closing():
            self._head_bytes += len(data)  # the whole chunk was head: no head ended in it
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, b"Request Header Fields Too Large",
                             b"request line and headers over %d bytes" % self.limits.max_head_bytes)  # fmt: skip

    def on_message_begin(self) -> None:
        self._begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._deadline = None
        self._begun, self._in_head = False, True  # what arrives next is a new head
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._in_head:
            # uvicorn's keep-alive timer closes an idle connection; this one bounds a
            # request that starts and then dribbles
            self._arm(self.limits.head_timeout_s, self._head_timeout)

    def shutdown(self) -> None:
        if self._begun and (self.cycle is None or self.cycle.response_complete):
            return  # a request is arriving: answer it (with Connection: close) first
        super().shutdown()

    def _arm(self, seconds: float, expire) -> None:
        self._deadline, self._expire = self.loop.time() + seconds, expire

    def _head_timeout(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a (pipelined) request is being answered: not idle
        if self._begun:
            self._refuse(408, b"Request Timeout",
                         b"request head not complete within %g s" % self.limits.head_timeout_s)  # fmt: skip
        elif not self.transport.is_closing():
            self.transport.close()  # nothing sent: an idle connection

    def _body_timeout(self) -> None:
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # answered early (413, 401): stop waiting for the rest
            return
        self._refuse(408, b"Request Timeout",
                     b"request body not complete within %g s" % self.limits.body_timeout_s)  # fmt: skip

    def _refuse(self, status: int, reason: bytes, detail: bytes) -> None:
        self._deadline = None
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app, if running, writes nothing more
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            # a lingering close, as nginx does: send the answer and FIN, then read and drop
            # what the client is still sending for a moment; closing with unread data would
            # reset the connection and the client could lose the answer
            self.transport.write(_answer(status, reason, detail))
            self.transport.write_eof()
            self._lingering = True
            self.loop.call_later(LINGER_S, self.transport.close)


SWEEP_S = 0.5
_sweeping: set[int] = set()  # ids of the event loops with a sweep running


def _sweeper(loop: asyncio.AbstractEventLoop, connections: set) -> None:
    """Once per event loop: every SWEEP_S, expire the connections past their deadline."""
    if id(loop) in _sweeping:
        return
    _sweeping.add(id(loop))

    def sweep() -> None:
        now = loop.time()
        for conn in list(connections):
            deadline = getattr(conn, "_deadline", None)
            if deadline is not None and now >= deadline:
                conn._deadline = None
                conn._expire()
        loop.call_later(SWEEP_S, sweep)

    loop.call_later(SWEEP_S, sweep)


def install(limits: Limits) -> None:
    """Make uvicorn's "auto" HTTP protocol (BentoML's choice) this one, in this process."""
    from uvicorn import config

    GuardedHttpToolsProtocol.limits = limits
    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHttpToolsProtocol"
