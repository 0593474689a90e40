"""What ``provision lock`` reads from the fleet's sources, parsed on the control host.

Pure parsers, each of one upstream format, plus the one fetch they share:

* :func:`apt_packages`: a Debian ``Packages`` index (deb822 stanzas, as ``apt-ftparchive``
  and NVIDIA's CUDA repositories write it) -> versions offered per package;
* :func:`repomd_primary` and :func:`dnf_primary`: a yum/dnf repository's ``repodata/repomd.xml``
  (where the ``primary`` metadata lives) and ``primary.xml`` (every package, its epoch,
  version and release) -> versions offered per package, spelled as dnf spells them;
* :func:`pep503_files`: a PEP 503 project page (``<index>/torch/``) -> each file, its URL and the
  ``#sha256=`` its link carries;
* :func:`debian_version_key`: versions sorted as dpkg sorts them (``~`` before everything).

:func:`fetch` reads one URL (``http``, ``https`` or ``file``) within a time bound and raises
:class:`SourceError` naming the URL; a URL's user and password never reach a message.
"""

from __future__ import annotations

import gzip
import html.parser
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable

__all__ = [
    "SourceError",
    "apt_packages",
    "debian_version_key",
    "dnf_primary",
    "fetch",
    "newest",
    "pep503_files",
    "public_url",
    "repomd_primary",
    "upstream_version",
]

FETCH_TIMEOUT_S = 60
_REPO_NS = "{http://linux.duke.edu/metadata/repo}"
_COMMON_NS = "{http://linux.duke.edu/metadata/common}"


class SourceError(RuntimeError):
    """A source that could not be read or does not offer what was asked; names the URL."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{public_url(url)}: {message}")
        self.url = public_url(url)


def public_url(url: str) -> str:
    """``url`` without its user, password and query: what a lock or a message may show."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def fetch(url: str, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """The body of ``url`` (gunzipped when the name ends in ``.gz``); :class:`SourceError`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise SourceError(url, f"HTTP {exc.code} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise SourceError(url, str(getattr(exc, "reason", exc))) from None
    if urllib.parse.urlsplit(url).path.endswith(".gz"):
        try:
            return gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise SourceError(url, f"not a gzip file ({exc})") from None
    return body


# --- versions ---------------------------------------------------------------------------------


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _fragment_key(text: str) -> tuple[tuple[int, ...], ...]:
    """dpkg's ``verrevcmp`` as a sort key: non-digits by dpkg's order, digits as numbers."""
    parts: list[tuple[int, ...]] = []
    for letters, digits in re.findall(r"(\D*)(\d*)", text):
        if not letters and not digits:
            continue
        # a trailing 0 closes the letters so that "1.0~rc" < "1.0" < "1.0a"
        parts.append((*(_order(c) for c in letters), 0, int(digits or 0)))
    parts.append((0,))  # the end: after "~", before any other character
    return tuple(parts)


def debian_version_key(version: str) -> tuple[int, tuple, tuple]:
    """A sort key ordering Debian versions (``[epoch:]upstream[-revision]``) as dpkg does; also
    fit for dnf's ``[epoch:]version-release`` of NVIDIA's packages."""
    epoch, _, rest = version.partition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return (int(epoch or 0), _fragment_key(upstream), _fragment_key(revision))


def newest(versions: Iterable[str]) -> str | None:
    """The highest of ``versions`` by :func:`debian_version_key`, or None."""
    return max(versions, key=debian_version_key, default=None)


def upstream_version(version: str) -> str:
    """``"1:580.105.08-1"`` -> ``"580.105.08"`` (no epoch, no revision/release)."""
    return version.split(":", 1)[-1].split("-", 1)[0]


# --- apt --------------------------------------------------------------------------------------


def apt_packages(text: str) -> dict[str, list[str]]:
    """Package name -> every version a ``Packages`` index offers (in file order, no repeats)."""
    offered: dict[str, list[str]] = {}
    name = version = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if name and version and version not in offered.setdefault(name, []):
                offered[name].append(version)
            name = version = None
        elif line.startswith("Package:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
    return offered


# --- dnf --------------------------------------------------------------------------------------


def _xml(raw: bytes, url: str) -> ET.Element:
    try:
        return ET.fromstring(raw)  # noqa: S314  (repository metadata, no DTD expansion here)
    except ET.ParseError as exc:
        raise SourceError(url, f"not XML ({exc})") from None


def repomd_primary(raw: bytes, url: str = "repomd.xml") -> str:
    """The ``primary`` metadata's path (``location href``) in a ``repomd.xml``."""
    root = _xml(raw, url)
    for data in root.iter(f"{_REPO_NS}data"):
        if data.get("type") == "primary":
            location = data.find(f"{_REPO_NS}location")
            if location is not None and location.get("href"):
                return str(location.get("href"))
    raise SourceError(url, "no primary metadata listed")


def dnf_primary(raw: bytes, url: str = "primary.xml") -> dict[str, list[str]]:
    """Package name -> every version ``primary.xml`` offers, spelled ``[epoch:]ver-rel`` (the
    epoch only when it is not 0), as ``dnf install name-ver-rel`` takes it."""
    root = _xml(raw, url)
    offered: dict[str, list[str]] = {}
    for package in root.iter(f"{_COMMON_NS}package"):
        name = package.findtext(f"{_COMMON_NS}name")
        ver = package.find(f"{_COMMON_NS}version")
        if not name or ver is None or not ver.get("ver"):
            continue
        version = f"{ver.get('ver')}-{ver.get('rel')}" if ver.get("rel") else str(ver.get("ver"))
        if ver.get("epoch") not in (None, "", "0"):
            version = f"{ver.get('epoch')}:{version}"
        if version not in offered.setdefault(name, []):
            offered[name].append(version)
    return offered


# --- PEP 503 ----------------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def pep503_files(page: str, page_url: str) -> list[tuple[str, str, str | None]]:
    """``(file name, absolute URL without fragment, sha256 or None)`` of every link of a PEP 503
    project page; the file name is the link's text, as PEP 503 requires."""
    parser = _Links()
    parser.feed(page)
    files = []
    for href, text in parser.links:
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        name = text or urllib.parse.unquote(url.rsplit("/", 1)[-1])
        sha = fragment[len("sha256=") :].lower() if fragment.startswith("sha256=") else None
        files.append((name, url, sha))
    return files
