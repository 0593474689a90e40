"""Listen addresses: loopback, wildcard, and where a client on the same machine connects.

The one answer for the Ollama deploy (its API URL, its exposure checks) and for verify (where
it asks Ollama, which listeners are allowed). Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = [
    "LOOPBACK_NAMES",
    "WILDCARDS",
    "is_loopback",
    "is_wildcard",
    "local_address",
    "local_url",
    "networks_by_family",
    "same_listener",
    "url_host",
]

#: Host names that always mean the machine itself.
LOOPBACK_NAMES = ("localhost",)
#: Bind addresses meaning "every address of the machine" (``*`` as ``ss`` shows it).
WILDCARDS = ("0.0.0.0", "::", "*")


def is_loopback(address: str) -> bool:
    """Whether ``address`` is reachable only from the machine itself (127.0.0.0/8, ::1,
    ``localhost``)."""
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_wildcard(address: str) -> bool:
    """Whether binding ``address`` listens on every address of the machine."""
    return address in WILDCARDS


def local_address(bind: str) -> str:
    """Where a client on the same machine reaches a server bound to ``bind``: the loopback
    address of the wildcard's family (an empty bind is IPv4's, as in Ollama), else ``bind``."""
    if bind in ("0.0.0.0", "*", ""):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


def url_host(host: str) -> str:
    """``host`` as it goes in a URL or ``host:port`` (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def local_url(bind: str, port: int, path: str = "") -> str:
    """``http://`` URL of ``path`` on a server bound to ``bind``:``port``, from the same machine."""
    return f"http://{url_host(local_address(bind))}:{port}{path}"


def same_listener(bind: str, address: str) -> bool:
    """Whether a socket listening on ``address`` is what binding ``bind`` gives."""
    if is_wildcard(bind):
        return is_wildcard(address)
    if bind in LOOPBACK_NAMES:
        return is_loopback(address)
    try:
        return ipaddress.ip_address(bind) == ipaddress.ip_address(address)
    except ValueError:
        return bind == address


def networks_by_family(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """An allowlist split into (IPv4, IPv6) networks, normalised (``10.1.2.3/8`` → ``10.0.0.0/8``);
    raises ValueError on an entry that is not a network."""
    v4: list[str] = []
    v6: list[str] = []
    for entry in entries:
        network = ipaddress.ip_network(entry, strict=False)
        (v4 if network.version == 4 else v6).append(str(network))
    return v4, v6
