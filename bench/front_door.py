"""The server's front door under attack, measured: a ``serve`` subprocess with 256 file descriptors (as in
the report that found the holes) takes each attack in turn while a probe times ``/healthz``.

Attacks: bodies of millions of tiny JSON items (with a key, and without), huge bodies without a key,
half-sent headers on more connections than the descriptor limit allows, dripped bodies, odd methods.
Printed per attack: the answers, the slowest ``/healthz`` meanwhile, the server's RSS growth, and
``/metrics`` size before and after. ``--quick`` runs small versions (the test suite runs it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as ``python bench/front_door.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.processes import DEFAULT_DEMO_MODELS, GENERATION, MODEL
from bench.servers import ENVIRONMENT, free_port, wait_until_ready
from qwen_image_server.keys import KeyStore

DESCRIPTORS = 256
MiB = 1024 * 1024


@dataclass
class Scale:
    tiny_items: int
    concurrent_bodies: int
    half_open: int
    drips: int
    odd_methods: int


FULL = Scale(tiny_items=2_000_000, concurrent_bodies=4, half_open=300, drips=50, odd_methods=1000)
QUICK = Scale(tiny_items=400_000, concurrent_bodies=2, half_open=60, drips=5, odd_methods=100)


@dataclass
class Outcome:
    attack: str
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    healthz_max: float = 0.0
    rss_growth_mib: float = 0.0
    note: str = ""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, data_dir: Path, demo_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = KeyStore(data_dir / "server.db").create("bench")
        command = [sys.executable, "-m", "qwen_image_server", "serve", "--port", str(self.port), "--data-dir",
                   str(data_dir), "--models", MODEL]
        environment = {**ENVIRONMENT, "QIS_DEMO_MODELS_DIR": str(demo_dir), "QIS_HEADER_TIMEOUT_SECONDS": "2",
                       "QIS_BODY_GRACE_SECONDS": "2"}
        self.process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=limit_descriptors)
        wait_until_ready(self.url, self.process, timeout_seconds=600)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


@contextlib.contextmanager
def measured(server: Server, outcome: Outcome) -> Iterator[None]:
    """Times ``/healthz`` every 50 ms over fresh connections while the block runs; notes RSS growth."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                httpx.get(server.url + "/healthz", timeout=30)
            except httpx.HTTPError:
                latencies.append(30.0)
            latencies.append(time.perf_counter() - started)
            stop.wait(0.05)

    before = rss_mib(server.process.pid)
    prober = threading.Thread(target=probe)
    started = time.perf_counter()
    prober.start()
    try:
        yield
    finally:
        outcome.seconds = time.perf_counter() - started
        stop.set()
        prober.join()
        outcome.healthz_max = max(latencies, default=0.0)
        outcome.rss_growth_mib = rss_mib(server.process.pid) - before


def in_threads(count: int, work: Callable[[], str], outcome: Outcome) -> None:
    def run() -> None:
        try:
            outcome.answers[work()] += 1
        except (httpx.HTTPError, OSError) as error:
            outcome.answers[type(error).__name__] += 1

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def tiny_items(count: int) -> bytes:
    return (f'{{"model": "{MODEL}", "input": {{"messages": [{{"role": "user", "content": ['
            + ",".join(['{"text": "a"}'] * count) + "]}]}}").encode()


def post_status(server: Server, body: bytes, key: str | None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return str(httpx.post(server.url + GENERATION, content=body, headers=headers, timeout=120).status_code)


def half_open(server: Server, count: int, outcome: Outcome) -> None:
    sockets: list[socket.socket] = []
    for _ in range(count):
        try:
            sock = server.connect()
            sock.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sockets.append(sock)
        except OSError as error:
            outcome.answers[type(error).__name__] += 1
    deadline = time.monotonic() + 10
    for sock in sockets:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            outcome.answers["closed by the server" if sock.recv(1) == b"" else "answered"] += 1
        except ConnectionResetError:
            outcome.answers["closed by the server"] += 1
        except TimeoutError:
            outcome.answers["still open after 10 s"] += 1
        sock.close()


def dripped_body(server: Server) -> str:
    with server.connect() as sock:
        sock.sendall(f"POST {GENERATION} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
                     f"Content-Length: 10000000\r\n\r\n".encode())
        sock.settimeout(0.5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                sock.sendall(b" " * 10)
            try:
                answer = sock.recv(64)
            except TimeoutError:
                continue
            return answer.split(b"\r\n", 1)[0].decode() or "closed"
    return "no answer in 30 s"


def odd_methods(server: Server, count: int, outcome: Outcome) -> None:
    with httpx.Client(base_url=server.url) as client:
        before = len(client.get("/metrics").content)
        for number in range(count):
            outcome.answers[str(client.request(f"X{number}", f"/odd/{number}").status_code)] += 1
        after = len(client.get("/metrics").content)
    outcome.note = f"/metrics {before / 1024:.1f} KiB -> {after / 1024:.1f} KiB"


def run(scale: Scale, demo_dir: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(Path(scratch), demo_dir)
        try:
            attacks: list[tuple[str, Callable[[Outcome], None]]] = [
                (f"{scale.concurrent_bodies} x {scale.tiny_items:,} tiny items, with a key",
                 lambda outcome: in_threads(scale.concurrent_bodies, lambda: post_status(
                     server, tiny_items(scale.tiny_items), server.key), outcome)),
                (f"{scale.concurrent_bodies} x {scale.tiny_items:,} tiny items, no key",
                 lambda outcome: in_threads(scale.concurrent_bodies, lambda: post_status(
                     server, tiny_items(scale.tiny_items), None), outcome)),
                (f"{scale.concurrent_bodies * 4} x 30 MiB body, no key",
                 lambda outcome: in_threads(scale.concurrent_bodies * 4, lambda: post_status(
                     server, b" " * (30 * MiB), None), outcome)),
                (f"{scale.half_open} half-sent headers ({DESCRIPTORS} descriptors)",
                 lambda outcome: half_open(server, scale.half_open, outcome)),
                (f"{scale.drips} dripped bodies, with a key",
                 lambda outcome: in_threads(scale.drips, lambda: dripped_body(server), outcome)),
                (f"{scale.odd_methods} odd methods and paths",
                 lambda outcome: odd_methods(server, scale.odd_methods, outcome)),
            ]
            for name, attack in attacks:
                outcome = Outcome(name)
                with measured(server, outcome):
                    attack(outcome)
                outcomes.append(outcome)
        finally:
            server.stop()
    return outcomes


def print_table(outcomes: list[Outcome]) -> None:
    print("| attack | answers | s | slowest /healthz s | RSS growth MiB | note |")
    print("|---|---|---|---|---|---|")
    for outcome in outcomes:
        answers = ", ".join(f"{count} x {answer}" for answer, count in sorted(outcome.answers.items()))
        print(f"| {outcome.attack} | {answers} | {outcome.seconds:.2f} | {outcome.healthz_max:.3f} | "
              f"{outcome.rss_growth_mib:+.0f} | {outcome.note} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small versions of each attack")
    parser.add_argument("--demo-models", type=Path, default=DEFAULT_DEMO_MODELS)
    arguments = parser.parse_args()
    print_table(run(QUICK if arguments.quick else FULL, arguments.demo_models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
