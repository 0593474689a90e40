"""``provision lock``: what each host needs, resolved from the sources its own settings name.

Each host is planned exactly as ``provision apply`` plans it (the same data keys, the same
facts, the same plan functions: :func:`gpu_stack.plan_driver`, :func:`gpu_stack.plan_toolkit`,
:func:`gpu_stack.plan_torch`, :func:`ollama_release.resolve`, the models deploy's planner and
the models operation's sources), which gives a list of :class:`Need` per host. A need that the
old lock already answers keeps its answer unless its kind is upgraded; every other need is
resolved once for all the hosts that share it:

* driver / fabricmanager / toolkit: the newest version of the package the host installs, in
  its branch, from the repository's ``Packages.gz`` (apt) or ``repodata`` ``primary`` (dnf);
* ollama: the archive's URL and its line of the release's ``sha256sum.txt``;
* torch: the wheel the host's Python and architecture take, with its PEP 503 ``#sha256=``;
* model: the manifest's digest and total size, from the registry the host pulls from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioner import lock as lockfile
from provisioner import lock_sources as src

if TYPE_CHECKING:
    from pyinfra.api import Host

    from provisioner.inventory import LoadedInventory

__all__ = ["LockResult", "Need", "host_needs", "resolve_needs", "run"]


@dataclass(frozen=True)
class Need:
    """One thing a host needs locked: the fields known before resolution (those of the kind's
    key among them) and what the resolver is given (``how``)."""

    kind: str
    fields: tuple[tuple[str, Any], ...]
    how: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> tuple[Any, ...]:
        known = dict(self.fields)
        return (self.kind, *(str(known.get(f, "")) for f in lockfile.KEYS[self.kind]))

    def get(self, name: str) -> Any:
        return dict(self.fields).get(name, dict(self.how).get(name))


@dataclass
class LockResult:
    """What ``provision lock`` did: the lock, what moved, and each host that could not be
    planned or resolved (host -> why)."""

    path: str
    lock: lockfile.Lock
    changes: list[lockfile.Change]
    errors: dict[str, str] = field(default_factory=dict)
    written: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "lock": self.path,
            "items": [item.to_json() for item in self.lock.sorted().items],
            "changes": [change.to_json() for change in self.changes],
            "errors": dict(self.errors),
        }


# --- what one host needs ----------------------------------------------------------------------


def _need(kind: str, how: Mapping[str, Any] | None = None, **fields: Any) -> Need:
    return Need(kind, tuple(fields.items()), tuple((how or {}).items()))


def _index_url(family: str, repo_url: str) -> str:
    return repo_url + ("repodata/repomd.xml" if family == "dnf" else "Packages.gz")


def package_needs(driver: Any, toolkit: Any) -> list[Need]:
    """The driver, Fabric Manager and toolkit packages of a host's GPU plan (none on a CPU-only
    host or with the distribution's own driver, which its own archive versions)."""
    target = driver.distro
    if driver.skip or target is None or target.distribution_driver:
        return []
    common = {"distro": target.key, "source": _index_url(target.family.name, driver.repo_url)}
    meta = target.driver_packages(driver.flavour, driver.branch, driver.kernel)[0]
    how = {"pinned": driver.version or "", "branch_prefix": f"{driver.branch}."}
    needs = [_need("driver", how, name=meta, branch=driver.branch, **common)]
    if driver.nvswitch:
        package = target.fabricmanager_package(driver.branch)
        fm_how = {"follows": meta}
        needs.append(_need("fabricmanager", fm_how, name=package, branch=driver.branch, **common))
    if toolkit is not None and toolkit.package and not toolkit.skip:
        needs.append(_need("toolkit", {}, name=toolkit.package, **common))
    return needs


def ollama_need(data: Mapping[str, Any], machine: str | None) -> Need:
    """The Ollama release a host installs (the Ollama deploy's own settings and resolution)."""
    from provisioner import ollama_release
    from provisioner.deploys.ollama import settings_from

    cfg, problems = settings_from(data)
    if cfg is None:
        raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
    release = ollama_release.resolve(
        cfg.version, machine, cfg.release_url, cfg.sha256, cfg.allow_vulnerable,
        sums_url_template=cfg.sha256sum_url,
    )  # fmt: skip
    how = {"url": release.url, "sums_url": release.sums_url, "pinned": release.sha256 or ""}
    source = release.sums_url if release.sha256 is None else "ollama_sha256"
    return _need(
        "ollama", how, name="ollama", version=release.version, arch=release.arch, source=source
    )


def torch_need(plan: Any, machine: str | None) -> Need:
    """The torch wheel a host installs: its index page, version, Python and architecture."""
    from provisioner import gpu_stack

    minor = ".".join(plan.version.split(".")[:2])
    python = gpu_stack.choose_python(plan.distro, minor, plan.version)
    py = "cp" + str(python.get("version") or "").replace(".", "")
    page = plan.index_url.rstrip("/") + "/torch/"
    how = {"local": f"{plan.version}+{plan.tag}"}
    return _need(
        "torch", how, source=page, version=plan.version, python=py, arch=machine or "x86_64"
    )


def model_needs(
    planned: Iterable[str], pinned: Iterable[str], source_settings: Mapping[str, Any]
) -> list[Need]:
    """Each planned or pinned model and the registry manifest the host takes it from (the
    models operation's own sources, by the names it uses)."""
    from provisioner.operations.ollama import _sources

    sources = _sources(
        list(planned),
        list(pinned),
        source_settings.get("registry"),
        str(source_settings.get("namespace") or "library"),
        bool(source_settings.get("insecure")),
    )
    return [
        _need(
            "model",
            {"registry": s.registry_url, "repository": s.repository},
            name=name,
            version=s.tag,
            source=s.manifest_url,
        )
        for name, s in sources.items()
    ]


def host_needs(target: Host) -> list[Need]:
    """Everything ``target`` (connected, in its pyinfra context) needs locked."""
    from provisioner import gpu_stack, settings
    from provisioner.deploys import _gpu_plan
    from provisioner.deploys.models import planned_models, source_settings

    data = settings.resolve(target.data.dict())
    facts = _gpu_plan.gather_facts()
    machine = (facts.get("os") or {}).get("arch")
    driver = gpu_stack.plan_driver(data, facts)
    toolkit = gpu_stack.plan_toolkit(data, driver)
    torch = gpu_stack.plan_torch(data, driver, facts.get("os"))
    pinned = list(data.get("models_pinned") or [])
    return [
        *package_needs(driver, toolkit),
        ollama_need(data, machine),
        torch_need(torch, machine),
        *model_needs(planned_models(target), pinned, source_settings(target.data)),
    ]


# --- resolving --------------------------------------------------------------------------------


class Sources:
    """The fetches of one ``provision lock`` run, each URL read once."""

    def __init__(self, fetch: Callable[[str], bytes] = src.fetch) -> None:
        self._fetch = fetch
        self._seen: dict[str, Any] = {}

    def text(self, url: str) -> str:
        if url not in self._seen:
            self._seen[url] = self._fetch(url).decode("utf-8", "replace")
        return str(self._seen[url])

    def offered(self, index_url: str) -> dict[str, list[str]]:
        """Package -> versions of an apt ``Packages.gz`` or a dnf ``repomd.xml``'s primary."""
        key = "offered " + index_url
        if key not in self._seen:
            if index_url.endswith("repomd.xml"):
                href = src.repomd_primary(self.text(index_url).encode(), index_url)
                primary = index_url.rsplit("repodata/", 1)[0] + href
                self._seen[key] = src.dnf_primary(self._fetch(primary), primary)
            else:
                self._seen[key] = src.apt_packages(self.text(index_url))
        return dict(self._seen[key])


def _package(need: Need, sources: Sources, resolved: Mapping[tuple, dict[str, Any]]) -> str:
    source = str(need.get("source"))
    versions = sources.offered(source).get(str(need.get("name")), [])
    if need.kind == "fabricmanager":  # at the driver's upstream version, as the deploy installs
        driver = next(
            (v for k, v in resolved.items() if k[0] == "driver" and k[1] == need.get("distro")),
            None,
        )
        wanted = src.upstream_version(driver["version"]) if driver else ""
        versions = [v for v in versions if src.upstream_version(v) == wanted]
    elif need.kind == "driver":
        versions = [
            v for v in versions if src.upstream_version(v).startswith(need.get("branch_prefix"))
        ]
        pinned = need.get("pinned")
        if pinned:
            versions = [v for v in versions if v.split(":", 1)[-1] == pinned]
    found = src.newest(versions)
    if found is None:
        raise src.SourceError(source, f"offers no {need.get('name')} {_wanted(need, resolved)}")
    return found


def _wanted(need: Need, resolved: Mapping[tuple, dict[str, Any]]) -> str:
    if need.kind == "driver":
        return need.get("pinned") or f"in branch {need.get('branch')}"
    if need.kind == "fabricmanager":
        return "at the locked driver's version"
    return "version"


def _ollama(need: Need, sources: Sources) -> dict[str, Any]:
    from provisioner import ollama_release

    url = str(need.get("url"))
    asset = url.split("?", 1)[0].rsplit("/", 1)[-1]
    sha = need.get("pinned")
    if not sha:
        sums = str(need.get("sums_url"))
        sha = ollama_release.sums_line(sources.text(sums), asset)
        if sha is None:
            raise src.SourceError(sums, f"lists no sha256 for {asset}")
    return {"name": asset, "url": src.public_url(url), "sha256": sha}


_WHEEL = re.compile(
    r"^(?P<dist>[^-]+)-(?P<ver>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


def _wheel_rank(name: str, version: str, local: str, python: str, arch: str) -> int | None:
    """How well a wheel fits (lower is better), None when it does not fit at all."""
    match = _WHEEL.match(name)
    if not match or match["ver"] not in (local, version):
        return None
    pythons = match["py"].split(".")
    platforms = match["plat"].split(".")
    fits_py = python in pythons or "py3" in pythons
    fits_plat = "any" in platforms or any("linux" in p and p.endswith(arch) for p in platforms)
    if not fits_py or not fits_plat:
        return None
    return (0 if python in pythons else 2) + (0 if match["ver"] == local else 1)


def _torch(need: Need, sources: Sources) -> dict[str, Any]:
    page = str(need.get("source"))
    files = src.pep503_files(sources.text(page), page)
    ranked = []
    for name, url, sha in files:
        rank = _wheel_rank(
            name, str(need.get("version")), str(need.get("local")),
            str(need.get("python")), str(need.get("arch")),
        )  # fmt: skip
        if rank is not None and sha:
            ranked.append((rank, name, url, sha))
    if not ranked:
        raise src.SourceError(
            page,
            f"offers no torch {need.get('local')} wheel with a sha256 for "
            f"{need.get('python')} on {need.get('arch')}",
        )
    _, name, url, sha = min(ranked)
    return {"name": name, "url": src.public_url(url), "sha256": sha}


def _model(need: Need, registries: dict[str, Any]) -> dict[str, Any]:
    from provisioner.ollama_api import ManifestError, Registry, RegistryError

    url = str(need.get("registry"))
    registry = registries.setdefault(url, Registry(url))
    try:
        manifest = registry.manifest(str(need.get("repository")), str(need.get("version")))
    except (RegistryError, ManifestError) as exc:
        raise src.SourceError(str(need.get("source")), str(exc)) from None
    return {"digest": manifest.digest, "size": manifest.size}


def resolve_need(
    need: Need,
    sources: Sources,
    registries: dict[str, Any],
    resolved: Mapping[tuple, dict[str, Any]],
) -> dict[str, Any]:
    """The fields of the item answering ``need`` (in the kind's written order)."""
    fields = dict(need.fields)
    if need.kind in ("driver", "fabricmanager", "toolkit"):
        fields["version"] = _package(need, sources, resolved)
    elif need.kind == "ollama":
        fields.update(_ollama(need, sources))
    elif need.kind == "torch":
        fields.update(_torch(need, sources))
    else:
        fields.update(_model(need, registries))
    fields["source"] = src.public_url(str(fields["source"]))
    return {name: fields[name] for name in lockfile.FIELDS[need.kind] if name in fields}


def _order(need: Need) -> int:
    return lockfile.KINDS.index(need.kind)


def _keep(old: lockfile.Item | None, need: Need, upgrade: set[str]) -> bool:
    if old is None or need.kind in upgrade:
        return False
    pinned = need.get("pinned") if need.kind == "driver" else None
    return not pinned or str(old.fields["version"]).split(":", 1)[-1] == pinned


def resolve_needs(
    needs: Mapping[str, list[Need]],
    old: lockfile.Lock | None,
    upgrade: Iterable[str] = (),
    sources: Sources | None = None,
    registries: dict[str, Any] | None = None,
    kept_hosts: Iterable[str] = (),
) -> tuple[lockfile.Lock, dict[str, str]]:
    """The lock answering every host's needs, and the hosts whose needs could not be resolved
    (host -> "kind name: source: why"). A need the old lock answers keeps its answer unless its
    kind is in ``upgrade``; the old items of ``kept_hosts`` (hosts that could not be planned)
    stay as they were for them."""
    sources = sources or Sources()
    registries = {} if registries is None else registries
    upgrade = set(upgrade)
    before = old.by_key() if old else {}
    by_key: dict[tuple, tuple[Need, list[str]]] = {}
    for host, host_needs_ in needs.items():
        for need in host_needs_:
            by_key.setdefault(need.key, (need, []))[1].append(host)
    resolved: dict[tuple, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    items: dict[tuple, lockfile.Item] = {}
    for key, (need, hosts) in sorted(by_key.items(), key=lambda kv: (_order(kv[1][0]), kv[0])):
        was = before.get(key)
        try:
            if _keep(was, need, upgrade):
                assert was is not None
                fields = dict(was.fields)
            else:
                fields = resolve_need(need, sources, registries, resolved)
        except src.SourceError as exc:
            for host in hosts:
                errors.setdefault(host, f"{need.kind} {need.get('name') or ''}: {exc}".strip())
            continue
        resolved[key] = fields
        items[key] = lockfile.Item(need.kind, fields, list(hosts))
    _keep_unplanned(items, before, set(kept_hosts) | set(errors))
    return lockfile.Lock(list(items.values())).sorted(), errors


def _keep_unplanned(
    items: dict[tuple, lockfile.Item], before: Mapping[tuple, lockfile.Item], hosts: set[str]
) -> None:
    """Hosts that could not be planned or resolved keep what the old lock said for them."""
    for key, was in before.items():
        mine = [h for h in was.hosts if h in hosts]
        if not mine:
            continue
        if key in items:
            items[key].hosts = sorted(set(items[key].hosts) | set(mine))
        else:
            items[key] = lockfile.Item(was.kind, dict(was.fields), mine)


# --- the command ------------------------------------------------------------------------------


def gather_needs(loaded: LoadedInventory) -> tuple[dict[str, list[Need]], dict[str, str]]:
    """Every selected host's needs (connected in parallel), and the hosts that could not be
    reached or planned (host -> why)."""
    import logging

    from provisioner import fleet

    pyinfra_log = logging.getLogger("pyinfra")
    level = pyinfra_log.level
    pyinfra_log.setLevel(logging.ERROR)
    state = fleet.make_state(loaded)
    try:
        unreached = fleet.connect(state, loaded.hosts)
        needs, errors = fleet.each(state, fleet.connected(state, loaded.hosts), host_needs)
    finally:
        fleet.disconnect(state)
        pyinfra_log.setLevel(level)
    problems = {name: f"unreachable: {why}" for name, why in unreached.items()}
    problems.update({name: f"cannot be planned: {why}" for name, why in errors.items()})
    return needs, problems


def run(loaded: LoadedInventory, upgrade: Iterable[str] | None = None) -> LockResult:
    """``provision lock``: read the old lock, resolve, write the new one when it differs.

    + upgrade: None keeps every answer of the old lock; a list re-resolves those kinds (an
      empty list: every kind)
    """
    path = lockfile.path_for(loaded.source)
    if path is None:
        raise lockfile.LockError(
            f"{loaded.source}: a lock is written next to an inventory file (inventories/X.py)"
        )
    old = lockfile.read(path)
    kinds = set() if upgrade is None else set(upgrade or lockfile.KINDS)
    needs, problems = gather_needs(loaded)
    new, errors = resolve_needs(needs, old, kinds, kept_hosts=problems)
    if loaded.limit and old is not None:  # hosts left out by --limit keep their items
        others = {h for item in old.items for h in item.hosts} - {h.name for h in loaded.hosts}
        items = {item.key: item for item in new.items}
        _keep_unplanned(items, old.by_key(), others)
        new = lockfile.Lock(list(items.values())).sorted()
    text = lockfile.render(new, path.name.replace(".lock.toml", ".py"))
    written = not path.exists() or path.read_text(encoding="utf-8") != text
    if written:
        path.write_text(text, encoding="utf-8")
    result = LockResult(str(path), new, lockfile.diff(old, new), {**problems, **errors}, written)
    return result
