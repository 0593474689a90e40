"""bench/relay.py: the TCP relay that adds round-trip time in front of the lab hosts' sshd."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from bench.relay import DelayRelay, RelayError


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def exchange(port: int, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload``, read it back; the answer and the seconds it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        return got, time.monotonic() - started


@pytest.mark.parametrize("rtt_ms", [0, 100])
def test_each_exchange_pays_the_round_trip_and_bytes_arrive_intact(echo, rtt_ms):
    with DelayRelay(rtt_ms, allowed=[]) as relay:
        port = relay.add("127.0.0.1", echo)
        exchange(port, b"warm-up")
        times = [exchange(port, b"ping")[1] for _ in range(3)]
        big = bytes(range(256)) * 4096  # 1 MiB
        got, _ = exchange(port, big)
    assert got == big
    assert min(times) >= rtt_ms / 1000 * 0.95
    assert max(times) < rtt_ms / 1000 + 0.15


def test_only_loopback_and_lab_addresses_are_relayed():
    with DelayRelay(20, allowed=["169.254.100.11"]) as relay:
        with pytest.raises(RelayError, match="neither loopback nor a lab host"):
            relay.add("192.0.2.1")
        assert relay.add("169.254.100.11") > 0


def test_an_absurd_delay_is_refused():
    with pytest.raises(RelayError, match="outside"):
        DelayRelay(5000, allowed=[])
