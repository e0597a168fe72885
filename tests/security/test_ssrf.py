"""SSRF: every spelling of an address we must not reach, sent through the real API, reaches nothing.

A canary listens on every local address (IPv4 and IPv6) on one port, and that port is among the allowed
fetch ports, so the port rule is not what refuses these URLs: the address check is. Each case posts an
edit whose image is the URL and expects a 4xx in DashScope's error format, within the fetch timeout,
with zero connections at the canary. Cases that need a resolver of our own (a public-looking name that
resolves privately, DNS rebinding) use ``ImageFetcher`` directly: the app has no resolver setting, and
we add no test-only path to it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from qwen_image_server.errors import InputDownloadFailed, InvalidURL
from qwen_image_server.media.fetch import resolve_host
from qwen_image_server.settings import Settings
from tests.conftest import RunningServer, fetch_each, free_socket, serving
from tests.security.upstreams import PNG, RawServer, canary, running

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
TOTAL_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
MARGIN = 1.5
REFUSED = "InvalidURL"  # refused before any connection: the URL or the address it resolves to
FAILED = "InvalidParameter"  # InputDownloadFailed: the name did not resolve, or the upstream failed


def local_addresses() -> list[str]:
    """This machine's own interface addresses (Linux): the canary listens on them too."""
    found: set[str] = set()
    with open("/proc/net/if_inet6") as table:
        for line in table:
            digits = line.split()[0]
            found.add(":".join(digits[i:i + 4] for i in range(0, 32, 4)))
    with open("/proc/net/fib_trie") as trie:
        lines = trie.read().splitlines()
    found.update(lines[i - 1].split()[-1] for i, line in enumerate(lines) if "/32 host LOCAL" in line)
    return sorted(found)


def bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# (URL, expected code); CANARYPORT and UPSTREAM (the allowlisted upstream's host:port) are filled in at run time,
# and survive percent-encoding inside redirect targets.
CASES: dict[str, list[tuple[str, str]]] = {
    "loopback names": [
        ("http://localhost:CANARYPORT/", REFUSED),
        ("http://LOCALHOST:CANARYPORT/", REFUSED),
        ("http://LocalHost:CANARYPORT/", REFUSED),
        ("http://localhost.:CANARYPORT/", FAILED),  # the system resolver does not know "localhost."
        ("http://127.0.0.1.:CANARYPORT/", FAILED),
    ],
    "numeric spellings of loopback": [
        (f"http://{host}:CANARYPORT/", REFUSED)
        for host in ("127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7f.1", "0x7f.0.0.1",
                     "017700000001", "0177.0.0.1", "127.000.000.001", "127.0.0.2", "127.255.255.254",
                     "127。0。0。1")
    ],
    "IPv6 spellings": [
        (f"http://[{host}]:CANARYPORT/", REFUSED)
        for host in ("::1", "0:0:0:0:0:0:0:1", "0000:0000:0000:0000:0000:0000:0000:0001", "::ffff:127.0.0.1",
                     "::ffff:7f00:1", "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b:1::7f00:1", "2002:7f00:1::",
                     "2001:0:4136:e378:8000:63bf:80ff:fffe", "::ffff:169.254.169.254", "::ffff:10.0.0.1")
    ] + [("http://[::1%25lo]:CANARYPORT/", FAILED)],
    "unspecified addresses": [
        ("http://0.0.0.0:CANARYPORT/", REFUSED),
        ("http://0:CANARYPORT/", REFUSED),
        ("http://0x0:CANARYPORT/", REFUSED),
        ("http://[::]:CANARYPORT/", REFUSED),
        ("http://[::ffff:0.0.0.0]:CANARYPORT/", REFUSED),
    ],
    "metadata addresses": [
        ("http://169.254.169.254/latest/meta-data/", REFUSED),
        ("http://169.254.169.254:CANARYPORT/latest/meta-data/", REFUSED),
        ("http://[fd00:ec2::254]:CANARYPORT/latest/meta-data/", REFUSED),
        ("http://100.100.100.200:CANARYPORT/latest/meta-data/", REFUSED),  # Alibaba Cloud
        ("http://169.254.170.2:CANARYPORT/v2/credentials", REFUSED),  # ECS task credentials
        ("http://2852039166:CANARYPORT/", REFUSED),  # 169.254.169.254 as one number
    ],
    "private, CGNAT and other non-global ranges": [
        (f"http://{bracketed(host)}:CANARYPORT/", REFUSED)
        for host in ("10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.0.1",
                     "192.168.255.254", "100.64.0.1", "100.127.255.254", "192.0.0.1", "192.0.2.1",
                     "198.18.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "fc00::1", "fd12:3456::1",
                     "fe80::1", "fec0::1", "ff02::1", "100::1", "2001:db8::1")
    ],
    "this machine's own addresses": [
        (f"http://{bracketed(host)}:CANARYPORT/", REFUSED) for host in local_addresses() if "%" not in host
    ],
    "redirects from an allowlisted upstream": [
        ("http://UPSTREAM/redirect?to=" + quote(target, safe=""), REFUSED)
        for target in ("http://127.0.0.1:CANARYPORT/", "http://localhost:CANARYPORT/", "http://[::1]:CANARYPORT/",
                       "http://0.0.0.0:CANARYPORT/", "http://2130706433:CANARYPORT/", "http://169.254.169.254/latest/meta-data/",
                       "http://10.0.0.1:CANARYPORT/", "//127.0.0.1:CANARYPORT/", "file:///etc/passwd", "gopher://127.0.0.1:CANARYPORT/_x",
                       "http://user:pw@UPSTREAM/image.png")
    ] + [
        ("http://UPSTREAM/redirect?status=" + status + "&to=" + quote("http://127.0.0.1:CANARYPORT/", safe=""), REFUSED)
        for status in ("301", "303", "307", "308")
    ] + [
        ("http://UPSTREAM/redirect?to=/redirect%3Fto%3D%252Fredirect%253Fto%253Dhttp%25253A%25252F%25252F127.0.0.1%25253ACANARYPORT",
         REFUSED),  # three hops, the last to the canary
        ("http://UPSTREAM/redirect?to=" + quote("/redirect?to=" + quote("/redirect?to=" + quote(
            "/redirect?to=" + quote("/image.png", safe=""), safe=""), safe=""), safe=""), FAILED),  # 4 > 3 hops
    ],
    "parser confusion": [
        ("http://evil.com@127.0.0.1:CANARYPORT/", REFUSED),
        ("http://127.0.0.1:CANARYPORT#@evil.com/", REFUSED),
        ("http://127.0.0.1:CANARYPORT?@evil.com/", REFUSED),
        ("http://127.0.0.1:CANARYPORT\\@evil.com/", REFUSED),
        ("http://127.0.0.1\\@evil.com:CANARYPORT/", REFUSED),
        ("http://[::1]:CANARYPORT@evil/", REFUSED),
        ("http://evil.com%40127.0.0.1:CANARYPORT/", FAILED),
        ("http://%31%32%37.0.0.1:CANARYPORT/", FAILED),
        ("http://loc%61lhost:CANARYPORT/", FAILED),
        ("http://127.0.0.1%2f@evil.com:CANARYPORT/", REFUSED),
        ("HTTP://127.0.0.1:CANARYPORT/", REFUSED),
        ("hTtP://127.0.0.1:CANARYPORT/", REFUSED),
        (" http://127.0.0.1:CANARYPORT/", REFUSED),
        ("\thttp://127.0.0.1:CANARYPORT/", REFUSED),
        ("http://127.0.0.1:CANARYPORT/\n", REFUSED),
        ("http://127.0.\t0.1:CANARYPORT/", REFUSED),
        ("http://127.0.0.1:CANARYPORT/\r\nHost: evil.com", REFUSED),
        ("http://127.0.0.1:CANARYPORT/\x00", REFUSED),
        ("http:127.0.0.1:CANARYPORT/", REFUSED),
        ("http:/127.0.0.1:CANARYPORT/", REFUSED),
        ("http:\\\\127.0.0.1:CANARYPORT/", REFUSED),
        ("//127.0.0.1:CANARYPORT/", REFUSED),
        ("http:///127.0.0.1:CANARYPORT/", REFUSED),
        ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:CANARYPORT/", REFUSED),
    ],
    "other schemes": [
        ("file:///etc/passwd", REFUSED),
        ("file://localhost/etc/passwd", REFUSED),
        ("/etc/passwd", REFUSED),
        ("ftp://127.0.0.1:CANARYPORT/", REFUSED),
        ("gopher://127.0.0.1:CANARYPORT/_GET%20/", REFUSED),
        ("dict://127.0.0.1:CANARYPORT/info", REFUSED),
        ("ws://127.0.0.1:CANARYPORT/", REFUSED),
        ("https://127.0.0.1:CANARYPORT/", REFUSED),
        ("javascript:alert(1)", REFUSED),
        ("data:text/html,<script>alert(1)</script>", FAILED),
        ("data:image/svg+xml;base64,PHN2Zy8+", FAILED),
        ("jar:http://127.0.0.1:CANARYPORT/a.jar!/", REFUSED),
        ("netdoc:///etc/passwd", REFUSED),
    ],
    "odd ports": [
        ("http://127.0.0.1:0/", REFUSED),
        ("http://127.0.0.1:22/", REFUSED),
        ("http://127.0.0.1:6379/", REFUSED),
        ("http://127.0.0.1:65536/", REFUSED),
        ("http://127.0.0.1:-1/", REFUSED),
        ("http://127.0.0.1:CANARYPORTCANARYPORT/", REFUSED),
        ("http://127.0.0.1:0CANARYPORT/", REFUSED),
        ("http://127.0.0.1: CANARYPORT/", REFUSED),
        ("http://127.0.0.1:+CANARYPORT/", REFUSED),
        ("http://UPSTREAM:CANARYPORT/", REFUSED),
    ],
    "credentials": [
        ("http://user:secret@127.0.0.1:CANARYPORT/", REFUSED),
        ("http://user@127.0.0.1:CANARYPORT/", REFUSED),
        ("http://:@127.0.0.1:CANARYPORT/", REFUSED),
        ("http://user:secret@UPSTREAM/image.png", REFUSED),  # even to the allowlisted upstream
    ],
}

PARAMS = [pytest.param(url, code, id=f"{group}: {url!r}") for group, cases in CASES.items() for url, code in cases]


@pytest.fixture(scope="module")
def canary_server() -> Iterator[RawServer]:
    with running(canary()) as server:
        yield server


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path, canary_server: RawServer,
        upstream: RawServer) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("ssrf-server"), demo_models_dir, free_socket(),
                 fetch_allowed_hosts=[upstream.netloc], fetch_allowed_ports=[80, 443, canary_server.port],
                 fetch_total_timeout=TOTAL_TIMEOUT, fetch_connect_timeout=CONNECT_TIMEOUT,
                 rate_limits_enabled=False) as running_server:
        yield running_server


@pytest.fixture(scope="module")
def client(api: RunningServer) -> Iterator[httpx.Client]:
    # trust_env=False: the proxy test sets proxy variables in this process, which must not reroute us.
    with httpx.Client(base_url=api.url, timeout=30, trust_env=False,
                      headers={"Authorization": f"Bearer {api.key}"}) as client:
        yield client


def edit(client: httpx.Client, image: str) -> tuple[httpx.Response, float]:
    body = {"model": "qwen-image-edit-plus",
            "input": {"messages": [{"role": "user", "content": [{"image": image}, {"text": "make it blue"}]}]}}
    started = time.monotonic()
    response = client.post(ROUTE, json=body)
    return response, time.monotonic() - started


def assert_refused(response: httpx.Response, elapsed: float, code: str) -> None:
    payload = response.json()
    assert response.status_code == 400, payload
    assert set(payload) == {"request_id", "code", "message"}
    assert payload["code"] == code, payload
    assert elapsed < TOTAL_TIMEOUT + MARGIN


@pytest.mark.parametrize(("url", "code"), PARAMS)
def test_ssrf_case_is_refused_through_the_api(client: httpx.Client, canary_server: RawServer, upstream: RawServer,
                                              url: str, code: str) -> None:
    before, hits = canary_server.accepted, len(upstream.targets)
    url = url.replace("CANARYPORT", str(canary_server.port)).replace("UPSTREAM", upstream.netloc)
    response, elapsed = edit(client, url)
    assert_refused(response, elapsed, code)
    assert canary_server.accepted == before
    assert all(target.startswith("/redirect") for target in upstream.targets[hits:])


def test_the_canary_and_upstream_do_answer_when_allowed(tmp_path: Path, canary_server: RawServer,
                                                        upstream: RawServer) -> None:
    """The control: the canary is reachable, so zero connections above means the fetcher refused."""
    settings = Settings(data_dir=tmp_path, fetch_allowed_hosts=[canary_server.netloc, f"[::1]:{canary_server.port}",
                                                                upstream.netloc])
    assert fetch_each(settings, [canary_server.url("/"), f"http://[::1]:{canary_server.port}/",
                                 upstream.url("/image.png")]) == [PNG, PNG, PNG]
    assert canary_server.accepted >= 2


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"])
def test_proxy_variables_are_not_used(client: httpx.Client, canary_server: RawServer, upstream: RawServer,
                                      monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """With a proxy variable pointing at the canary, the allowlisted upstream is fetched directly (its HTML
    then fails to decode) and a loopback URL is still refused; the canary sees neither."""
    monkeypatch.setenv(variable, canary_server.url("/"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    before, hits = canary_server.accepted, len(upstream.targets)
    response, elapsed = edit(client, upstream.url("/html"))
    assert_refused(response, elapsed, FAILED)
    assert upstream.targets[hits:] == ["/html"]
    response, elapsed = edit(client, f"http://127.0.0.1:{canary_server.port + 1}/")
    assert_refused(response, elapsed, REFUSED)
    assert canary_server.accepted == before


# --- The fetcher with a resolver of our own ------------------------------------------------------------


def fetcher_settings(tmp_path: Path, canary_port: int, **options: Any) -> Settings:
    options = {"fetch_allowed_ports": [80, 443, canary_port], "fetch_total_timeout": TOTAL_TIMEOUT,
               "fetch_connect_timeout": CONNECT_TIMEOUT, **options}
    return Settings(data_dir=tmp_path, **options)


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["::1"], ["0.0.0.0"], ["::ffff:127.0.0.1"], ["64:ff9b::7f00:1"],
                                    ["10.0.0.1"], ["169.254.169.254"], ["fd00:ec2::254"], ["100.100.100.200"],
                                    ["93.184.215.14", "127.0.0.1"], ["2606:4700::1111", "::1"]])
@pytest.mark.parametrize("name", ["images.example.com", "metadata.google.internal"])
def test_a_name_resolving_to_a_refused_address_is_refused(tmp_path: Path, canary_server: RawServer,
                                                          name: str, answer: list[str]) -> None:
    before = canary_server.accepted
    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch_each(fetcher_settings(tmp_path, canary_server.port), [f"http://{name}:{canary_server.port}/"],
                   lambda host, port: answer)
    assert canary_server.accepted == before


def test_a_redirect_to_a_name_resolving_privately_is_refused(tmp_path: Path, canary_server: RawServer,
                                                             upstream: RawServer) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "internal.example" else resolve_host(host, port)

    before = canary_server.accepted
    settings = fetcher_settings(tmp_path, canary_server.port, fetch_allowed_hosts=[upstream.netloc])
    target = quote(f"http://internal.example:{canary_server.port}/", safe="")
    with pytest.raises(InvalidURL, match="address that is not allowed"):
        fetch_each(settings, [upstream.url(f"/redirect?to={target}")], resolver)
    assert canary_server.accepted == before


class SocketAudit:
    """Records the process's real ``connect`` and ``getaddrinfo`` calls through Python's audit hooks."""

    def __init__(self) -> None:
        self.connects: list[tuple[Any, ...]] = []
        self.lookups: list[str] = []
        self.active = False
        sys.addaudithook(self._hook)  # hooks cannot be removed: this one records only while active

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            self.connects.append(tuple(args[1])[:2])
        elif event == "socket.getaddrinfo":
            self.lookups.append(str(args[0]))


@pytest.fixture(scope="module")
def audit() -> SocketAudit:
    return SocketAudit()


def test_dns_rebinding_connects_to_the_checked_address_only(tmp_path: Path, canary_server: RawServer,
                                                            audit: SocketAudit) -> None:
    """The resolver answers a public address first and loopback after: the one connect made goes to the
    public address that was checked, nobody resolves the name a second time, and a later fetch that gets
    the loopback answer is refused before connecting."""
    answers = [["93.184.215.14"], ["127.0.0.1"]]
    calls: list[str] = []
    lock = threading.Lock()

    def rebinding(host: str, port: int) -> list[str]:
        with lock:
            calls.append(host)
            return answers[min(len(calls), len(answers)) - 1]

    url = f"http://rebind.example:{canary_server.port}/"
    settings = fetcher_settings(tmp_path, canary_server.port, fetch_connect_timeout=0.5)
    before = canary_server.accepted
    audit.connects.clear()
    audit.lookups.clear()
    audit.active = True
    try:
        with pytest.raises(InputDownloadFailed):  # 93.184.215.14 is unreachable from the test machine
            fetch_each(settings, [url], rebinding)
        with pytest.raises(InvalidURL, match="address that is not allowed"):
            fetch_each(settings, [url], rebinding)
    finally:
        audit.active = False
    assert calls == ["rebind.example", "rebind.example"]
    assert audit.connects == [("93.184.215.14", canary_server.port)]
    assert "rebind.example" not in audit.lookups
    assert canary_server.accepted == before


def test_proxy_variables_set_before_the_fetcher_is_built_are_ignored(tmp_path: Path, canary_server: RawServer,
                                                                     upstream: RawServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(variable, canary_server.url("/"))
    assert "HTTP_PROXY" in os.environ
    before = canary_server.accepted
    settings = fetcher_settings(tmp_path, canary_server.port, fetch_allowed_hosts=[upstream.netloc])
    assert fetch_each(settings, [upstream.url("/image.png")]) == [PNG]
    with pytest.raises(InvalidURL):
        fetch_each(settings, [f"http://127.0.0.1:{canary_server.port}/"])
    assert canary_server.accepted == before
