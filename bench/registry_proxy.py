"""A counting reverse proxy in front of the lab's OCI registry: how many bytes a registry served.

The model-distribution benchmark puts one in front of the lab registry as "the upstream" (the
public library, as a site sees it) and one as "the site registry", both on the lab's service
address, so that hosts and ``provision models mirror`` reach them exactly as they reach a
registry, and every byte of every response body is counted, per request kind. Requests and
responses are passed through unchanged (the Host header too, so the registry's own absolute
``Location`` URLs point back at the proxy).
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_KIND = re.compile(r"^/v2/.+/(blobs|manifests)/[^/]+$")
CHUNK = 1 << 16


def request_kind(method: str, path: str) -> str:
    """``blob``, ``manifest``, ``upload`` or ``other``, from a Docker v2 API request."""
    path = path.split("?", 1)[0]
    if "/blobs/uploads" in path:
        return "upload"
    match = _KIND.match(path)
    if match and method in ("GET", "HEAD"):
        return "blob" if match.group(1) == "blobs" else "manifest"
    if match and method == "PUT":
        return "upload"
    return "other"


@dataclass
class Counters:
    """Bytes served (response bodies) and received (request bodies), by request kind."""

    served: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, served: int, received: int) -> None:
        with self.lock:
            self.served[kind] = self.served.get(kind, 0) + served
            self.received[kind] = self.received.get(kind, 0) + received
            self.requests[kind] = self.requests.get(kind, 0) + 1

    def reset(self) -> None:
        with self.lock:
            self.served.clear()
            self.received.clear()
            self.requests.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {
                "served": dict(self.served),
                "received": dict(self.received),
                "requests": dict(self.requests),
            }

    @property
    def served_total(self) -> int:
        with self.lock:
            return sum(self.served.values())


class CountingProxy:
    """``CountingProxy(listen=("169.254.100.1", 5001), backend=("169.254.100.1", 5000))``;
    ``start()`` serves in a thread, ``stop()`` ends it; ``counters`` holds the bytes."""

    def __init__(self, listen: tuple[str, int], backend: tuple[str, int]) -> None:
        self.listen = listen
        self.backend = backend
        self.counters = Counters()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen[0]}:{self.listen[1]}"

    def start(self) -> CountingProxy:
        handler = _handler(self.backend, self.counters)
        self._server = ThreadingHTTPServer(self.listen, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(backend: tuple[str, int], counters: Counters) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # quiet: the counters are the log

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(*backend, timeout=300)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                self.send_response(response.status, response.reason)
                chunked = response.getheader("Content-Length") is None and self.command != "HEAD"
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                served = 0
                if self.command != "HEAD":
                    while chunk := response.read(CHUNK):
                        served += len(chunk)
                        if chunked:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        else:
                            self.wfile.write(chunk)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                counters.add(request_kind(self.command, self.path), served, length)
            finally:
                conn.close()

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler
