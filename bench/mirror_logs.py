"""Bytes the lab's site mirrors served during a run, per mirror and per client, from their own
logs (``tests/lab/mirrors.py`` starts them; the logs are in ``$LAB_RUN/services``).

* **apt-cacher-ng** (``acng-log/apt-cacher.log``): one line per transfer,
  ``EPOCH|FLAG|SIZE|CLIENT|URL``; ``O`` is a file sent to a client (*served*), ``I`` one that
  apt-cacher-ng fetched from upstream for it (*upstream*).
* **http.server** (``http.log``, Python's ``http.server`` on ``$LAB_RUN/www``): its access log,
  ``CLIENT - - [DATE] "METHOD PATH HTTP/1.1" STATUS -``, has no size (``log_request`` is
  called before the body is sent), so a ``200`` to a ``GET`` counts the size of the file the
  path names under the mirror's ``www`` (a directory: its ``index.html``; a generated listing
  has no known size and counts in ``unsized``); other statuses and ``HEAD`` send no body.
* **docker-registry** (``registry.log``, distribution 2.8): one ``msg="response completed"``
  (or ``"response completed with error"``) line per request with ``http.request.remoteaddr``
  and ``http.response.written`` (the body's bytes).

:class:`MirrorLogs` takes each log's size before a run and reads what the run appended.
"""

from __future__ import annotations

import posixpath
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The mirrors and their log files, relative to the lab's services folder.
LOGS = {
    "apt-cacher-ng": "acng-log/apt-cacher.log",
    "http": "http.log",
    "registry": "registry.log",
}


@dataclass(frozen=True)
class Transfer:
    """One response of a mirror: ``served`` bytes to ``client``, or ``upstream`` bytes fetched
    on its behalf (apt-cacher-ng's ``I`` lines); ``size`` ``None`` when it is not known."""

    mirror: str
    client: str
    size: int | None
    upstream: bool = False


def parse_acng(text: str) -> list[Transfer]:
    """apt-cacher-ng's transfer log: ``O`` lines served, ``I`` lines fetched from upstream."""
    out = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or parts[1] not in ("O", "I") or not parts[2].isdigit():
            continue
        out.append(Transfer("apt-cacher-ng", parts[3], int(parts[2]), upstream=parts[1] == "I"))
    return out


_HTTP = re.compile(
    r'^(?P<client>\S+) - - \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r"(?P<status>\d{3}) \S+\s*$"
)


def served_file(www: Path, path: str) -> Path | None:
    """The file ``http.server --directory www`` sends for ``path`` (its translate_path: the
    query dropped, %-escapes decoded, ``.`` and ``..`` resolved inside ``www``; a directory's
    ``index.html`` or ``index.htm``); ``None`` when there is none."""
    clean = posixpath.normpath(urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0]))
    parts = [p for p in clean.split("/") if p and p not in (".", "..")]
    target = www.joinpath(*parts)
    if target.is_dir():
        indexes = [target / i for i in ("index.html", "index.htm") if (target / i).is_file()]
        return indexes[0] if indexes else None
    return target if target.is_file() else None


def parse_http(text: str, www: Path) -> list[Transfer]:
    """Python http.server's access log; sizes from the files under ``www`` (see above)."""
    out = []
    for line in text.splitlines():
        match = _HTTP.match(line)
        if not match:
            continue
        size: int | None = 0
        if match["status"] == "200" and match["method"] == "GET":
            found = served_file(www, match["path"])
            size = found.stat().st_size if found else None
        out.append(Transfer("http", match["client"], size))
    return out


_FIELD = re.compile(r'(?P<key>[\w.]+)=(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>\S*))')


def log_fields(line: str) -> dict[str, str]:
    """The ``key=value`` / ``key="value"`` fields of a logrus text line."""
    return {
        m["key"]: m["quoted"] if m["quoted"] is not None else m["bare"]
        for m in _FIELD.finditer(line)
    }


def client_address(remote: str) -> str:
    """``169.254.105.2`` of ``169.254.105.2:54496`` (and of ``[fe80::1]:80``: ``fe80::1``)."""
    host = remote.rsplit(":", 1)[0] if ":" in remote else remote
    return host.strip("[]")


def parse_registry(text: str) -> list[Transfer]:
    """docker-registry's ``response completed`` lines: client and body bytes written."""
    out = []
    for line in text.splitlines():
        if 'msg="response completed' not in line:
            continue
        fields = log_fields(line)
        written = fields.get("http.response.written", "")
        remote = fields.get("http.request.remoteaddr")
        if not remote:
            continue
        size = int(written) if written.isdigit() else None
        out.append(Transfer("registry", client_address(remote), size))
    return out


def parse(mirror: str, text: str, www: Path) -> list[Transfer]:
    """The transfers in a piece of ``mirror``'s log (a name of :data:`LOGS`)."""
    if mirror == "apt-cacher-ng":
        return parse_acng(text)
    if mirror == "http":
        return parse_http(text, www)
    if mirror == "registry":
        return parse_registry(text)
    raise ValueError(f"no parser for mirror {mirror!r}")


def _new_mirror() -> dict[str, Any]:
    return {"bytes": 0, "requests": 0, "unsized": 0, "upstream_bytes": 0, "by_host": {}}


def summarise(
    transfers: Iterable[Transfer], hosts: Mapping[str, str], mirrors: Iterable[str] = LOGS
) -> dict[str, Any]:
    """``{"mirrors": {MIRROR: {"bytes", "requests", "unsized", "upstream_bytes", "by_host"}},
    "by_host": {HOST: bytes}}``: ``hosts`` maps a client address to its host's name (a
    client that is no host keeps its address); ``by_host`` sums every mirror."""
    table = {name: _new_mirror() for name in mirrors}
    by_host: dict[str, int] = {}
    for t in transfers:
        row = table.setdefault(t.mirror, _new_mirror())
        size = t.size or 0
        if t.upstream:
            row["upstream_bytes"] += size
            continue
        who = hosts.get(t.client, t.client)
        row["requests"] += 1
        row["unsized"] += t.size is None
        row["bytes"] += size
        row["by_host"][who] = row["by_host"].get(who, 0) + size
        by_host[who] = by_host.get(who, 0) + size
    return {"mirrors": table, "by_host": by_host}


@dataclass
class MirrorLogs:
    """The mirrors' logs under ``services``; :meth:`mark` before a run, :meth:`read` after."""

    services: Path
    www: Path
    offsets: dict[str, int] = field(default_factory=dict)

    def path(self, mirror: str) -> Path:
        return self.services / LOGS[mirror]

    def mark(self) -> None:
        self.offsets = {}
        for mirror in LOGS:
            try:
                self.offsets[mirror] = self.path(mirror).stat().st_size
            except OSError:
                self.offsets[mirror] = 0

    def appended(self, mirror: str) -> str:
        """What ``mirror``'s log gained since :meth:`mark` (whole lines only)."""
        try:
            with self.path(mirror).open("rb") as handle:
                handle.seek(self.offsets.get(mirror, 0))
                data = handle.read()
        except OSError:
            return ""
        return data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")

    def read(self, hosts: Mapping[str, str], settle: float = 1.0) -> dict[str, Any]:
        """:func:`summarise` of every transfer the logs gained since :meth:`mark`."""
        time.sleep(settle)  # the services write their last lines as the connections close
        transfers = [t for m in LOGS for t in parse(m, self.appended(m), self.www)]
        return summarise(transfers, hosts)
