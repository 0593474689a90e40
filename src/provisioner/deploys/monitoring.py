"""Health on every host, all the time: node_exporter and the provisioner's health collector.

With the host data key ``monitoring = true``, ``monitoring`` installs the distribution's
node_exporter (``data/monitoring.toml``: package, unit and textfile directory per package
family), the health collector ``provisioner_metrics.py`` (with the same ``nvidia_smi`` parser the
control side uses) and a systemd timer that runs it every ``monitoring_interval_s`` seconds.
node_exporter then serves ``provisioner_*`` metrics (``docs/monitoring.md``) beside its own.

Exposure follows Ollama's rules: loopback by default; any other ``monitoring_listen_address``
needs ``monitoring_allow_networks``, which an nftables table of its own enforces. The
listen address is set in a drop-in written *before* the package is installed, so the
package's default (every address) never applies, not even between install and configuration.

Without ``monitoring`` nothing is installed, read or removed.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.files import Directory, Sha1File
from pyinfra.operations import files, server

from provisioner import addresses, fact_cache, gpu_stack, rendering, settings
from provisioner import lock as fleet_lock
from provisioner.facts.gpu_state import put_keys, service_keys
from provisioner.facts.nvidia import PACKAGE_FAMILIES, NamedPackages, package_names
from provisioner.facts.system import OsInfo
from provisioner.operations import system

__all__ = [
    "DEFAULTS",
    "MonitoringSettings",
    "check_settings",
    "monitoring",
    "settings_from",
    "record_apply",
]

DEFAULTS = settings.defaults("monitoring")

LIB_DIR = "/usr/local/lib/provisioner/monitoring"
COLLECTOR = f"{LIB_DIR}/provisioner_metrics.py"
CONFIG = "/etc/provisioner/monitoring.json"
UNIT = "provisioner-metrics"
FIREWALL_TABLE = "provisioner_monitoring"
FIREWALL_UNIT = "provisioner-monitoring-firewall"
FIREWALL_RULES = "/etc/provisioner/monitoring.nft"
APPLY_METRICS = "provisioner_apply.prom"
DOCS = "docs/monitoring.md of the provisioner"
# apply.py leaves this operation out of its change counts: it changes on every run by nature.
RECORD_APPLY_OPERATION = "Record the successful apply (monitoring)"


@dataclass(frozen=True)
class Exporter:
    """node_exporter as one package family ships it (``data/monitoring.toml``)."""

    package: str
    service: str
    binary: str
    textfile_dir: str


def exporters() -> dict[str, Exporter]:
    """node_exporter per package family (``apt``, ``dnf``)."""
    text = (resources.files("provisioner") / "data" / "monitoring.toml").read_text("utf-8")
    table = tomllib.loads(text)["family"]
    return {
        name: Exporter(row["package"], row["service"], row["binary"], row["textfile_dir"])
        for name, row in table.items()
    }


@dataclass(frozen=True)
class MonitoringSettings:
    """The monitoring keys of one host, checked."""

    enabled: bool
    address: str
    port: int
    allow_networks: tuple[str, ...]
    interval_s: int

    @property
    def listen(self) -> str:
        return f"{addresses.url_host(self.address)}:{self.port}"

    @property
    def loopback(self) -> bool:
        return addresses.is_loopback(self.address)

    def networks(self) -> tuple[list[str], list[str]]:
        """The allowlist as (IPv4, IPv6) networks, normalised."""
        return addresses.networks_by_family(self.allow_networks)


def _split_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9100`` / ``[::1]:9100`` → (address, port); raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        address, _, port = text[1:].partition("]:")
    else:
        address, _, port = text.rpartition(":")
    ipaddress.ip_address(address)
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is outside 1..65535")
    return address, number


def settings_from(data: Mapping[str, Any] | Any) -> tuple[MonitoringSettings | None, list]:
    """Settings from host data (``settings.host_settings``), and ``(key, message)`` problems
    (cross-key rules)."""
    h = settings.host_settings(data)
    problems: list[tuple[str, str]] = []
    listen = h.text("monitoring_listen_address")
    networks = tuple(h.list_of("monitoring_allow_networks"))
    try:
        address, port = _split_address(listen)
    except ValueError as exc:
        return None, [("monitoring_listen_address", f"{listen!r} is not address:port ({exc})")]
    for entry in networks:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(("monitoring_allow_networks", f"{entry!r} is not a network"))
    cfg = MonitoringSettings(
        enabled=h.flag("monitoring"),
        address=address,
        port=port,
        allow_networks=networks,
        interval_s=h.integer("monitoring_interval_s"),
    )
    if not cfg.loopback and not networks:
        problems.append(
            (
                "monitoring_listen_address",
                f"{listen} is not loopback: set monitoring_allow_networks (who may scrape it)",
            )
        )
    return (None if problems else cfg), problems


def check_settings(data: Mapping[str, Any] | Any) -> list[tuple[str, str]]:
    """Cross-key problems of the monitoring keys, for ``provision`` to report before it connects
    to anything (exit 2); only when ``monitoring`` is on."""
    h = settings.host_settings(data)
    return settings_from(h)[1] if h.flag("monitoring") else []


# --- rendering ----------------------------------------------------------------------------------


def _render(template: str, **context: Any) -> str:
    return rendering.render(template, **context)


def render_dropin(cfg: MonitoringSettings, exporter: Exporter) -> str:
    return _render(
        "monitoring/node-exporter-dropin.conf.j2",
        binary=exporter.binary,
        listen=cfg.listen,
        textfile_dir=exporter.textfile_dir,
    )


def render_service() -> str:
    return _render(
        "monitoring/provisioner-metrics.service.j2",
        docs=DOCS,
        collector=COLLECTOR,
        config=CONFIG,
        timeout=50,
    )


def render_timer(cfg: MonitoringSettings) -> str:
    return _render("monitoring/provisioner-metrics.timer.j2", interval=cfg.interval_s)


def render_nft(cfg: MonitoringSettings) -> str:
    v4, v6 = cfg.networks()
    return _render(
        "ollama/ollama.nft.j2",
        table=FIREWALL_TABLE,
        unit=f"{FIREWALL_UNIT}.service",
        port=cfg.port,
        what="node_exporter",
        networks_v4=v4,
        networks_v6=v6,
    )


def render_firewall_unit(exporter: Exporter) -> str:
    return _render(
        "monitoring/monitoring-firewall.service.j2",
        service=exporter.service,
        rules=FIREWALL_RULES,
        table=FIREWALL_TABLE,
    )


def collector_config(target: Any, exporter: Exporter, wanted: list[str]) -> dict[str, Any]:
    """What the collector reads (``/etc/provisioner/monitoring.json``)."""
    from provisioner.deploys.models import source_settings
    from provisioner.deploys.ollama import settings_from as ollama_settings

    h = settings.host_settings(target.data)
    source = source_settings(h)  # the API the model sync uses (Ollama's default if invalid)
    valid = ollama_settings(h)[0] is not None
    locked = fleet_lock.locked_models(fleet_lock.current(), target.name)
    return {
        "textfile_dir": exporter.textfile_dir,
        "ollama_api": source["api"],
        "models_dir": source["models_dir"] if valid else None,
        "gpu": h.optional_flag("gpu") is not False,
        "reboot_marker": gpu_stack.REBOOT_MARKER,
        # digest: the fleet lock's (provision lock, docs/lock.md); None: not checked
        "models": [{"name": name, "digest": (locked or {}).get(name)} for name in wanted],
    }


def _wanted(target: Any) -> list[str]:
    """The models the host must hold: ``planner.wanted_models`` of its live plan."""
    from provisioner.deploys.models import planned_models
    from provisioner.planner import wanted_models

    pinned = settings.host_settings(target.data).list_of("models_pinned")
    return wanted_models(planned_models(target), pinned)


# --- operations ---------------------------------------------------------------------------------


@operation()
def config_file(path: str, content: Callable[[], str], mode: str = "644"):
    """
    Upload a file whose content is computed when the operation runs (from facts gathered then,
    e.g. the models planned once the driver shows the GPUs); nothing when it is unchanged.

    + path: the remote file
    + content: a function returning the text
    + mode: its permissions

    **Example:**

    .. code:: python

        config_file(name="Collector config", path="/etc/x.json", content=lambda: "{}\\n")
    """
    import hashlib

    text = content()
    current = host.get_fact(Sha1File, path=path)
    if current == hashlib.sha1(text.encode()).hexdigest():  # noqa: S324  (pyinfra's own fact)
        host.noop(f"{path} is up to date")
        return
    yield from files.put._inner(src=StringIO(text), dest=path, mode=mode)


def _distro_family() -> str:
    return gpu_stack.find_distro(host.get_fact(OsInfo)).family.name


@deploy("Monitoring", data_defaults=DEFAULTS)
def monitoring() -> None:
    """
    node_exporter, the health collector and its timer (only with ``monitoring = true``).

    **Example:**

    .. code:: python

        from provisioner.deploys.monitoring import monitoring

        monitoring()
    """
    h = settings.host_settings(host.data)
    cfg, problems = settings_from(h)
    if not h.flag("monitoring"):
        return
    if cfg is None:
        from provisioner.operations.ollama import refuse

        refuse(
            name="Check the monitoring settings",
            reason="; ".join(f"{key}: {message}" for key, message in problems),
        )
        return
    family = _distro_family()
    exporter = exporters()[family]
    fact_cache.register(state_keys(cfg, exporter, family))
    _install_exporter(cfg, exporter, family)
    _install_collector(cfg, exporter)


def state_keys(cfg: MonitoringSettings, exporter: Exporter, family: str) -> list[Any]:
    """Every fact the operations below read (pyinfra 3.10's ``files.put``, ``files.directory``,
    ``systemd.service``, ``apt.packages``; ``config_file``), as ``fact_cache`` keys: read with
    the other layers' state in the execution's one probe (a key spelled otherwise is read
    alone: one more command, never a stale value)."""
    etc = "/etc/systemd/system"
    puts = [
        f"{etc}/{exporter.service}.service.d/10-provisioner.conf",
        COLLECTOR,
        f"{LIB_DIR}/nvidia_smi.py",
        f"{LIB_DIR}/next_boot.py",
        f"{etc}/{UNIT}.service",
        f"{etc}/{UNIT}.timer",
    ]
    services = [f"{exporter.service}.service", f"{UNIT}.timer"]
    if not cfg.loopback:
        puts += [FIREWALL_RULES, f"{etc}/{FIREWALL_UNIT}.service"]
        services.append(f"{FIREWALL_UNIT}.service")
    keys: list[Any] = [key for path in puts for key in put_keys(path)]
    keys += [key for unit in services for key in service_keys(unit)]
    keys += [(Directory, {"path": p}) for p in (exporter.textfile_dir, LIB_DIR, "/etc/provisioner")]
    keys.append((Sha1File, {"path": CONFIG}))
    if family in PACKAGE_FAMILIES:  # system.packages
        keys.append((NamedPackages, {"names": package_names([exporter.package])}))
    return keys


def _install_exporter(cfg: MonitoringSettings, exporter: Exporter, family: str) -> None:
    dropin = files.put(
        name="node_exporter: listen address and textfile directory",
        src=StringIO(render_dropin(cfg, exporter)),
        dest=f"/etc/systemd/system/{exporter.service}.service.d/10-provisioner.conf",
        mode="644",
    )
    firewall = _firewall(cfg, exporter)
    system.packages(
        name=f"Install {exporter.package}",
        packages=[exporter.package],
        no_recommends=True,
        family=family,
    )
    files.directory(
        name="node_exporter's textfile directory", path=exporter.textfile_dir, mode="755"
    )
    system.service(
        name=f"Run {exporter.service}",
        service=f"{exporter.service}.service",
        reload_after=[dropin],
        restart_after=[dropin],
        daemon_reload=firewall,
    )


def _firewall(cfg: MonitoringSettings, exporter: Exporter) -> bool:
    if cfg.loopback:
        return False
    rules = files.put(
        name="node_exporter allowlist (nftables)",
        src=StringIO(render_nft(cfg)),
        dest=FIREWALL_RULES,
        mode="644",
    )
    unit = files.put(
        name="node_exporter allowlist unit",
        src=StringIO(render_firewall_unit(exporter)),
        dest=f"/etc/systemd/system/{FIREWALL_UNIT}.service",
        mode="644",
    )
    system.service(
        name="Load the node_exporter allowlist",
        service=f"{FIREWALL_UNIT}.service",
        reload_after=[unit],
        restart_after=[rules, unit],
    )
    return True


def _install_collector(cfg: MonitoringSettings, exporter: Exporter) -> None:
    templates = resources.files("provisioner") / "templates" / "monitoring"
    files.directory(name="Collector directory", path=LIB_DIR, mode="755")
    files.put(
        name="Health collector",
        src=str(templates / "provisioner_metrics.py"),
        dest=COLLECTOR,
        mode="755",
    )
    for module, what in (("nvidia_smi", "nvidia-smi parser"), ("next_boot", "next boot's module")):
        files.put(
            name=f"Health collector: {what}",
            src=str(resources.files("provisioner") / f"{module}.py"),
            dest=f"{LIB_DIR}/{module}.py",
            mode="644",
        )
    files.directory(name="/etc/provisioner", path="/etc/provisioner", mode="755")
    config_file(
        name="Health collector configuration",
        path=CONFIG,
        content=lambda: (
            json.dumps(collector_config(host, exporter, _wanted(host)), indent=2) + "\n"
        ),
    )
    service = files.put(
        name="Health collector unit",
        src=StringIO(render_service()),
        dest=f"/etc/systemd/system/{UNIT}.service",
        mode="644",
    )
    timer = files.put(
        name="Health collector timer",
        src=StringIO(render_timer(cfg)),
        dest=f"/etc/systemd/system/{UNIT}.timer",
        mode="644",
    )
    system.service(
        name="Run the health collector every interval",
        service=f"{UNIT}.timer",
        reload_after=[service, timer],
        restart_after=[timer],
    )


@deploy("Record the successful apply", data_defaults=DEFAULTS)
def record_apply() -> None:
    """
    The last step of ``provision apply`` with ``monitoring``: the time of this successful run,
    as ``provisioner_last_apply_success_timestamp_seconds`` in the textfile directory. A host
    reaches it only when every earlier step succeeded. ``provision apply`` does not count it as
    a change (it changes on every run by nature).
    """
    if not settings.host_settings(host.data).flag("monitoring"):
        return
    exporter = exporters()[_distro_family()]
    target = f"{exporter.textfile_dir}/{APPLY_METRICS}"
    server.shell(
        name=RECORD_APPLY_OPERATION,
        commands=[
            "printf '# HELP provisioner_last_apply_success_timestamp_seconds When provision "
            "apply last succeeded on this host.\\n# TYPE provisioner_last_apply_success_"
            "timestamp_seconds gauge\\nprovisioner_last_apply_success_timestamp_seconds %s\\n' "
            f'"$(date +%s)" > {target}.tmp && mv {target}.tmp {target}'
        ],
    )
