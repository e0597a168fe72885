"""The connection table's caps and who gives way at them; the descriptor limit caps the connections."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from qwen_image_server.api.connections import DESCRIPTOR_HEADROOM, ConnectionLimits, ConnectionTable
from qwen_image_server.settings import Settings


@dataclass(eq=False)
class Connection:
    client_host: str
    waiting: bool = True
    closed: bool = False

    def close_quietly(self) -> None:
        self.closed = True


def table(total: int, per_client: int) -> ConnectionTable:
    return ConnectionTable(ConnectionLimits(1.0, total, per_client, 100))


def test_at_the_per_client_cap_that_clients_oldest_waiting_connection_gives_way():
    connections = table(total=10, per_client=2)
    busy, idle, other = Connection("a", waiting=False), Connection("a"), Connection("b")
    for connection in (busy, idle, other):
        assert connections.admit(connection)
    newcomer = Connection("a")
    assert connections.admit(newcomer)
    assert idle.closed and not busy.closed and not other.closed
    assert list(connections.by_client["a"]) == [busy, newcomer]


def test_at_the_overall_cap_the_oldest_waiting_connection_of_anyone_gives_way():
    connections = table(total=2, per_client=10)
    first, second = Connection("a"), Connection("b")
    connections.admit(first)
    connections.admit(second)
    assert connections.admit(Connection("c"))
    assert first.closed and not second.closed and len(connections.open) == 2


def test_when_every_connection_is_busy_a_new_one_is_refused():
    connections = table(total=2, per_client=10)
    for host in ("a", "b"):
        connections.admit(Connection(host, waiting=False))
    assert not connections.admit(Connection("c"))
    assert len(connections.open) == 2


def test_removed_connections_leave_no_trace():
    connections = table(total=2, per_client=2)
    connection = Connection("a")
    connections.admit(connection)
    connections.remove(connection)
    assert connections.open == {} and connections.by_client == {}


def test_the_cap_stays_below_the_descriptor_limit():
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = ConnectionLimits.from_settings(Settings(max_connections=10**6))
    assert soft == resource.RLIM_INFINITY or \
        limits.max_connections + limits.backlog <= soft - DESCRIPTOR_HEADROOM
