"""media/fetch.py against real HTTP servers on loopback that count every connection they accept.

A refused URL must be refused before any connection: the canary server must see none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from qwen_image_server.errors import InputDownloadFailed, InvalidURL
from qwen_image_server.media.fetch import USER_AGENT, Resolver, is_public_address, resolve_host
from qwen_image_server.settings import Settings
from tests.conftest import fetch_each

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # only the bytes travel; nothing decodes them here
MAX_BYTES = 4096


class ImageServer(ThreadingHTTPServer):
    """Serves PNG bytes, redirects, errors, oversized and slow bodies; records what reaches it."""

    daemon_threads = False  # server_close() then joins every handler thread

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.requests: list[dict[str, str]] = []
        self.stopping = threading.Event()

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "/image.png") -> str:
        return f"http://{self.netloc}{path}"

    def verify_request(self, request: object, client_address: object) -> bool:
        self.connections += 1
        return True


class Handler(BaseHTTPRequestHandler):
    server: ImageServer

    def do_GET(self) -> None:
        self.server.requests.append(dict(self.headers))
        path = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(path.query).items()}
        if path.path == "/image.png":
            self.reply(200, PNG, ("Set-Cookie", "session=secret; Path=/"))
        elif path.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.path == "/error":
            self.reply(500, b"broken")
        elif path.path == "/big":
            self.reply(200, bytes(MAX_BYTES + 1))
        elif path.path == "/big-unannounced":
            self.send_response(200)
            self.end_headers()  # HTTP/1.0 without Content-Length: the body runs until the connection closes
            self.wfile.write(bytes(4 * MAX_BYTES))
        elif path.path == "/drip":
            self.drip()

    def reply(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def drip(self) -> None:
        """One byte every 50 ms: each read is quick, only a bound on the whole fetch can stop it."""
        self.send_response(200)
        self.send_header("Content-Length", str(MAX_BYTES))
        self.end_headers()
        try:
            while not self.server.stopping.wait(0.05):
                self.wfile.write(b"x")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on what the server records instead."""


def serve() -> Iterator[ImageServer]:
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def host() -> Iterator[ImageServer]:
    yield from serve()


@pytest.fixture
def other() -> Iterator[ImageServer]:
    yield from serve()


def fetch(settings: Settings, url: str, resolver: Resolver = resolve_host) -> bytes:
    (body,) = fetch_each(settings, [url], resolver)
    return body


def settings_for(tmp_path: Path, *, allowed: Sequence[str] = (), ports: Sequence[int] = (), **options: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        fetch_allowed_hosts=list(allowed),
        fetch_allowed_ports=[80, 443, *ports],
        max_image_bytes=MAX_BYTES,
        **options,
    )


def test_allowlisted_loopback_host_is_fetched(tmp_path: Path, host: ImageServer) -> None:
    assert fetch(settings_for(tmp_path, allowed=[host.netloc]), host.url()) == PNG
    (headers,) = host.requests
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Accept-Encoding"] == "identity"


def test_cookies_set_by_one_fetch_are_not_sent_by_the_next(tmp_path: Path, host: ImageServer) -> None:
    assert fetch_each(settings_for(tmp_path, allowed=[host.netloc]), [host.url(), host.url()]) == [PNG, PNG]
    assert [headers.get("Cookie") for headers in host.requests] == [None, None]


def test_host_only_allowlist_entry_needs_an_allowed_port(tmp_path: Path, host: ImageServer) -> None:
    assert fetch(settings_for(tmp_path, allowed=["127.0.0.1"], ports=[host.port]), host.url()) == PNG
    with pytest.raises(InvalidURL, match=f"Port {host.port}"):
        fetch(settings_for(tmp_path, allowed=["127.0.0.1"]), host.url())


def test_loopback_without_the_allowlist_is_refused_before_connecting(tmp_path: Path, host: ImageServer) -> None:
    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch(settings_for(tmp_path, ports=[host.port]), host.url())
    with pytest.raises(InvalidURL, match=f"Port {host.port} is not allowed"):
        fetch(settings_for(tmp_path), host.url())
    assert host.connections == 0


@pytest.mark.parametrize(
    "spelling",
    ["2130706433", "127.1", "0x7f.1", "017700000001", "0", "[::ffff:127.0.0.1]", "[::1]", "localhost"],
)
def test_numeric_and_ipv6_spellings_of_loopback_are_refused(tmp_path: Path, host: ImageServer, spelling: str) -> None:
    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch(settings_for(tmp_path, ports=[host.port]), f"http://{spelling}:{host.port}/image.png")
    assert host.connections == 0


def test_a_name_resolving_to_loopback_is_refused_before_connecting(tmp_path: Path, host: ImageServer) -> None:
    def rebinding(name: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch(settings_for(tmp_path, ports=[host.port]), f"http://images.example.com:{host.port}/image.png", rebinding)
    assert host.connections == 0


def test_any_private_address_among_several_refuses_the_host(tmp_path: Path, host: ImageServer) -> None:
    def mixed(name: str, port: int) -> list[str]:
        return ["93.184.215.14", "127.0.0.1"]

    with pytest.raises(InvalidURL):
        fetch(settings_for(tmp_path, ports=[host.port]), f"http://images.example.com:{host.port}/image.png", mixed)
    assert host.connections == 0


def test_the_checked_address_is_dialled_and_the_hostname_kept(tmp_path: Path, host: ImageServer) -> None:
    def to_loopback(name: str, port: int) -> list[str]:
        assert name == "images.example.com"
        return ["127.0.0.1"]

    settings = settings_for(tmp_path, allowed=[f"images.example.com:{host.port}"])
    url = f"http://images.example.com:{host.port}/image.png"
    assert fetch(settings, url, to_loopback) == PNG
    assert host.requests[0]["Host"] == f"images.example.com:{host.port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://10.0.0.1/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::1]/",
        "http://127.0.0.1#@images.example.com/",
        "http://127.0.0.1?@images.example.com/",
    ],
)
def test_metadata_and_private_addresses_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch(settings_for(tmp_path), url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "Only http and https"),
        ("ftp://example.com/image.png", "Only http and https"),
        ("gopher://example.com/", "Only http and https"),
        ("http://user:secret@example.com/image.png", "credentials"),
        ("http://example.com@127.0.0.1/image.png", "credentials"),
        ("http://example.com:22/image.png", "Port 22"),
        ("https://example.com:8443/image.png", "Port 8443"),
        ("http:///image.png", "no host"),
        ("http://[zz]/image.png", "Invalid URL"),
        ("http://exa\x00mple.com/", "Invalid URL"),
    ],
)
def test_refused_url_forms(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        fetch(settings_for(tmp_path), url)


def test_redirects_are_followed_between_allowed_hosts(tmp_path: Path, host: ImageServer) -> None:
    settings = settings_for(tmp_path, allowed=[host.netloc])
    assert fetch(settings, host.url("/redirect?to=/image.png")) == PNG
    assert len(host.requests) == 2


def test_redirect_to_a_loopback_port_not_allowlisted_is_refused(
    tmp_path: Path, host: ImageServer, other: ImageServer
) -> None:
    redirect = host.url(f"/redirect?to={other.url()}")
    with pytest.raises(InvalidURL, match=f"Port {other.port}"):
        fetch(settings_for(tmp_path, allowed=[host.netloc]), redirect)
    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch(settings_for(tmp_path, allowed=[host.netloc], ports=[other.port]), redirect)
    assert other.connections == 0


def test_redirect_to_a_file_url_is_refused(tmp_path: Path, host: ImageServer) -> None:
    with pytest.raises(InvalidURL, match="Only http and https"):
        fetch(settings_for(tmp_path, allowed=[host.netloc]), host.url("/redirect?to=file:///etc/passwd"))


def test_redirect_chain_is_bounded(tmp_path: Path, host: ImageServer) -> None:
    hop = "/image.png"
    for _ in range(3):
        hop = "/redirect?to=" + quote(hop, safe="")
    assert fetch(settings_for(tmp_path, allowed=[host.netloc], fetch_max_redirects=3), host.url(hop)) == PNG
    with pytest.raises(InputDownloadFailed, match="more than 2 redirects"):
        fetch(settings_for(tmp_path, allowed=[host.netloc], fetch_max_redirects=2), host.url(hop))


def test_upstream_error_status_fails_the_download(tmp_path: Path, host: ImageServer) -> None:
    with pytest.raises(InputDownloadFailed, match="HTTP 500"):
        fetch(settings_for(tmp_path, allowed=[host.netloc]), host.url("/error"))


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_oversized_body_fails_the_download(tmp_path: Path, host: ImageServer, path: str) -> None:
    with pytest.raises(InputDownloadFailed, match=f"exceeds {MAX_BYTES} bytes"):
        fetch(settings_for(tmp_path, allowed=[host.netloc]), host.url(path))


def test_slow_drip_is_cut_by_the_total_timeout(tmp_path: Path, host: ImageServer) -> None:
    settings = settings_for(tmp_path, allowed=[host.netloc], fetch_total_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(InputDownloadFailed, match="timed out"):
        fetch(settings, host.url("/drip"))
    assert time.monotonic() - started < 3


def test_slow_name_resolution_is_cut_by_the_total_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    def stuck(name: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.215.14"]

    started = time.monotonic()
    try:
        with pytest.raises(InputDownloadFailed, match="timed out"):
            fetch(settings_for(tmp_path, fetch_total_timeout=0.3), "http://images.example.com/image.png", stuck)
    finally:
        release.set()
    assert time.monotonic() - started < 3


def test_connection_refused_fails_the_download(tmp_path: Path) -> None:
    closed = ImageServer()
    netloc = closed.netloc
    closed.server_close()
    with pytest.raises(InputDownloadFailed, match="could not connect"):
        fetch(settings_for(tmp_path, allowed=[netloc]), f"http://{netloc}/image.png")


def test_host_the_system_resolver_cannot_encode_fails_the_download(tmp_path: Path) -> None:
    with pytest.raises(InputDownloadFailed, match="could not connect"):
        fetch(settings_for(tmp_path), f"http://{'a' * 64}.example.com/image.png")


def test_unresolvable_host_fails_the_download(tmp_path: Path) -> None:
    def nowhere(name: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(InputDownloadFailed, match="could not connect"):
        fetch(settings_for(tmp_path), "http://images.example.com/image.png", nowhere)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("64:ff9b::5db8:d70e", True),  # NAT64 of a public IPv4 address
        ("::ffff:93.184.215.14", True),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("10.1.2.3", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("::7f00:1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::7f00:1", False),
        ("2002:7f00:1::1", False),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
        ("fc00::1", False),
        ("fd00:ec2::254", False),
        ("fe80::1", False),
        ("fec0::1", False),
        ("ff0e::1", False),
    ],
)
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(ip_address(address)) is public


def test_the_start_up_check_passes_with_the_guard_and_fails_if_httpx_routes_around_it(tmp_path: Path) -> None:
    import asyncio

    import httpx

    from qwen_image_server.media.fetch import ImageFetcher

    async def check(bypass: bool) -> None:
        fetcher = ImageFetcher(Settings(data_dir=tmp_path))
        try:
            if bypass:  # what an httpx release that stopped using the transport's pool would amount to
                fetcher._client._transport = httpx.AsyncHTTPTransport(trust_env=False)
            await fetcher.check_guard()
        finally:
            await fetcher.aclose()

    asyncio.run(check(bypass=False))
    with pytest.raises(RuntimeError, match="SSRF guard is not in httpx's path"):
        asyncio.run(check(bypass=True))
