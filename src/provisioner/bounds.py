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


def package_options(family: str) -> list[str]:
    """The bound options of the package manager ``family`` (``[packages.options.<family>]``):
    per-connection timeouts, retries of a transient download error, a bounded wait for a lock
    held by something else; [] for a family without them."""
    spec = bounds()["packages"].get("options", {}).get(family)
    return list(spec["options"]) if spec else []


def with_options(
    parts: tuple[str, ...] | list[str], family: str, *, refresh: bool = False
) -> list[str]:
    """``parts`` (a package-manager command of distros.toml) with the family's bound options
    (``[packages.options.<family>]``, and its ``update_options`` for the package lists'
    refresh when ``refresh``) inserted after the program; unchanged for a family without
    options or a command that does not run that program."""
    spec = bounds()["packages"].get("options", {}).get(family)
    parts = list(parts)
    if not spec or spec["after"] not in parts:
        return parts
    options = [*spec["options"], *(spec.get("update_options", []) if refresh else [])]
    at = parts.index(spec["after"]) + 1
    return [*parts[:at], *options, *parts[at:]]


# the URLs a failed package-manager attempt names in its error lines (apt: "Err:", "E: Failed
# to fetch", "W: ..."; dnf: "Curl error ... for <url>", "Cannot download <url>")
_MIRRORS = (
    "grep -Ei 'err|fail|cannot|timeout|timed out|could not|unable' \"$log\" "
    "| grep -Eo '(https?|ftp)://[^] )\"]+' | sort -u | head -n 3 | xargs"
)


def retried(command: str, step: str) -> str:
    """Shell that runs ``command`` with each attempt killed after ``update_timeout_s`` seconds,
    up to ``update_attempts`` times, ``retry_delay_s`` apart (a transient mirror error: a
    caching proxy's bad answer, a stalled connection). Each attempt's output is shown. When
    every attempt fails it says on stderr: ``step``, the attempts, the bound, the last exit
    status (or that the last attempt timed out) and the mirrors the last attempt's error lines
    name; exits 1. Bounded: a real failure (a broken repository) fails after the last attempt."""
    p = bounds()["packages"]
    timeout, attempts, delay = p["update_timeout_s"], p["update_attempts"], p["retry_delay_s"]
    return (
        "log=$(mktemp) || exit 1; trap 'rm -f \"$log\"' EXIT; n=1; "
        f'until timeout -k 10 {timeout} sh -c {shlex.quote(command)} >"$log" 2>&1; do '
        'rc=$?; cat "$log"; '
        f'if [ "$n" -ge {attempts} ]; then '
        f"mirrors=$({_MIRRORS}); "
        'why="last exit $rc"; '
        f'[ "$rc" -ne 124 ] || why="the last attempt timed out after {timeout}s"; '
        f'echo {shlex.quote(step)}" failed {attempts} times ($why); '
        'package mirror(s): ${mirrors:-none named}" >&2; '
        "exit 1; fi; "
        f'n=$((n + 1)); sleep {delay}; done; cat "$log"'
    )
