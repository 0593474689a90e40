"""The control side of ``provision models sync | update | mirror``.

* :func:`sync` runs the ``ollama_models`` deploy over an inventory with pyinfra's API, shows
  each host's pulls with rich as they stream, and reports per host what changed, judged from
  the store before and after (not from what the operation claimed);
* :func:`update` is ``sync`` with every present tag compared to its registry manifest, host
  by host or in batches, followed by a check of every host's models; one failing host leaves
  the others updated and is named in the result (exit code 1);
* :func:`mirror` copies models from an upstream registry (the public library by default) into a
  site registry over the Docker v2 protocol, every blob checked, so N hosts fetch from the site
  instead of N times from the internet; :func:`mirror_inventory` mirrors an inventory's plan.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyinfra.api.state import BaseStateCallback

from provisioner import lock as fleet_lock
from provisioner.fleet import in_context
from provisioner.ollama_api import (
    Blob,
    ManifestError,
    ModelName,
    Registry,
    RegistryError,
    site_name,
)

if TYPE_CHECKING:
    from pyinfra.api import Host, State
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from provisioner.inventory import LoadedInventory

__all__ = [
    "HostResult",
    "MirrorResult",
    "ModelChange",
    "PullProgress",
    "SyncResult",
    "diff_models",
    "mirror",
    "mirror_inventory",
    "planned_by_host",
    "sync",
    "update",
]

PUBLIC_REGISTRY = "https://registry.ollama.ai"


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChange:
    """One model that a run added, updated or removed on a host."""

    model: str
    action: str  # "added" | "updated" | "removed"
    before: str | None = None  # manifest digest before the run
    after: str | None = None  # manifest digest after the run

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "action": self.action,
            "before": self.before,
            "after": self.after,
        }


@dataclass
class HostResult:
    """What a sync or update did on one host."""

    name: str
    changes: list[ModelChange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # from the check after the run
    models: dict[str, str] = field(default_factory=dict)  # name -> manifest digest, after
    would_change: bool = False  # --dry

    @property
    def status(self) -> str:
        if self.errors or self.problems:
            return "failed"
        return "changed" if self.changes or self.would_change else "unchanged"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "changes": [change.to_json() for change in self.changes],
            "errors": self.errors,
            "problems": self.problems,
            "models": self.models,
        }


@dataclass
class SyncResult:
    """The result of a sync or update over an inventory."""

    action: str  # "sync" | "update"
    dry: bool
    hosts: dict[str, HostResult]

    @property
    def failed_hosts(self) -> list[str]:
        return [name for name, result in self.hosts.items() if result.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_hosts else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "dry": self.dry,
            "hosts": {name: result.to_json() for name, result in self.hosts.items()},
            "failed_hosts": self.failed_hosts,
            "exit_code": self.exit_code,
        }

    def table(self) -> Table:
        from rich.table import Table

        table = Table(title=f"provision models {self.action}" + (" (dry run)" if self.dry else ""))
        table.add_column("host")
        table.add_column("status")
        table.add_column("changes")
        table.add_column("errors")
        colours = {"changed": "yellow", "unchanged": "green", "failed": "red"}
        for name, result in self.hosts.items():
            changes = "\n".join(
                f"{c.action} {c.model}"
                + (f" {_short(c.before)} -> {_short(c.after)}" if c.action == "updated" else "")
                for c in result.changes
            )
            if result.would_change and not result.changes:
                changes = "would change"
            table.add_row(
                name,
                f"[{colours[result.status]}]{result.status}[/]",
                changes or "-",
                "\n".join(result.errors + result.problems) or "-",
            )
        return table


def _short(digest: str | None) -> str:
    return digest.split(":", 1)[-1][:12] if digest else "-"


def diff_models(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
) -> list[ModelChange]:
    """What changed between two ``OllamaModels`` facts (only complete models count)."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old = before.get(name) or {}
        new = after.get(name) or {}
        old_digest = old.get("digest") if old.get("complete") else None
        new_digest = new.get("digest") if new.get("complete") else None
        if old_digest == new_digest:
            continue
        if old_digest is None:
            changes.append(ModelChange(name, "added", None, new_digest))
        elif new_digest is None:
            changes.append(ModelChange(name, "removed", old_digest, None))
        elif old.get("content") != new.get("content"):
            changes.append(ModelChange(name, "updated", old_digest, new_digest))
    return changes


# --- progress ---------------------------------------------------------------------------------


class PullProgress(BaseStateCallback):
    """Shows every pull of a run as a rich progress bar, per host and model.

    Also keeps the errors the pulls and refusals reported, per host, for the result.
    """

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self.tasks: dict[tuple[str, str], Any] = {}
        self.errors: dict[str, list[str]] = {}

    def host_refused(self, state: State, host: Host, reason: str) -> None:
        """A refused host (``provisioner.operations.system.fail_host``): its reason is kept."""
        self.errors.setdefault(host.name, []).append(reason)

    def ollama_pull_progress(
        self, state: State, host: Host, model: str, event: Mapping[str, Any]
    ) -> None:
        if "error" in event:
            self.errors.setdefault(host.name, []).append(str(event["error"]))
        if self.progress is None or not model:
            return
        key = (host.name, model)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(f"{host.name}  {model}", total=None)
        task = self.tasks[key]
        if "error" in event:
            self.progress.update(task, description=f"[red]{host.name}  {model}: failed")
            self.progress.stop_task(task)
            return
        total = int(event.get("total") or 0) or None
        completed = int(event.get("completed") or 0)
        if event.get("status") == "success":
            self.progress.update(task, total=total or 1, completed=total or 1)
            return
        self.progress.update(task, total=total, completed=completed)


def _rich_progress(console: Console | None) -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


# --- running the deploy -----------------------------------------------------------------------


def _store(state: State, target: Host) -> dict[str, Any]:
    from provisioner.deploys.models import source_settings
    from provisioner.facts.ollama import OllamaModels

    models_dir = source_settings(target.data)["models_dir"]
    return in_context(state, target, target.get_fact, OllamaModels, models_dir=models_dir)


def _failed_op_output(state: State, target: Host) -> list[str]:
    lines = []
    for op_hash in state.ops.get(target, {}):
        meta = state.get_op_data_for_host(target, op_hash).operation_meta
        if meta.is_complete() and not meta.did_succeed():
            names = ", ".join(state.get_op_meta(op_hash).names)
            output = [line for line in (meta.stderr_lines or meta.stdout_lines) if line.strip()]
            lines.append(f"{names} failed" + (f": {' / '.join(output[-3:])}" if output else ""))
    return lines


def _check(state: State, target: Host, after: Mapping[str, Any]) -> list[str]:
    """Every planned and pinned model present, complete and equal to its registry manifest."""
    from provisioner.deploys.models import planned_models, source_settings
    from provisioner.facts.ollama import OllamaRegistryManifest
    from provisioner.planner import wanted_models
    from provisioner.settings import host_settings

    data = host_settings(target.data)
    src = source_settings(data)
    locked = fleet_lock.locked_models(fleet_lock.current(), target.name)
    planned = in_context(state, target, planned_models, target)
    problems = []
    for name in wanted_models(planned, data.list_of("models_pinned")):
        have = after.get(name)
        if not have or not have.get("complete"):
            problems.append(f"{name} is missing" if not have else f"{name} is incomplete")
            continue
        if locked is not None:  # a locked fleet is checked against its lock, not the tag
            problems += fleet_lock.model_problems(locked, name, have)
            continue
        source = (
            site_name(name, src["registry"], src["namespace"])
            if src["registry"]
            else ModelName.parse(name)
        )
        remote = in_context(
            state, target, target.get_fact, OllamaRegistryManifest, url=source.manifest_url
        )
        if "error" in remote:
            problems.append(f"{name}: cannot check the registry: {remote['error']}")
        elif remote["content"] != have.get("content"):
            problems.append(f"{name} differs from {source.display} in the registry")
    return problems


def sync(
    loaded: LoadedInventory,
    *,
    prune: bool | None = None,
    refresh: bool = True,
    dry: bool = False,
    batch: int | None = None,
    check: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> SyncResult:
    """Make every host of ``loaded`` hold its planned models.

    + loaded: the inventory (``provisioner.inventory.load``)
    + prune: remove models neither planned nor pinned (None: each host's ``ollama_models_prune``)
    + refresh: re-pull present tags whose registry manifest changed
    + dry: only say which hosts would change
    + batch: hosts worked on at once (None: all; 1: host by host)
    + check: after the run, check every host's planned models: present, complete and equal
      to their registry manifest
    + console: where the progress bars go (rich; stderr by default)
    + show_progress: draw progress bars at all
    """
    from pyinfra.api.deploy import add_deploy

    from provisioner import fleet
    from provisioner.deploys.models import ollama_models

    state = fleet.make_state(loaded)
    results = {target.name: HostResult(target.name) for target in loaded.hosts}
    for name, error in fleet.connect(state, loaded.hosts).items():
        results[name].errors.append(f"cannot connect: {error}")
    connected = fleet.connected(state, loaded.hosts)
    before = _read_stores(state, connected, results)

    progress = _rich_progress(console) if show_progress and not dry else None
    handler = PullProgress(progress)
    state.add_callback_handler(handler)
    deploy_args: dict[str, Any] = {"prune": prune, "refresh": refresh}
    if batch:
        deploy_args["_parallel"] = batch
    finished = not dry  # after a real run (not --dry, not Ctrl-C): read and check the stores
    try:
        add_deploy(state, ollama_models, **deploy_args)
        if dry:
            _mark_would_change(state, connected, results)
        else:
            _run_ops(state, progress)
    except KeyboardInterrupt:  # Ctrl-C: every host's step was stopped, nothing is reported
        finished = False
        raise
    finally:
        after = _read_stores(state, connected, results) if finished else {}
        for target in connected:
            _collect(state, target, results[target.name], handler, before, after)
        if check and finished:
            _check_hosts(state, connected, results, after)
        fleet.disconnect(state)
    return SyncResult(action="update" if check else "sync", dry=dry, hosts=results)


def _read_stores(
    state: State, hosts: list[Host], results: dict[str, HostResult]
) -> dict[str, dict[str, Any]]:
    """The model store of every host, read in parallel; a host that cannot be read gets an
    error in its result and no entry."""
    import gevent

    stores: dict[str, dict[str, Any]] = {}

    def one(target: Host) -> None:
        try:
            stores[target.name] = _store(state, target)
        except Exception as exc:
            results[target.name].errors.append(f"cannot read the model store: {exc}")

    gevent.joinall([state.pool.spawn(one, target) for target in hosts])
    return stores


def _mark_would_change(state: State, hosts: list[Host], results: dict[str, HostResult]) -> None:
    """``--dry``: whether any operation would change each host."""
    for target in hosts:
        for op_hash in state.ops.get(target, {}):
            meta = state.get_op_data_for_host(target, op_hash).operation_meta
            will = in_context(state, target, lambda m=meta: m.will_change)
            results[target.name].would_change |= bool(will)


def _run_ops(state: State, progress: Progress | None) -> None:
    """Run the deploy, with the progress bars drawn meanwhile."""
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    from provisioner.interrupts import stop_run

    if progress is not None:
        progress.start()
    try:
        run_ops(state)
    except PyinfraError:
        pass  # every host failed: each one's reason is collected afterwards
    except KeyboardInterrupt:  # Ctrl-C: stop every host's step now
        stop_run(state)
        raise
    finally:
        if progress is not None:
            progress.stop()


def _collect(
    state: State,
    target: Host,
    result: HostResult,
    handler: PullProgress,
    before: Mapping[str, dict[str, Any]],
    after: Mapping[str, dict[str, Any]],
) -> None:
    """One host's result: why it failed, what changed in its store, what it holds now."""
    if target in state.failed_hosts:
        reported = handler.errors.get(target.name, [])
        result.errors += reported or _failed_op_output(state, target)
        if not result.errors:
            result.errors.append("the model sync failed (see the log above)")
    if target.name in before and target.name in after:
        result.changes = diff_models(before[target.name], after[target.name])
    if target.name in after:
        result.models = {n: m["digest"] for n, m in after[target.name].items() if m.get("digest")}


def _check_hosts(
    state: State,
    hosts: list[Host],
    results: dict[str, HostResult],
    after: Mapping[str, dict[str, Any]],
) -> None:
    """Check every host whose store was read after the run (:func:`_check`), in parallel."""
    import gevent

    def one(target: Host) -> None:
        if target.name not in after:
            return
        try:
            results[target.name].problems += _check(state, target, after[target.name])
        except Exception as exc:
            results[target.name].problems.append(f"check failed: {exc}")

    gevent.joinall([state.pool.spawn(one, target) for target in hosts])


def update(
    loaded: LoadedInventory,
    *,
    batch: int | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> SyncResult:
    """Re-pull every planned tag whose registry digest changed, ``batch`` hosts at a time,
    then check every host's models; failed hosts are named in the result (exit code 1)."""
    return sync(
        loaded,
        prune=False,
        refresh=True,
        batch=batch,
        check=True,
        console=console,
        show_progress=show_progress,
    )


# --- mirror -----------------------------------------------------------------------------------


@dataclass
class MirrorResult:
    """What :func:`mirror` did, per model."""

    registry: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.models.items() if entry["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    @property
    def bytes_fetched(self) -> int:
        return sum(int(entry.get("bytes", 0)) for entry in self.models.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "models": self.models,
            "bytes_fetched": self.bytes_fetched,
            "failed": self.failed,
            "exit_code": self.exit_code,
        }

    def table(self) -> Table:
        from rich.table import Table

        table = Table(title=f"provision models mirror -> {self.registry}")
        for column in ("model", "status", "site name", "digest", "fetched"):
            table.add_column(column)
        colours = {"copied": "yellow", "unchanged": "green", "failed": "red"}
        for name, entry in self.models.items():
            table.add_row(
                name,
                f"[{colours[entry['status']]}]{entry['status']}[/]",
                entry.get("site", "-"),
                _short(entry.get("digest")) if entry["status"] != "failed" else entry["error"],
                f"{int(entry.get('bytes', 0)):,} B",
            )
        return table


def _upstream(name: ModelName, upstream: str, upstream_namespace: str) -> tuple[str, str]:
    """``(registry URL, repository)`` a planned model is copied from."""
    if not name.is_default_host:
        return name.registry_url, name.repository
    namespace = upstream_namespace if name.namespace == "library" else name.namespace
    return upstream.rstrip("/"), f"{namespace}/{name.model}"


def mirror(
    models: Iterable[str],
    *,
    to: str,
    namespace: str = "library",
    upstream: str = PUBLIC_REGISTRY,
    upstream_namespace: str = "library",
    workdir: Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    timeout: float = 60.0,
) -> MirrorResult:
    """Copy ``models`` from ``upstream`` into the site registry ``to``, once.

    + models: model names as hosts use them (``qwen2.5-coder:14b``)
    + to: the site registry (``http://10.0.0.5:5000``)
    + namespace: the site registry's namespace for library models (``ollama_registry_namespace``)
    + upstream: the registry models come from (the public library by default)
    + upstream_namespace: the upstream's namespace for library models
    + workdir: where blobs are staged (a temporary directory by default; partial downloads
      there are resumed when the same workdir is given again)
    + console, show_progress: rich progress of the blob transfers

    Blobs the site already has are not fetched; each fetched blob is checked against its
    digest before it is uploaded; the manifest is put last, with the upstream's exact bytes.
    """
    from provisioner.planner import wanted_models

    site = Registry(to, timeout=timeout)
    result = MirrorResult(registry=to)
    progress = _rich_progress(console) if show_progress else None
    if progress is not None:
        progress.start()
    temporary = None
    if workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="provision-mirror-")
        workdir = Path(temporary.name)
    workdir.mkdir(parents=True, exist_ok=True)
    copier = _Copier(site, workdir, progress, timeout)
    try:
        for tag in wanted_models(models):
            target = site_name(tag, to, namespace)
            entry: dict[str, Any] = {"site": target.display, "bytes": 0}
            result.models[tag] = entry
            try:
                source_url, repository = _upstream(
                    ModelName.parse(tag), upstream, upstream_namespace
                )
                entry["status"] = copier.copy(tag, source_url, repository, target, entry)
            except (RegistryError, ManifestError, OSError, ValueError) as exc:
                entry["status"] = "failed"
                entry["error"] = str(exc)
    finally:
        if progress is not None:
            progress.stop()
        if temporary is not None:
            temporary.cleanup()
    return result


@dataclass
class _Copier:
    """Copies one model at a time into the site registry (:func:`mirror`)."""

    site: Registry
    workdir: Path
    progress: Progress | None
    timeout: float

    def copy(
        self, tag: str, source_url: str, repository: str, target: ModelName, entry: dict
    ) -> str:
        """Copy ``repository:tag`` unless the site has the same manifest; return the status
        (``copied`` or ``unchanged``) and count the fetched bytes in ``entry``."""
        source = Registry(source_url, timeout=self.timeout)
        manifest = source.manifest(repository, ModelName.parse(tag).tag)
        entry["digest"] = manifest.digest
        try:
            existing = self.site.manifest(target.repository, target.tag)
        except RegistryError:
            existing = None
        if existing is not None and existing.digest == manifest.digest:
            return "unchanged"
        for blob in manifest.blobs:
            if not self.site.has_blob(target.repository, blob):
                self.copy_blob(tag, source, repository, target, blob, entry)
        self.site.put_manifest(target.repository, target.tag, manifest)
        return "copied"

    def copy_blob(
        self,
        tag: str,
        source: Registry,
        repository: str,
        target: ModelName,
        blob: Blob,
        entry: dict,
    ) -> None:
        """Fetch one blob (resuming a partial one; the bytes fetched are counted in
        ``entry``), checked against its digest, and upload it."""
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"{tag}  {blob.digest[7:19]}", total=blob.size)

        def report(done: int, total: int) -> None:
            if self.progress is not None and task is not None:
                self.progress.update(task, completed=done, total=total)

        path = self.workdir / blob.file_name
        partial = path.with_name(path.name + ".partial")
        had = partial.stat().st_size if partial.exists() else 0
        source.fetch_blob(repository, blob, path, progress=report)
        entry["bytes"] += blob.size - had
        self.site.push_blob(target.repository, blob, path)
        path.unlink()


def planned_by_host(loaded: LoadedInventory) -> dict[str, list[str]]:
    """The planned and pinned tags of every host of ``loaded`` (facts gathered live)."""
    from provisioner.gather import gather
    from provisioner.planner import plan_host, wanted_models
    from provisioner.settings import host_settings

    facts = gather(loaded)
    planned: dict[str, list[str]] = {}
    for target in loaded.hosts:
        data = host_settings(target.data)
        plan = plan_host(target.name, facts.get(target.name), data)
        pinned = data.list_of("models_pinned")
        planned[target.name] = wanted_models(plan.get("models", []), pinned)
    return planned


def mirror_inventory(
    loaded: LoadedInventory,
    *,
    registry: str | None = None,
    upstream: str | None = None,
    upstream_namespace: str = "library",
    console: Console | None = None,
    show_progress: bool = True,
) -> list[MirrorResult]:
    """Mirror the planned models of an inventory into each site registry its hosts use.

    + registry: the site registry (default: each host's ``ollama_registry``; hosts without
      one are left out)
    + upstream: where models come from (default: the public library)
    """
    from provisioner.settings import host_settings

    by_registry: dict[tuple[str, str], list[str]] = {}
    for name, tags in planned_by_host(loaded).items():
        target = next(t for t in loaded.hosts if t.name == name)
        data = host_settings(target.data)
        site = registry or data.optional_text("ollama_registry")
        if not site:
            continue
        key = (site, data.text("ollama_registry_namespace"))
        by_registry.setdefault(key, [])
        by_registry[key] += [t for t in tags if t not in by_registry[key]]
    return [
        mirror(
            tags,
            to=site,
            namespace=namespace,
            upstream=upstream or PUBLIC_REGISTRY,
            upstream_namespace=upstream_namespace,
            console=console,
            show_progress=show_progress,
        )
        for (site, namespace), tags in by_registry.items()
    ]
