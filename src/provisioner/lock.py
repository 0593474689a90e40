"""The fleet's lock file (``inventories/X.lock.toml`` next to ``inventories/X.py``): its format,
reading, writing, the diff ``--upgrade`` prints, and what a lock asks of one host.

A lock lists every moving part of a fleet as resolved once from the configured sources, each
item with where it came from and which hosts use it (docs/lock.md)::

    lock_version = 1

    [[driver]]
    name = "nvidia-open"
    version = "580.105.08-1"
    distro = "debian12"
    branch = "580"
    source = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/Packages.gz"
    hosts = ["gpu1", "gpu3"]

Items are written in a fixed order (kind, then their key), so that resolving the same things
again gives the same bytes. Resolution lives in :mod:`provisioner.lock_resolve`; the deploys ask
this module what the lock says for their host (:func:`for_host`, :func:`locked_models`,
:func:`driver_version`), through the lock named by ``$PROVISIONER_LOCK`` (set by ``provision
apply|models sync|models update``; an empty value: no lock).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "ENV",
    "FORMAT_VERSION",
    "KINDS",
    "Change",
    "Item",
    "Lock",
    "LockError",
    "current",
    "diff",
    "driver_version",
    "for_host",
    "locked_models",
    "path_for",
    "read",
    "render",
]

ENV = "PROVISIONER_LOCK"
FORMAT_VERSION = 1
#: The kinds of items, in the order a lock lists them (and ``--upgrade`` names them).
KINDS = ("driver", "fabricmanager", "toolkit", "ollama", "torch", "model")
#: Per kind: the fields that say which thing an item is (what ``--upgrade`` may move is the rest).
KEYS: dict[str, tuple[str, ...]] = {
    "driver": ("distro", "name"),
    "fabricmanager": ("distro", "name"),
    "toolkit": ("distro", "name"),
    "ollama": ("version", "arch"),
    "torch": ("source", "version", "python", "arch"),
    "model": ("name", "source"),
}
#: Per kind: every field, in the order it is written (``hosts`` last, always).
FIELDS: dict[str, tuple[str, ...]] = {
    "driver": ("name", "version", "distro", "branch", "source"),
    "fabricmanager": ("name", "version", "distro", "branch", "source"),
    "toolkit": ("name", "version", "distro", "source"),
    "ollama": ("name", "version", "arch", "url", "sha256", "source"),
    "torch": ("name", "version", "python", "arch", "url", "sha256", "source"),
    "model": ("name", "version", "digest", "size", "source"),
}
_INT_FIELDS = {"size"}
#: Fields an item of a kind must have beyond name, version and source.
REQUIRED: dict[str, tuple[str, ...]] = {
    "ollama": ("sha256",),
    "torch": ("sha256",),
    "model": ("digest",),
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class LockError(ValueError):
    """A lock file that cannot be used; the message names the file and the key."""


@dataclass
class Item:
    """One locked thing: its kind, its fields (name, version, sum or digest, source...) and the
    hosts that use it."""

    kind: str
    fields: dict[str, Any]
    hosts: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.kind, *(str(self.fields.get(f, "")) for f in KEYS[self.kind]))

    @property
    def pinned(self) -> str:
        """What the item pins, in one word: its sha256, digest or version."""
        return str(self.fields.get("sha256") or self.fields.get("digest") or self.fields["version"])

    @property
    def label(self) -> str:
        scope = self.fields.get("distro") or self.fields.get("arch") or ""
        return f"{self.kind} {self.fields['name']}" + (f" ({scope})" if scope else "")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.fields, "hosts": list(self.hosts)}


@dataclass
class Lock:
    """A parsed lock: its items in their written order."""

    items: list[Item] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Item]:
        return [item for item in self.items if item.kind == kind]

    def by_key(self) -> dict[tuple[Any, ...], Item]:
        return {item.key: item for item in self.items}

    def sorted(self) -> Lock:
        order = {kind: i for i, kind in enumerate(KINDS)}
        items = sorted(self.items, key=lambda item: (order[item.kind], item.key))
        return Lock([Item(i.kind, i.fields, sorted(set(i.hosts))) for i in items])


def path_for(inventory: str) -> Path | None:
    """``inventories/prod.py`` -> ``inventories/prod.lock.toml``; None for a host string
    (``@local``, ``host1,host2``), which has no file to put a lock next to."""
    if not inventory.endswith(".py"):
        return None
    return Path(inventory[: -len(".py")] + ".lock.toml")


# --- writing ----------------------------------------------------------------------------------


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def render(lock: Lock, inventory: str = "") -> str:
    """The lock's text: a header, ``lock_version``, then one table per item, in fixed order."""
    lines = [
        f"# Lock of {inventory or 'the fleet'}, written by `provision lock`. Review it in git;",
        "# move it with `provision lock INVENTORY --upgrade [COMPONENT...]` (docs/lock.md).",
        f"lock_version = {FORMAT_VERSION}",
    ]
    for item in lock.sorted().items:
        lines += ["", f"[[{item.kind}]]"]
        for name in FIELDS[item.kind]:
            if item.fields.get(name) is not None:
                lines.append(f"{name} = {_value(item.fields[name])}")
        lines.append(f"hosts = {_value(item.hosts)}")
    return "\n".join(lines) + "\n"


# --- reading ----------------------------------------------------------------------------------


def _field_problem(kind: str, name: str, value: Any) -> str | None:
    if name in _INT_FIELDS:
        return None if isinstance(value, int) and not isinstance(value, bool) else "not a number"
    if not isinstance(value, str) or not value:
        return "not a non-empty string"
    if name == "sha256" and not _SHA256.match(value):
        return f"{value!r} is not a sha256 (64 lower-case hex digits)"
    if name == "digest" and not _DIGEST.match(value):
        return f"{value!r} is not a digest (sha256:<64 hex digits>)"
    return None


def _item(path: str, kind: str, index: int, table: Any) -> Item:
    where = f"{path}: {kind}[{index}]"
    if not isinstance(table, Mapping):
        raise LockError(f"{where}: not a table")
    unknown = sorted(set(table) - set(FIELDS[kind]) - {"hosts"})
    if unknown:
        raise LockError(f"{where}: unknown key {unknown[0]!r}")
    required = {"name", "version", "source", *REQUIRED.get(kind, ())}
    for name in sorted(required | set(table) - {"hosts"}):
        if name not in table:
            raise LockError(f"{where}: key {name!r} is missing")
        problem = _field_problem(kind, name, table[name])
        if problem:
            raise LockError(f"{where}: key {name!r}: {problem}")
    hosts = table.get("hosts")
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise LockError(f"{where}: key 'hosts' must be a list of host names")
    fields = {name: table[name] for name in FIELDS[kind] if name in table}
    return Item(kind, fields, list(hosts))


def parse(text: str, path: str = "lock") -> Lock:
    """A lock from its text; :class:`LockError` naming the file and key when it is unusable."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"{path}: not TOML ({exc})") from None
    if data.get("lock_version") != FORMAT_VERSION:
        raise LockError(
            f"{path}: key 'lock_version' is {data.get('lock_version')!r}, this provisioner "
            f"reads {FORMAT_VERSION}"
        )
    unknown = sorted(set(data) - set(KINDS) - {"lock_version"})
    if unknown:
        raise LockError(f"{path}: unknown key {unknown[0]!r} (kinds: {', '.join(KINDS)})")
    items = []
    for kind in KINDS:
        tables = data.get(kind, [])
        if not isinstance(tables, list):
            raise LockError(f"{path}: key {kind!r} must be an array of tables ([[{kind}]])")
        items += [_item(path, kind, i, table) for i, table in enumerate(tables)]
    _check_unique(items, path)
    return Lock(items)


def _check_unique(items: list[Item], path: str) -> None:
    """One item per thing: two tables for the same key would leave which one a host takes to
    chance (the second would be dropped by the next ``provision lock``)."""
    seen: dict[tuple[Any, ...], int] = {}
    counts: dict[str, int] = {}
    for item in items:
        index = counts[item.kind] = counts.get(item.kind, -1) + 1
        if item.key in seen:
            fields = ", ".join(KEYS[item.kind])
            raise LockError(
                f"{path}: {item.kind}[{index}] repeats {item.kind}[{seen[item.key]}] (same "
                f"{fields}): one item per thing, with every host that uses it in its hosts"
            )
        seen[item.key] = index


def read(path: Path) -> Lock | None:
    """The lock at ``path``, None when there is none; :class:`LockError` when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"{path}: cannot be read ({exc})") from None
    return parse(text, str(path))


# --- diff -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One item that moved between two locks: ``old`` None is new, ``new`` None is gone."""

    kind: str
    label: str
    old: str | None
    new: str | None

    def line(self) -> str:
        return f"{self.label}: {self.old or '(none)'} -> {self.new or '(none)'}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "item": self.label, "old": self.old, "new": self.new}


def _shown(item: Item) -> str:
    pinned = item.pinned
    version = str(item.fields["version"])
    return version if pinned == version else f"{version} {pinned}"


def diff(old: Lock | None, new: Lock) -> list[Change]:
    """What moved from ``old`` to ``new``, item by item (same key, another version, sum or
    digest), plus the items that appeared or went, in lock order."""
    before = old.by_key() if old else {}
    after = new.by_key()
    changes = []
    for key, item in new.sorted().by_key().items():
        was = before.get(key)
        if was is None:
            changes.append(Change(item.kind, item.label, None, _shown(item)))
        elif (was.pinned, was.fields["version"]) != (item.pinned, item.fields["version"]):
            changes.append(Change(item.kind, item.label, _shown(was), _shown(item)))
    for key, item in before.items():
        if key not in after:
            changes.append(Change(item.kind, item.label, _shown(item), None))
    return changes


# --- what a lock asks of one host -------------------------------------------------------------


@cache
def _load(path: str) -> Lock | None:
    return read(Path(path)) if path else None


def current() -> Lock | None:
    """The lock of this run (``$PROVISIONER_LOCK``), None without one."""
    return _load(os.environ.get(ENV, ""))


def for_host(lock: Lock | None, host: str, kinds: Iterable[str] = KINDS) -> list[Item]:
    """The items of ``lock`` that ``host`` uses (of ``kinds``)."""
    wanted = set(kinds)
    return [i for i in (lock.items if lock else []) if i.kind in wanted and host in i.hosts]


def locked_models(lock: Lock | None, host: str) -> dict[str, str] | None:
    """Model name -> locked manifest digest for ``host``; None when the fleet is not locked."""
    if lock is None:
        return None
    return {str(i.fields["name"]): str(i.fields["digest"]) for i in for_host(lock, host, ["model"])}


def driver_version(lock: Lock | None, host: str) -> str | None:
    """The driver package version locked for ``host``, or None."""
    items = for_host(lock, host, ["driver"])
    return str(items[0].fields["version"]) if items else None


def ollama_view(lock: Lock | None, host: str) -> dict[str, Any] | None:
    """The Ollama part of ``lock`` for ``host``, as :func:`ollama_release.sum_from_lock` reads
    it: ``{"ollama": [{"version", "arch", "sha256", ...}]}``; None without a lock."""
    if lock is None:
        return None
    return {"ollama": [dict(i.fields) for i in for_host(lock, host, ["ollama"])]}


def ollama_problem(view: Mapping[str, Any] | None, release: Any) -> str | None:
    """Why a locked host may not install ``release`` (an ``ollama_release.Release``): the lock
    holds no sum for its version and architecture. None when fine or when not locked."""
    if view is None or release.sha256_source in ("lock file", "ollama_sha256"):
        return None
    return (
        f"the lock holds no Ollama {release.version} for {release.arch} for this host: run "
        "`provision lock INVENTORY` (or --upgrade ollama) and review the lock"
    )


def honour_driver(target: Any) -> None:
    """Install exactly the locked driver on ``target``: its ``nvidia_driver_version`` becomes
    the lock's (an operator's own pin, from which the lock was made, stays). The Fabric Manager
    deploy installs the driver's version, so it follows."""
    version = driver_version(current(), target.name)
    if version and not target.data.get("nvidia_driver_version"):
        target.data.nvidia_driver_version = version.split(":", 1)[-1]


def model_problems(locked: Mapping[str, str], name: str, have: Mapping[str, Any]) -> list[str]:
    """What is wrong with the store's copy of ``name`` (``OllamaModels`` entry) in a locked
    fleet: it is not in the lock, or it is another manifest than the locked one."""
    digest = locked.get(name)
    if digest is None:
        return [f"{name} is planned but not in the lock"]
    if have.get("digest") != digest:
        return [f"{name} is {have.get('digest')}, the lock holds {digest}"]
    return []


def package_version(lock: Lock | None, host: str, kind: str, name: str) -> str | None:
    """The version of package ``name`` (a ``toolkit`` or ``fabricmanager`` item) locked for
    ``host``, or None."""
    for item in for_host(lock, host, [kind]):
        if item.fields["name"] == name:
            return str(item.fields["version"])
    return None


def torch_wheel(lock: Lock | None, host: str, index_url: str, version: str) -> str | None:
    """The locked wheel of torch ``version`` from ``index_url`` for ``host``, as a pip direct
    reference checked by pip against its sum (``torch @ URL#sha256=…``); None without one."""
    from provisioner.lock_sources import public_url

    page = public_url(index_url.rstrip("/") + "/torch/")
    for item in for_host(lock, host, ["torch"]):
        if item.fields["version"] == version and item.fields["source"] == page:
            return f"torch @ {item.fields['url']}#sha256={item.fields['sha256']}"
    return None
