"""Downloading input images from untrusted URLs without opening a door into our own network (SSRF).

The rules are security.md's "Fetching image URLs". The one that matters most: the address is checked
where the socket is opened. Our network backend resolves the host itself, refuses any address that is
not globally routable, and connects to exactly the address it checked, so neither a DNS answer that
changes between check and use nor a redirect can reach a private address. The URL keeps its hostname,
so the ``Host`` header, TLS SNI and the certificate check are those of the original host.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpcore
import httpx

from qwen_image_server.errors import InputDownloadFailed, InvalidURL

if TYPE_CHECKING:
    from qwen_image_server.settings import Settings

USER_AGENT = "qwen-image-server/0.1 (image fetch)"
GUARD_PROBE_URL = "http://0.0.0.0:9/"  # never allowed: "this host", on the discard port

Resolver = Callable[[str, int], Sequence[str]]
"""Maps a host and port to IP address strings; called in a worker thread."""

IPAddress = IPv4Address | IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Denied whatever Python's flags say: those flags have changed between versions (security.md).
_DENIED_NETWORKS = tuple(
    ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches local listeners
        "100.64.0.0/10",  # carrier-grade NAT
        "169.254.0.0/16",  # link-local, with the 169.254.169.254 cloud metadata service
        "fec0::/10",  # deprecated site-local
        "fd00:ec2::254/128",  # AWS metadata service over IPv6
    )
)
_NAT64 = ip_network("64:ff9b::/96")


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives, numeric spellings such as ``127.1`` included."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def is_public_address(address: IPAddress) -> bool:
    """True only for a globally routable unicast address, judged by the IPv4 address it wraps, if any.

    Python's flags are not a policy: multicast passes ``is_global``, and an IPv4-mapped, NAT64 or 6to4
    address reports the wrapper's flags rather than those of the IPv4 host it leads to.
    """
    if isinstance(address, IPv6Address):
        translated = _translated_ipv4(address)
        if translated is not None:
            return is_public_address(translated)
        tunnelled = _tunnelled_ipv4(address)
        if tunnelled is not None and not is_public_address(tunnelled):
            return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not any(address in network for network in _DENIED_NETWORKS)
    )


def _translated_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 destination of an IPv4-mapped or NAT64 address: the outer address is only a spelling."""
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.ipv4_mapped


def _tunnelled_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 endpoint inside a Teredo or 6to4 address."""
    if address.teredo is not None:
        return address.teredo[1]
    return address.sixtofour


def _normalize_host(host: str) -> str:
    """One spelling per host, so that allowlist entries and URLs compare equal."""
    host = host.lower().rstrip(".")
    try:
        return str(ip_address(host))
    except ValueError:
        return host


def _parse_allowed(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IP literal, as ``(host, port or None)``.

    Hostnames are compared in their ASCII (punycode) form, as they travel on the wire.
    """
    with contextlib.suppress(ValueError):
        return str(ip_address(entry)), None
    parts = urlsplit(f"//{entry}")
    return _normalize_host(parts.hostname or ""), parts.port


@dataclass(frozen=True)
class _Destinations:
    """Which ports may be fetched, and which hosts the operator trusts without the address check."""

    ports: frozenset[int]
    trusted: frozenset[tuple[str, int | None]]

    @classmethod
    def from_settings(cls, settings: Settings) -> _Destinations:
        return cls(
            ports=frozenset(settings.fetch_allowed_ports),
            trusted=frozenset(_parse_allowed(entry) for entry in settings.fetch_allowed_hosts),
        )

    def allows_port(self, host: str, port: int) -> bool:
        return port in self.ports or (_normalize_host(host), port) in self.trusted

    def trusts(self, host: str, port: int) -> bool:
        host = _normalize_host(host)
        return (host, port) in self.trusted or (host, None) in self.trusted


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, refuses non-public addresses, then connects to the very address it checked."""

    def __init__(self, destinations: _Destinations, resolver: Resolver) -> None:
        self._destinations = destinations
        self._resolver = resolver
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        if not self._destinations.trusts(host, port) and not all(map(is_public_address, addresses)):
            raise InvalidURL("The image URL points to an address that is not allowed.")
        for address in addresses[:-1]:
            with contextlib.suppress(httpcore.ConnectError):
                return await self._backend.connect_tcp(str(address), port, timeout, local_address, socket_options)
        return await self._backend.connect_tcp(str(addresses[-1]), port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        try:
            with anyio.fail_after(timeout):
                found = await anyio.to_thread.run_sync(self._resolver, host, port, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("name resolution timed out") from exc
        except (OSError, UnicodeError) as exc:  # the idna codec refuses labels over 63 characters
            raise httpcore.ConnectError("name resolution failed") from exc
        if not found:
            raise httpcore.ConnectError("the host has no address")
        return [ip_address(text) for text in found]


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on our backend; no proxy, as a proxy would connect where we did not check.

    httpx takes no network backend, so this replaces its private ``_pool``: a future httpx that stopped
    using it would route around the check. ``ImageFetcher.check_guard`` proves at start-up that it does not.
    """

    def __init__(self, backend: _CheckedBackend) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend, so its pool is rebuilt on ours, with httpx's default limits.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


class ImageFetcher:
    """Fetches input images by URL, bounded in time, size and redirects, refusing private addresses.

    One instance is shared by the server (it holds a connection pool) and closed with ``aclose``.
    ``resolver`` exists so tests can make a public-looking name resolve to a private address.
    """

    def __init__(self, settings: Settings, *, resolver: Resolver = resolve_host) -> None:
        self._destinations = _Destinations.from_settings(settings)
        self._max_bytes = settings.max_image_bytes
        self._max_redirects = settings.fetch_max_redirects
        self._total_timeout = settings.fetch_total_timeout
        self._client = httpx.AsyncClient(
            transport=_CheckedTransport(_CheckedBackend(self._destinations, resolver)),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            # One user's fetch must not carry cookies set during another's.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            timeout=httpx.Timeout(settings.fetch_total_timeout, connect=settings.fetch_connect_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    async def fetch(self, url: str) -> bytes:
        """The body at ``url``, following redirects; ``InvalidURL`` or ``InputDownloadFailed`` if not."""
        try:
            with anyio.fail_after(self._total_timeout):
                return await self._follow(self._checked(url))
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise InputDownloadFailed("Image download failed: timed out.") from exc
        except httpx.HTTPError as exc:
            raise InputDownloadFailed("Image download failed: could not connect or read the answer.") from exc

    async def check_guard(self) -> None:
        """Raises ``RuntimeError`` unless a request for a refused address is stopped by our backend before it
        connects anywhere, as every fetch must be."""
        try:
            await self._client.get(GUARD_PROBE_URL)
        except InvalidURL:
            return
        except httpx.HTTPError as error:
            raise RuntimeError(f"the SSRF guard is not in httpx's path (the probe got {error!r}); "
                               "image URLs cannot be fetched safely with this httpx") from error
        raise RuntimeError("the SSRF guard is not in httpx's path: the probe of a refused address was answered")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _follow(self, url: httpx.URL) -> bytes:
        """Redirects are followed here, not by httpx, so that every hop's URL is checked again."""
        for _ in range(self._max_redirects + 1):
            async with self._client.stream("GET", url) as response:
                if response.next_request is None:
                    return await self._read_body(response)
                url = self._checked(response.next_request.url)
        raise InputDownloadFailed(f"Image download failed: more than {self._max_redirects} redirects.")

    async def _read_body(self, response: httpx.Response) -> bytes:
        """The raw body, capped while streaming: ``Content-Length`` may only make us stop sooner."""
        if not response.is_success:
            raise InputDownloadFailed(f"Image download failed: the server answered HTTP {response.status_code}.")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_big()
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self._max_bytes:
                raise self._too_big()
        return bytes(body)

    def _too_big(self) -> InputDownloadFailed:
        """A new error at the raise: one held in a local of ``_read_body`` would form a cycle with its own
        traceback's frame and keep the partial body alive until the cyclic garbage collector ran."""
        return InputDownloadFailed(f"Image download failed: the image exceeds {self._max_bytes} bytes.")

    def _checked(self, url: str | httpx.URL) -> httpx.URL:
        """Refuse what is wrong in the URL itself; the address is checked when connecting."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidURL() from exc
        if parsed.scheme not in _DEFAULT_PORTS:
            raise InvalidURL("Only http and https image URLs are accepted.")
        if parsed.userinfo:
            raise InvalidURL("Image URLs must not contain credentials.")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise InvalidURL("The image URL has no host.")
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        if not self._destinations.allows_port(host, port):
            raise InvalidURL(f"Port {port} is not allowed for image URLs.")
        return parsed
