"""Listen addresses: loopback, wildcard, and where a client on the same machine connects.

The one answer for the Ollama deploy (its API URL, its exposure checks) and for verify (where
it asks Ollama, which listeners are allowed). Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress

__all__ = [
    "LOOPBACK_NAMES",
    "WILDCARDS",
    "is_loopback",
    "is_wildcard",
    "local_address",
    "local_url",
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
