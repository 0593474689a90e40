"""Pure parsers for the outputs the verification checks read (no pytest, no host).

Each function takes the text a command printed on the host and returns plain values; none
raises on odd input (a check reports "could not read ..." instead).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

OLLAMA_DEFAULT_PORT = 11434

_NVCC_RE = re.compile(r"\brelease\s+(\d+\.\d+)\b")
_OLLAMA_CLIENT_RE = re.compile(r"client version is\s+v?(\d+\.\d+\.\d+\S*)")
_OLLAMA_VERSION_RE = re.compile(r"version is\s+v?(\d+\.\d+\.\d+\S*)")
_NVRM_RE = re.compile(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s")


def nvcc_release(text: str) -> str | None:
    """``12.8`` from ``nvcc --version`` (``Cuda compilation tools, release 12.8, V12.8.93``)."""
    match = _NVCC_RE.search(text)
    return match.group(1) if match else None


def ollama_version(text: str) -> str | None:
    """The client (binary) version from ``ollama --version``.

    With a server answering it prints ``ollama version is 0.12.3`` (the server's version)
    and, when the client differs, ``Warning: client version is 0.12.4``; with no server, a
    warning and ``Warning: client version is 0.12.3``. The client's version wins.
    """
    match = _OLLAMA_CLIENT_RE.search(text) or _OLLAMA_VERSION_RE.search(text)
    return match.group(1) if match else None


def same_version(a: str | None, b: str | None) -> bool:
    """Versions equal in every component both carry (``580.95`` matches ``580.95.05``)."""
    if not a or not b:
        return False
    pa, pb = str(a).strip().split("."), str(b).strip().split(".")
    n = min(len(pa), len(pb))
    return pa[:n] == pb[:n]


def torch_public_version(version: str) -> str:
    """``2.8.0`` from ``2.8.0+cu128`` (the local part names the wheel's CUDA build)."""
    return version.split("+", 1)[0]


def split_host_port(address: str, default_port: int = OLLAMA_DEFAULT_PORT) -> tuple[str, int]:
    """``(host, port)`` of an ``OLLAMA_HOST``-style value.

    Accepts ``127.0.0.1:11434``, ``0.0.0.0``, ``[::1]:11434``, ``http://host:port`` and a
    bare port after a colon (``:11434``); the host defaults to 127.0.0.1 as in Ollama.
    """
    value = address.strip()
    if "://" in value:
        value = value.split("://", 1)[1]
    value = value.split("/", 1)[0]
    host, port = value, default_port
    if value.startswith("["):
        close = value.find("]")
        host = value[1:close] if close > 0 else value[1:]
        rest = value[close + 1 :] if close > 0 else ""
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if port_text.isdigit():
            port = int(port_text)
    if not host:
        host = "127.0.0.1"
    return host, port


def _hex_ipv4(text: str) -> str:
    raw = bytes.fromhex(text)
    return str(ipaddress.IPv4Address(raw[::-1]))


def _hex_ipv6(text: str) -> str:
    raw = bytes.fromhex(text)
    # /proc/net/tcp6 prints the address as four host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def tcp_listeners(text: str | Iterable[str]) -> list[tuple[str, int]]:
    """Listening TCP sockets ``(address, port)`` from ``/proc/net/tcp`` and ``/proc/net/tcp6``.

    The kernel's own table (what ``ss -ltn`` reads), so no tool is needed on the host; state
    ``0A`` is LISTEN. IPv4-mapped IPv6 addresses are given as IPv4.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    found: list[tuple[str, int]] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1] or fields[3].upper() != "0A":
            continue
        address_hex, _, port_hex = fields[1].partition(":")
        try:
            port = int(port_hex, 16)
            if len(address_hex) == 8:
                address = _hex_ipv4(address_hex)
            elif len(address_hex) == 32:
                address = _hex_ipv6(address_hex)
            else:
                continue
        except ValueError:
            continue
        if (address, port) not in found:
            found.append((address, port))
    return found


def df_available_bytes(text: str) -> int | None:
    """Available bytes from ``df -P -k PATH`` (POSIX layout, 1024-byte blocks)."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        # Filesystem 1024-blocks Used Available Capacity Mounted-on; a long device
        # name may push the numbers onto the next line.
        numbers = [f for f in fields if f.isdigit()]
        if len(numbers) >= 3:
            return int(numbers[2]) * 1024
    return None


def digest_hex(digest: str | None) -> str | None:
    """A digest without its ``sha256:`` prefix, lower case."""
    if not digest:
        return None
    value = str(digest).strip().lower()
    return value.split(":", 1)[1] if ":" in value else value


def human_bytes(size: int | float | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
