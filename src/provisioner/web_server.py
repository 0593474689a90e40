"""The web server in front of Ollama in the proxy modes (nginx), from ``data/web_servers.toml``.

What differs between distributions (the group nginx's workers run as) is data, not a branch in
the deploy.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["WebServer", "web_server"]


@dataclass(frozen=True)
class WebServer:
    """One web server of ``data/web_servers.toml``."""

    name: str
    package: str
    groups: Mapping[str, str]

    def group(self, os_info: Mapping[str, Any]) -> str:
        """The group its workers run as: the first os-release word (``id``, then ``id_like``)
        with an entry, else the ``default`` entry."""
        for word in f"{os_info.get('id') or ''} {os_info.get('id_like') or ''}".split():
            if word in self.groups:
                return self.groups[word]
        return self.groups["default"]

    def installed(self) -> bool:
        """Whether the current pyinfra host has the server's program (``command -v``)."""
        from pyinfra import host
        from pyinfra.facts.server import Which

        return bool(host.get_fact(Which, command=self.name))


@cache
def _load(name: str) -> WebServer:
    text = (resources.files("provisioner") / "data" / "web_servers.toml").read_text("utf-8")
    table = tomllib.loads(text)[name]
    return WebServer(name=name, package=table["package"], groups=dict(table["group"]))


#: nginx, the proxy of ``ollama_expose = "proxy"`` and ``"proxy+allowlist"``.
web_server = _load("nginx")
