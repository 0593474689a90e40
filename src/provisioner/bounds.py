"""The time bounds of remote steps (``data/bounds.toml``), and shell forms that apply them.

Every download, package-list refresh and lock wait the deploys run on a host takes its limit
from here, so that a stalled step fails its host with that reason instead of hanging the run.
"""

from __future__ import annotations

import shlex
import tomllib
from functools import cache
from importlib import resources
from typing import Any


@cache
def bounds() -> dict[str, dict[str, Any]]:
    """``data/bounds.toml`` as a dict of sections."""
    text = (resources.files("provisioner") / "data" / "bounds.toml").read_text("utf-8")
    return tomllib.loads(text)


def get(section: str, key: str) -> Any:
    """One bound, e.g. ``get("download", "speed_time_s")``."""
    return bounds()[section][key]


def curl_options(max_time_key: str) -> list[str]:
    """curl's connection, stall and overall bounds for a download (``--max-time`` from
    ``[download] <max_time_key>``)."""
    d = bounds()["download"]
    return [
        "--retry",
        str(d["retries"]),
        "--connect-timeout",
        str(d["connect_timeout_s"]),
        "--speed-limit",
        str(d["speed_limit_bytes"]),
        "--speed-time",
        str(d["speed_time_s"]),
        "--max-time",
        str(d[max_time_key]),
    ]


def with_options(parts: tuple[str, ...] | list[str], family: str) -> list[str]:
    """``parts`` (a package-manager command of distros.toml) with the family's bound options
    (``[packages.options.<family>]``) inserted after the program; unchanged for a family
    without options or a command that does not run that program."""
    spec = bounds()["packages"].get("options", {}).get(family)
    parts = list(parts)
    if not spec or spec["after"] not in parts:
        return parts
    at = parts.index(spec["after"]) + 1
    return [*parts[:at], *spec["options"], *parts[at:]]


def retried(command: str, step: str) -> str:
    """Shell that runs ``command`` with each attempt killed after ``update_timeout_s`` seconds,
    up to ``update_attempts`` times; when every attempt fails it names ``step``, the bound and
    the last exit status (124: timed out) on stderr and exits 1."""
    p = bounds()["packages"]
    timeout, attempts, delay = p["update_timeout_s"], p["update_attempts"], p["retry_delay_s"]
    return (
        "n=1; "
        f"until timeout -k 10 {timeout} sh -c {shlex.quote(command)}; do "
        "rc=$?; "
        f'if [ "$n" -ge {attempts} ]; then '
        f'echo "{step} failed {attempts} times (each attempt bounded to {timeout}s; '
        'last exit $rc, 124 = timed out)" >&2; exit 1; fi; '
        f"n=$((n + 1)); sleep {delay}; done"
    )
