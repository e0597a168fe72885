"""Raw TCP servers for the fetch tests: a canary that counts every connection, and a hostile upstream.

Both speak just enough HTTP/1.1 by hand to misbehave in ways a real HTTP server library would not let
us: lying ``Content-Length``, resets mid-body, endless headers, bodies that never end.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from urllib.parse import parse_qs, urlsplit

from tests.conftest import png_bytes

PNG = png_bytes((64, 64))
BOMB_BYTES = 256 * 1024 * 1024
# gzip members concatenate: 256 copies of one compressed MiB of zeros inflate to 256 MiB, from about 260 KiB.
GZIP_BOMB = gzip.compress(bytes(1024 * 1024), compresslevel=9) * (BOMB_BYTES // (1024 * 1024))


def _read_request(conn: socket.socket) -> str | None:
    """The request target of the next request on the connection, or None once the client has gone."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk or len(data) > 65536:
            return None
        data += chunk
    return data.split(b" ", 2)[1].decode("latin-1")


class RawServer:
    """Accepts TCP connections on the given addresses (one port), one thread per connection.

    ``accepted`` counts every connection ever accepted, ``open`` those not yet closed by either side.
    ``respond(conn, target)`` answers one request and returns whether the connection may be reused.
    """

    def __init__(self, respond: Callable[[RawServer, socket.socket, str], bool],
                 hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.respond = respond
        self.accepted = 0
        self.open = 0
        self.targets: list[str] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listeners = self._listen(hosts)

    @staticmethod
    def _listen(hosts: tuple[str, ...]) -> list[socket.socket]:
        listeners: list[socket.socket] = []
        port = 0
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.settimeout(0.05)
            port = sock.getsockname()[1]
            listeners.append(sock)
        return listeners

    @property
    def port(self) -> int:
        return int(self._listeners[0].getsockname()[1])

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, target: str) -> str:
        return f"http://{self.netloc}{target}"

    def start(self) -> None:
        for listener in self._listeners:
            self._spawn(self._accept_loop, listener)

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            for conn in self._conns:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=10)
        for listener in self._listeners:
            listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self.accepted += 1
                self.open += 1
                self._conns.add(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            while (target := _read_request(conn)) is not None:
                self.targets.append(target)
                if not self.respond(self, conn, target):
                    break
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
                self.open -= 1
            conn.close()


@contextmanager
def running(server: RawServer) -> Iterator[RawServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _answer_png(server: RawServer, conn: socket.socket, target: str) -> bool:
    conn.sendall(_head(200, {"Content-Type": "image/png", "Content-Length": str(len(PNG))}) + PNG)
    return True


def canary() -> RawServer:
    """Listens on every local address, IPv4 and IPv6, on one port: any connection that reaches this
    machine on that port counts, whatever spelling of which local address the URL used."""
    return RawServer(_answer_png, hosts=("0.0.0.0", "::"))


def _head(status: int, headers: dict[str, str], version: str = "HTTP/1.1") -> bytes:
    lines = [f"{version} {status} X", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(conn: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


Query = dict[str, str]


def _send(conn: socket.socket, status: int, body: bytes = b"", **headers: str) -> bool:
    headers = {"Content-Type": "image/png", "Content-Length": str(len(body)), **headers}
    conn.sendall(_head(status, {name.replace("_", "-"): value for name, value in headers.items()}) + body)
    return True


def _typed(kind: str, body: bytes) -> Callable[[threading.Event, socket.socket, Query], bool]:
    return lambda stop, conn, query: _send(conn, 200, body, Content_Type=kind)


def _redirect(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
    return _send(conn, int(query.get("status", "302")), Location=query["to"])


def _drip(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
    conn.sendall(_head(200, {"Content-Type": "image/png", "Content-Length": "1000"}))
    while not stop.wait(float(query.get("every", "0.5"))):
        conn.sendall(b"x")
    return False


def _endless(head: bytes, chunk: bytes) -> Callable[[threading.Event, socket.socket, Query], bool]:
    def respond(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
        conn.sendall(head)
        while not stop.is_set():
            conn.sendall(chunk)
        return False

    return respond


def _declaring(length: int, then: Callable[[threading.Event, socket.socket], None] | None = None
               ) -> Callable[[threading.Event, socket.socket, Query], bool]:
    """Sends the PNG under a ``Content-Length`` that is not its length, then closes (or ``then``)."""
    def respond(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
        conn.sendall(_head(200, {"Content-Type": "image/png", "Content-Length": str(length)}) + PNG)
        if then is not None:
            then(stop, conn)
        return False

    return respond


def _reset_mid_body(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
    conn.sendall(_head(200, {"Content-Type": "image/png", "Content-Length": "100000"}) + PNG[:500])
    _reset(conn)
    return False


def _hold(stop: threading.Event, conn: socket.socket) -> None:
    """Keep the connection open, sending nothing, until the client closes it or the server stops."""
    conn.settimeout(0.05)
    while not stop.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue


def _silent(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
    _hold(stop, conn)
    return False


def _garbage(stop: threading.Event, conn: socket.socket, query: Query) -> bool:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    return False


_CHUNK = bytes(65536)
BEHAVIOURS: dict[str, Callable[[threading.Event, socket.socket, Query], bool]] = {
    "/image.png": _typed("image/png", PNG),
    "/html": _typed("text/html", b"<html><body>hello</body></html>"),
    "/svg": _typed("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    "/text-png": _typed("text/plain", PNG),
    "/redirect": _redirect,
    "/no-location": lambda stop, conn, query: _send(conn, 302),
    "/status": lambda stop, conn, query: _send(conn, int(query["code"]), b"oops"),
    "/drip": _drip,
    "/endless-chunked": _endless(_head(200, {"Transfer-Encoding": "chunked"}), b"10000\r\n" + _CHUNK + b"\r\n"),
    "/endless-until-close": _endless(_head(200, {"Content-Type": "image/png"}, version="HTTP/1.0"), _CHUNK),
    "/endless-headers": _endless(b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"a" * 1000 + b"\r\n"),
    "/continue-flood": _endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n"),
    "/length-short": _declaring(10),
    "/length-long": _declaring(len(PNG) + 1000),
    "/length-long-stall": _declaring(len(PNG) + 1000, _hold),
    "/length-huge": _declaring(10**12),
    "/gzip": lambda stop, conn, query: _send(conn, 200, GZIP_BOMB, Content_Encoding="gzip"),
    # Labelled brotli: nothing decodes it, so which compressor made the bytes does not matter.
    "/br": lambda stop, conn, query: _send(conn, 200, GZIP_BOMB, Content_Encoding="br"),
    "/reset": _reset_mid_body,
    "/silent": _silent,
    "/garbage": _garbage,
}


def _hostile(server: RawServer, conn: socket.socket, target: str) -> bool:
    parts = urlsplit(target)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    behaviour = BEHAVIOURS.get(parts.path)
    if behaviour is None:
        return _send(conn, 404, Content_Type="text/plain")
    return behaviour(server.stopping, conn, query)


def hostile_upstream() -> RawServer:
    """An upstream on 127.0.0.1 whose paths misbehave; tests allowlist it by ``netloc``."""
    return RawServer(_hostile)
