"""The server's own front door against a live server on loopback, as an attacker would try it: bodies that
would freeze the event loop, clients without a key, half-sent requests, connection floods, odd methods.

Throughout, ``/healthz`` must keep answering within a second.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from qwen_image_server.settings import MiB
from tests.conftest import RunningServer, free_socket, serving

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
MODEL = "qwen-image-2.0"
HEADER_TIMEOUT = 1.0
BODY_GRACE = 1.0
MAX_CONNECTIONS = 40
HEALTHY_SECONDS = 1.0


@pytest.fixture(scope="module")
def door(tmp_path_factory, demo_models_dir) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("front-door"), demo_models_dir, free_socket(), enabled_models=[MODEL],
                 header_timeout_seconds=HEADER_TIMEOUT, body_grace_seconds=BODY_GRACE,
                 body_min_bytes_per_second=100_000, max_connections=MAX_CONNECTIONS, max_connections_per_client=30,
                 max_requests_per_connection=3, max_request_bytes=32 * MiB, max_buffered_request_bytes=56 * MiB,
                 rate_limits_enabled=False) as running:
        yield running


class HealthProbe:
    """Times ``/healthz`` over fresh connections, in a thread, while the block runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                answer = httpx.get(self.url + "/healthz", timeout=5)
                if answer.status_code != 200:
                    self.failures.append(f"HTTP {answer.status_code}")
            except httpx.HTTPError as error:
                self.failures.append(repr(error))
            self.latencies.append(time.perf_counter() - started)
            self._stop.wait(0.05)

    @contextlib.contextmanager
    def watching(self) -> Iterator[HealthProbe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
        assert not self.failures, self.failures
        assert self.latencies, "the probe never ran"
        assert max(self.latencies) < HEALTHY_SECONDS, f"/healthz took up to {max(self.latencies):.2f} s"


def raw_connection(server: RunningServer) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):  # a reset is a close with unread bytes left behind
        while chunk := sock.recv(65536):
            received += chunk
    return received


def tiny_items_body(count: int, model: str = MODEL) -> bytes:
    return (f'{{"model": "{model}", "input": {{"messages": [{{"role": "user", "content": ['
            + ",".join(['{"text": "a"}'] * count) + "]}]}}").encode()


def test_a_client_without_a_key_is_answered_before_it_sends_any_body(door):
    with raw_connection(door) as sock:
        started = time.perf_counter()
        sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {30 * MiB}\r\n\r\n".encode())
        answer = read_until_closed(sock, timeout=5)
        assert time.perf_counter() - started < HEALTHY_SECONDS
    assert answer.startswith(b"HTTP/1.1 401") and b"InvalidApiKey" in answer
    assert b"connection: close" in answer.lower()


def test_huge_bodies_of_tiny_items_are_refused_fast_with_or_without_a_key(door):
    body = tiny_items_body(2_000_000)  # ~25 MiB of valid JSON
    answers: list[httpx.Response] = []

    def send(key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answers.append(httpx.post(door.url + ROUTE, content=body, headers=headers, timeout=60))

    with HealthProbe(door.url).watching():
        senders = [threading.Thread(target=send, args=(key,)) for key in (door.key, door.key, None, None)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    assert sorted(answer.status_code for answer in answers) == [400, 400, 401, 401]
    assert all(answer.json()["code"] in ("InvalidParameter", "InvalidApiKey") for answer in answers)


def test_an_empty_model_in_a_huge_body_costs_as_little(door):
    with httpx.Client(base_url=door.url, headers={"Authorization": f"Bearer {door.key}"}, timeout=60) as client:
        started = time.perf_counter()
        answer = client.post(ROUTE, content=tiny_items_body(2_000_000, model=""))
    assert answer.status_code == 400
    assert time.perf_counter() - started < 5


def test_half_sent_headers_are_closed_and_never_shut_out_a_real_request(door):
    sockets = []
    with HealthProbe(door.url).watching():
        for _ in range(MAX_CONNECTIONS + 20):
            sock = raw_connection(door)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(sock)
        for sock in sockets:
            assert read_until_closed(sock, timeout=HEADER_TIMEOUT + 3) == b""
    for sock in sockets:
        sock.close()


def test_idle_connections_beyond_the_cap_make_room_for_new_ones(door):
    idle = [raw_connection(door) for _ in range(MAX_CONNECTIONS * 2)]
    try:
        with httpx.Client(base_url=door.url) as client:
            assert client.get("/healthz").status_code == 200
        closed = 0
        for sock in idle[:MAX_CONNECTIONS]:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed > 0, "the oldest idle connections were closed to make room"
    finally:
        for sock in idle:
            sock.close()


def test_a_dripped_body_is_cut_off_with_408(door):
    with raw_connection(door) as sock:
        sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {door.key}\r\n"
                     f"Content-Length: 1000000\r\n\r\n".encode())
        started = time.perf_counter()
        answer = b""
        sock.settimeout(0.2)
        while time.perf_counter() - started < BODY_GRACE + 5:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b" " * 100)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeOut" in answer


def test_bytes_dripped_after_a_response_do_not_keep_the_connection(door):
    with raw_connection(door) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.perf_counter()
        sock.settimeout(0.3)
        closed = False
        while time.perf_counter() - started < HEADER_TIMEOUT + 5 and not closed:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"G")
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
    assert closed and time.perf_counter() - started < HEADER_TIMEOUT + 2


def test_a_keep_alive_connection_serves_a_bounded_number_of_requests(door):
    with httpx.Client(base_url=door.url) as client:
        answers = [client.get("/healthz") for _ in range(3)]
    assert [answer.headers.get("connection") for answer in answers] == [None, None, "close"]


def test_a_body_over_the_cap_is_refused_before_it_is_read(door):
    with raw_connection(door) as sock:
        sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {door.key}\r\n"
                     f"Content-Length: {33 * MiB}\r\n\r\n".encode())
        answer = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()


def test_bodies_in_flight_share_one_budget(door):
    held = 30 * MiB
    with raw_connection(door) as first:
        first.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {door.key}\r\n"
                      f"Content-Length: {held + 1}\r\n\r\n".encode() + b" " * held)
        time.sleep(0.3)  # the server has taken those bytes into its budget, and waits for the last one
        with httpx.Client(base_url=door.url, headers={"Authorization": f"Bearer {door.key}"}) as client:
            refused = client.post(ROUTE, content=b" " * (30 * MiB))
        first.sendall(b" ")
        first.settimeout(10)
        assert first.recv(65536).startswith(b"HTTP/1.1 400")
    assert refused.status_code == 429 and refused.json()["code"] == "Throttling"
    assert int(refused.headers["Retry-After"]) >= 1
    with httpx.Client(base_url=door.url, headers={"Authorization": f"Bearer {door.key}"}) as client:
        assert client.post(ROUTE, content=b" " * (20 * MiB)).status_code == 400, "the budget was given back"


def series(metrics_text: str) -> set[str]:
    return {line.split(" ")[0] for line in metrics_text.splitlines() if line and not line.startswith("#")}


def test_odd_methods_paths_and_models_cannot_mint_metric_series(door):
    with httpx.Client(base_url=door.url, headers={"Authorization": f"Bearer {door.key}"}) as client:
        def poke(round_number: int) -> None:
            client.request(f"FOO{round_number}", "/healthz")
            client.request(f"BAR{round_number}", f"/nowhere/{round_number}")
            client.get(f"/api/v1/tasks/{round_number}")
            client.post(ROUTE, json={"model": f"no-such-model-{round_number}", "input": {}})

        poke(0)
        client.get("/metrics")
        before = series(client.get("/metrics").text)
        for round_number in range(1, 200):
            poke(round_number)
        after = series(client.get("/metrics").text)
    assert after == before
    assert any('method="OTHER"' in line for line in after)
