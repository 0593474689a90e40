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
import re
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
    limit: tuple[str, ...] = ()  # the --limit patterns, split at commas (empty: every host)

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
    patterns = tuple(parse_limit(limit))
    unknown = unmatched(inventory, patterns)
    if unknown:
        raise InventoryError(
            [f"{source}: --limit {p} matches no host or group of the inventory" for p in unknown]
        )
    limited = select(inventory, patterns) if patterns else hosts
    loaded = LoadedInventory(source=source, inventory=inventory, hosts=limited, limit=patterns)
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


def parse_limit(values: Iterable[str]) -> list[str]:
    """The patterns of ``--limit`` values: each split at commas, blanks dropped, first kept.

    ``--limit gpu1,gpu3 --limit gpus`` gives ``["gpu1", "gpu3", "gpus"]``. Every command parses
    its ``--limit`` here (through :func:`load`), so they all select the same hosts.
    """
    patterns: list[str] = []
    for value in values:
        for pattern in value.split(","):
            pattern = pattern.strip()
            if pattern and pattern not in patterns:
                patterns.append(pattern)
    return patterns


def _matches(host: Host, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in (host.name, *host.groups))


def select(inventory: Inventory, patterns: Iterable[str]) -> list[Host]:
    """Hosts whose name or one of whose groups matches a pattern (globs allowed), in order.

    + patterns: ``--limit`` values, comma-separated or not (see :func:`parse_limit`)
    """
    wanted = parse_limit(patterns)
    return [host for host in inventory if any(_matches(host, p) for p in wanted)]


def unmatched(inventory: Inventory, patterns: Iterable[str]) -> list[str]:
    """The ``--limit`` patterns that match no host name and no group name: bad input."""
    hosts = list(inventory)
    return [p for p in parse_limit(patterns) if not any(_matches(h, p) for h in hosts)]


def pyinfra_limit(loaded: LoadedInventory) -> list[str]:
    """``--limit`` values for pyinfra's CLI that select exactly ``loaded.hosts``.

    pyinfra 3.x (``pyinfra_cli/cli.py``, ``_get_inventory_pattern_matches``) neither splits at
    commas nor globs group names: each value is an exact group name, else a glob over host
    names. So pyinfra is given one value per selected host, its name with any glob character
    bracketed, and its first character bracketed when a group has the same name.
    """
    groups = set(loaded.inventory.groups)
    values = []
    for host in loaded.hosts:
        value = re.sub(r"([*?\[])", r"[\1]", host.name)
        if value in groups:
            value = f"[{value[0]}]{value[1:]}"
        values.append(value)
    return values


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


def data_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for every problem in one host's data: types, models, cross-key rules.

    The checks an inventory gets before any host is touched; ``plan --what-if --data`` runs the
    same ones on its override data.
    """
    from provisioner.catalog import MODEL_LIST_KEYS, check_host_data
    from provisioner.deploys import monitoring
    from provisioner.deploys.ollama import check_settings

    found = settings.validate(data)
    typed_wrong = {key for key, _ in found}
    if not typed_wrong & {*MODEL_LIST_KEYS, "model_catalog_extra"}:
        found += check_host_data(data)
    if not typed_wrong:
        resolved = settings.resolve(data)
        found += check_settings(resolved) + monitoring.check_settings(resolved)
    return found


def validate(loaded: LoadedInventory) -> None:
    """Check every selected host's data; raise one :class:`InventoryError` listing all problems."""
    problems: list[str] = []
    for host in loaded.hosts:
        found = data_problems(loaded.data_of(host))
        for key, message in found:
            problems.append(
                f"{key_source(loaded, host, key)}: host {host.name}: key {key}: {message}"
            )
    if problems:
        raise InventoryError(problems)
