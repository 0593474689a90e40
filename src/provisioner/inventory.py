"""Load a pyinfra inventory exactly as pyinfra's CLI does, and validate it before any connection.

INVENTORY is what ``pyinfra`` itself accepts: an inventory file (``inventories/prod.py``, with
``group_data/`` next to it or in the working directory) or a host string (``@local``,
``web1,web2``, ``@vagrant``...). Every host's data is checked against the declared data keys
(``settings``) and the model catalog; any problem is reported as one :class:`InventoryError`
naming the file, the host and the key, and nothing is connected to.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import settings

if TYPE_CHECKING:
    from pyinfra.api import Host, Inventory


class InventoryError(Exception):
    """Bad input: the message names the file, the host and the key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class LoadedInventory:
    """A pyinfra inventory plus where it came from."""

    source: str
    inventory: Inventory
    hosts: list[Host]  # after --limit

    def data_of(self, host: Host) -> dict[str, Any]:
        """The host's own data merged over the group data (pyinfra's precedence)."""
        return host.data.dict()

    def resolved(self, host: Host) -> dict[str, Any]:
        """The host's data over every declared default: the values the deploys will see."""
        return settings.resolve(host.data.dict())


def _looks_like_file(source: str) -> bool:
    return source.endswith(".py") or os.sep in source and "@" not in source and "," not in source


def load(
    source: str, limit: Iterable[str] = (), data: dict[str, Any] | None = None
) -> LoadedInventory:
    """Load and validate INVENTORY; raise :class:`InventoryError` on any bad input.

    + source: an inventory file or a pyinfra host string such as ``@local``
    + limit: host or group names (globs allowed), as pyinfra's ``--limit``
    + data: override data applied to every host (pyinfra's ``--data``)
    """
    if _looks_like_file(source) and not Path(source).exists():
        raise InventoryError([f"{source}: inventory file not found"])

    # pyinfra_cli patches the standard library for gevent on import; only import it here.
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    try:
        with ctx_state.use(State()):
            inventory = make_inventory(source, override_data=data, cwd=os.getcwd())
    except Exception as exc:  # any error while executing the user's inventory/group_data code
        raise InventoryError([_describe_load_error(exc, source)]) from exc

    hosts = list(inventory)
    if not hosts:
        raise InventoryError([f"{source}: the inventory defines no hosts"])
    limited = select(inventory, limit) if limit else hosts
    if limit and not limited:
        raise InventoryError(
            [f"{source}: --limit {','.join(limit)} matches no host or group of the inventory"]
        )
    loaded = LoadedInventory(source=source, inventory=inventory, hosts=limited)
    validate(loaded)
    return loaded


def _describe_load_error(exc: BaseException, source: str) -> str:
    # pyinfra wraps errors raised by the user's files: unwrap to name the file and line.
    filename = getattr(exc, "filename", None)
    exc = getattr(exc, "exception", exc)
    if isinstance(exc, SyntaxError):
        return f"{exc.filename or filename or source}:{exc.lineno}: Python syntax error: {exc.msg}"
    where = _traceback_file(exc) or filename or source
    return f"{where}: cannot load inventory: {type(exc).__name__}: {exc}"


def _traceback_file(exc: BaseException) -> str | None:
    tb = getattr(exc, "_traceback", None) or exc.__traceback__
    where = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "site-packages" not in filename and "/provisioner/" not in filename:
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def select(inventory: Inventory, patterns: Iterable[str]) -> list[Host]:
    """Hosts whose name or one of whose groups matches a pattern (pyinfra's ``--limit``)."""
    wanted: list[str] = []
    for pattern in patterns:
        wanted.extend(p for p in pattern.split(",") if p)
    chosen = []
    for host in inventory:
        names = [host.name, *host.groups]
        if any(fnmatch.fnmatch(name, p) for p in wanted for name in names):
            chosen.append(host)
    return chosen


def key_source(loaded: LoadedInventory, host: Host, key: str) -> str:
    """The file that set ``key`` for ``host``: a group_data file or the inventory file."""
    inventory = loaded.inventory
    if key in inventory.get_override_data():
        return "--data"
    if key in (inventory.get_host_data(host.name) or {}):
        return loaded.source
    folders = [Path.cwd() / "group_data"]
    if Path(loaded.source).exists():
        folders.append(Path(loaded.source).resolve().parent / "group_data")
    for group in [*reversed(host.groups), "all"]:
        if key in (inventory.get_group_data(group) or {}):
            for folder in folders:
                candidate = folder / f"{group}.py"
                if candidate.exists():
                    return str(candidate)
            return loaded.source
    return loaded.source


def validate(loaded: LoadedInventory) -> None:
    """Check every selected host's data; raise one :class:`InventoryError` listing all problems."""
    from provisioner.catalog import check_host_data
    from provisioner.deploys import monitoring
    from provisioner.deploys.ollama import check_settings

    problems: list[str] = []
    for host in loaded.hosts:
        data = loaded.data_of(host)
        found = settings.validate(data)
        typed_wrong = {key for key, _ in found}
        if not typed_wrong & {"models", "models_always", "models_pinned", "model_catalog_extra"}:
            found += check_host_data(data)
        if not typed_wrong:
            resolved = settings.resolve(data)
            found += check_settings(resolved) + monitoring.check_settings(resolved)
        for key, message in found:
            problems.append(
                f"{key_source(loaded, host, key)}: host {host.name}: key {key}: {message}"
            )
    if problems:
        raise InventoryError(problems)
