"""Client limits below the app, where uvicorn sets none (nginx's client_header_timeout, keepalive_requests and
connection limits are the model):

- A request's headers must be complete within ``header_timeout_seconds`` of the connection opening or of the
  previous response. uvicorn's own keep-alive timer is cancelled by any byte, even of an unfinished request,
  so on its own a client dripping one byte every few seconds keeps a connection forever.
- At most ``max_connections`` connections overall (kept below the process's descriptor limit) and
  ``max_connections_per_client`` per client address. At a cap, the oldest connection that is only waiting
  for a request is closed to make room: a flood of idle or half-sent connections can never shut out a real
  request. Only when every connection is busy with a request does a new one get a 503.
- At most ``max_requests_per_connection`` requests on one keep-alive connection.
- Closing after an answer is a lingering close, as nginx's: the write side is shut first and what the
  client still sends is read and dropped for up to ``LINGER_SECONDS``. Closing a socket with unread bytes
  in it makes the kernel send a reset, which can destroy an answer (a 401 or 413 sent before the body was
  read) before the client has read it.

Bodies have their own deadline, in ``api/frontdoor.py``, where reading them starts.
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from qwen_image_server.settings import Settings

DESCRIPTOR_HEADROOM = 128  # kept free for the database, model files, fetches and the log
LINGER_SECONDS = 2.0
MAX_BACKLOG = 2048  # uvicorn's default
_BUSY_BODY = json.dumps({"request_id": "", "code": "Throttling",
                         "message": "Too many connections are busy; retry shortly."}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
         b"connection: close\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_seconds: float
    max_connections: int
    max_connections_per_client: int
    max_requests_per_connection: int
    backlog: int = MAX_BACKLOG

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The caps, kept within the process's descriptor limit. asyncio accepts up to ``backlog`` sockets in one
        go before any of them can make room, and pauses accepting for a second when descriptors run out; so the
        backlog is scaled to the limit, and the open connections stay below it by the backlog and a headroom."""
        soft_limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        ceiling, backlog = settings.max_connections, MAX_BACKLOG
        if soft_limit != resource.RLIM_INFINITY:
            backlog = min(MAX_BACKLOG, max(16, (soft_limit - DESCRIPTOR_HEADROOM) // 4))
            ceiling = min(ceiling, max(1, soft_limit - DESCRIPTOR_HEADROOM - backlog))
        return cls(settings.header_timeout_seconds, ceiling, settings.max_connections_per_client,
                   settings.max_requests_per_connection, backlog)


class LingeringTransport:
    """The connection's transport, whose ``close`` lingers (see the module's docstring); the rest is the
    transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self.transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.lingering = True
        self.transport.write_eof()  # after what is buffered: the answer goes out whole, then our FIN
        self.transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def abort(self) -> None:
        self.transport.abort()


class ConnectionTable:
    """The open connections, oldest first, overall and by client address."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: dict[GuardedH11Protocol, None] = {}
        self.by_client: dict[str, dict[GuardedH11Protocol, None]] = {}

    def admit(self, connection: GuardedH11Protocol) -> bool:
        """Makes room for ``connection`` if a cap is reached; False when nothing can give way."""
        same_client = self.by_client.get(connection.client_host, {})
        for group, cap in ((same_client, self.limits.max_connections_per_client),
                           (self.open, self.limits.max_connections)):
            if len(group) >= cap:
                victim = next((other for other in group if other.waiting), None)
                if victim is None:
                    return False
                self.remove(victim)
                victim.close_quietly()
        self.open[connection] = None
        self.by_client.setdefault(connection.client_host, {})[connection] = None
        return True

    def remove(self, connection: GuardedH11Protocol) -> None:
        self.open.pop(connection, None)
        group = self.by_client.get(connection.client_host)
        if group is not None:
            group.pop(connection, None)
            if not group:
                del self.by_client[connection.client_host]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol under ``ConnectionLimits``; ``table`` is set per server by ``guarded_protocol``."""

    table: ClassVar[ConnectionTable]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self.loop))  # type: ignore[arg-type]
        self.client_host = self.client[0] if self.client else ""
        self.requests_seen = 0
        self.seen_cycle: RequestResponseCycle | None = None
        self.header_timer: asyncio.TimerHandle | None = None
        if not self.table.admit(self):
            self.transport.write(_BUSY)
            self.transport.close()
            return
        self.await_request()

    @property
    def waiting(self) -> bool:
        """Between requests, or still receiving a request's headers: nothing is lost by closing it."""
        return self.cycle is None or self.cycle.response_complete

    def await_request(self) -> None:
        self.cancel_header_timer()
        self.header_timer = self.loop.call_later(self.table.limits.header_timeout_seconds, self.close_quietly)

    def cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def notice_request(self) -> bool:
        """True once a new request's headers have arrived (uvicorn then made a new cycle)."""
        if self.cycle is None or self.cycle is self.seen_cycle:
            return False
        self.seen_cycle = self.cycle
        self.cancel_header_timer()
        self.requests_seen += 1
        if self.requests_seen >= self.table.limits.max_requests_per_connection:
            # uvicorn answers a request that says "Connection: close" with the same header, then closes.
            self.headers.append(CLOSE_HEADER)  # the list the request's scope holds
            self.cycle.keep_alive = False
        return True

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # lingering: what the client still sends is dropped
        super().data_received(data)
        self.notice_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        if not self.notice_request() and not self.transport.is_closing():
            self.await_request()

    def close_quietly(self, *_args: Any) -> None:
        """Closes a connection that is owed no answer (idle, or still sending headers): at once."""
        self.cancel_header_timer()
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_header_timer()
        self.table.remove(self)
        super().connection_lost(exc)


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class with its own connection table, for one server."""
    return type("ServerH11Protocol", (GuardedH11Protocol,), {"table": ConnectionTable(limits)})


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for our app: the guarded HTTP/1.1 protocol, no WebSockets, our keep-alive."""
    limits = ConnectionLimits.from_settings(settings)
    return uvicorn.Config(app, host=settings.host, port=settings.port, http=guarded_protocol(limits), ws="none",
                          timeout_keep_alive=settings.keep_alive_seconds, backlog=limits.backlog, **options)
