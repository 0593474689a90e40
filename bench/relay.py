"""A user-space TCP relay that adds round-trip time: the bench's stand-in for a slow link
(this machine's kernel has no netem).

``DelayRelay(rtt_ms, allowed)`` listens on 127.0.0.1 (one port per target) and forwards each
connection to its target, holding every chunk of bytes for half the round-trip time in each
direction, in order, so that each request/answer exchange over the connection costs ``rtt_ms``
more. It runs its own asyncio loop in a thread.

Bounded: it listens on loopback only, connects only to the addresses in ``allowed`` (loopback
or the lab hosts' addresses, checked when a target is added), serves at most ``max_conns``
connections at a time, and stops reading a side while more than ``max_buffer`` bytes of it wait
to be delivered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Iterable
from typing import Any

CHUNK = 64 * 1024


class RelayError(Exception):
    """A target the relay must not connect to, or a relay that did not start."""


class DelayRelay:
    """Forward loopback ports to ``(address, port)`` targets with ``rtt_ms`` added."""

    def __init__(
        self,
        rtt_ms: float,
        allowed: Iterable[str],
        *,
        max_conns: int = 64,
        max_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        if rtt_ms < 0 or rtt_ms > 1000:
            raise RelayError(f"round-trip time {rtt_ms} ms is outside 0..1000")
        self.delay = rtt_ms / 2000.0  # seconds, one way
        self.allowed = {str(ipaddress.ip_address(a)) for a in allowed}
        self.max_conns = max_conns
        self.max_buffer = max_buffer
        self.active = 0
        self.served = 0
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _check(self, address: str) -> str:
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback and str(ip) not in self.allowed:
            raise RelayError(f"{address} is neither loopback nor a lab host: not relayed")
        return str(ip)

    def add(self, address: str, port: int = 22) -> int:
        """Start relaying a new loopback port to ``address:port``; returns the local port."""
        target = (self._check(address), port)

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(
                lambda r, w: self._serve(r, w, target), host="127.0.0.1", port=0
            )

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]
    ) -> None:
        if self.active >= self.max_conns:
            writer.close()
            return
        self.active += 1
        self.served += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), 10)
        except (TimeoutError, OSError):
            self.active -= 1
            writer.close()
            return
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer),
                self._pipe(up_reader, writer),
                return_exceptions=True,
            )
        finally:
            self.active -= 1
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk delivered ``delay`` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        waiting = [0]
        room = asyncio.Event()
        room.set()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                waiting[0] -= len(data)
                if waiting[0] <= self.max_buffer:
                    room.set()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                await room.wait()
                data = await reader.read(CHUNK)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
                waiting[0] += len(data)
                if waiting[0] > self.max_buffer:
                    room.clear()
            await sender
        finally:
            sender.cancel()

    def close(self) -> None:
        """Stop listening, drop the connections, stop the loop."""

        async def stop() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.05)  # let the closed transports finish

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> DelayRelay:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
