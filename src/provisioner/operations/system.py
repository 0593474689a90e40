"""Operations on the host itself (the run's lock, reboot, refusing it, system packages with
bounded package-manager calls), paired with ``provisioner.facts.system``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gevent import sleep
from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.connectors.util import clear_askpass_cache, remove_any_sudo_askpass_file
from pyinfra.facts.server import Which
from pyinfra.operations import apt, dnf, files, server, systemd

from provisioner import bounds, fact_cache, host_lock
from provisioner.facts.nvidia import PACKAGE_FAMILIES, NamedPackages, package_names
from provisioner.facts.system import BootId, HostLock, UserAccount


def _lock_problem(target: Any) -> str | None:
    """None when this run holds ``target``'s lock (taken now if free), else why not."""
    got = target.get_fact(HostLock, owner=host_lock.owner())
    if got.get("held"):
        return None
    if got.get("holder"):
        return host_lock.refusal(got["holder"])
    return f"cannot take the provisioner lock on this host: {got.get('error')}"


@operation()
def run_lock():
    """
    Hold the host's provisioner lock for the rest of this run (``provisioner.host_lock``), or
    fail this host, naming the run that holds it, while the other hosts go on. Taking the
    lock changes nothing on the host's configuration: the operation reports no change.

    **Example:**

    .. code:: python

        system.run_lock(name="Hold the host lock")
    """
    problem = _lock_problem(host)
    if problem:
        yield FunctionCommand(fail_host, (problem,), {})
    else:
        host.noop(f"this run holds the provisioner lock ({host_lock.owner()})")


@operation()
def packages(packages: list[str], no_recommends: bool = False, family: str | None = None):
    """
    Install system packages with the host's package manager, as pyinfra's
    ``server.packages`` does, but with apt's and dnf's bound options of ``data/bounds.toml``
    (``[packages.options.<family>]``: connection timeouts, retries of a transient download
    error, a bounded wait for the package manager's lock). A missing package still fails at
    once: only downloads are retried, a bounded number of times. On apt and dnf, packages
    named without a version are looked up by name first (``NamedPackages``): when all are
    installed, nothing more is read (pyinfra's operation lists every package of the host).

    + packages: the packages
    + no_recommends: apt only, leave recommended packages out
    + family: ``apt`` or ``dnf`` when the caller knows it (distros.toml); else the host's
      package manager is looked for as pyinfra's ``server.packages`` does

    **Example:**

    .. code:: python

        system.packages(name="Install Ollama's tools", packages=["curl", "zstd"])
    """
    if family is None:
        family = next((f for f in PACKAGE_FAMILIES if host.get_fact(Which, command=f)), "")
    if family in PACKAGE_FAMILIES and all(_plain(name) for name in packages):
        have = fact_cache.get_fact(NamedPackages, names=package_names(packages))
        installed = {package["name"] for package in have["packages"]}
        if have["manager"] and installed >= set(packages):
            host.noop(f"packages are installed: {', '.join(packages)}")
            return
    if family == "apt":
        yield from apt.packages._inner(
            packages=packages,
            no_recommends=no_recommends,
            extra_install_args=" ".join(bounds.package_options("apt")),
        )
    elif family == "dnf":
        yield from dnf.packages._inner(
            packages=packages, extra_install_args=" ".join(bounds.package_options("dnf"))
        )
    else:  # another package manager: pyinfra's own choice, without bounds of ours
        yield from server.packages._inner(packages=packages)


def _plain(name: str) -> bool:
    """A package name without a version, release or architecture: the only kind the check
    before pyinfra's operation answers (``curl``, not ``curl=8.0`` or ``curl:amd64``)."""
    return bool(name) and not any(c in name for c in "=<>:* ")


def account_matches(
    account: dict[str, Any] | None,
    home: str | None = None,
    shell: str | None = None,
    group: str | None = None,
    groups: list[str] | None = None,
) -> bool:
    """Whether pyinfra's ``server.user`` (``append=False``, no comment, password or keys) would
    leave ``account`` as it is: the checks of pyinfra 3.10 ``server.user`` for an existing user."""
    if account is None:
        return False
    return (
        (not home or account["home"] == home)
        and (not shell or account["shell"] == shell)
        and (not group or account["group"] == group)
        and (not groups or set(account["groups"]) == set(groups))
    )


@operation()
def user(
    user: str,
    group: str | None = None,
    groups: list[str] | None = None,
    home: str | None = None,
    shell: str | None = None,
    system: bool = False,
    create_home: bool = False,
    ensure_home: bool = True,
):
    """
    A local user, as pyinfra's ``server.user`` makes it, reading only that user
    (``UserAccount``): pyinfra's operation reads every user of the host (``Users``, 0.6 s on a
    Debian host) and runs only when something must change.

    + user: the user name
    + group: its primary group
    + groups: its other groups (exactly these)
    + home: its home directory
    + shell: its login shell
    + system: a system user (``useradd -r``) when it is created
    + create_home: create the home directory with the user
    + ensure_home: the home directory belongs to the user (pyinfra's ``files.directory``)

    **Example:**

    .. code:: python

        system.user(name="Create the ollama user", user="ollama", group="ollama",
                    home="/usr/share/ollama", shell="/usr/sbin/nologin", system=True)
    """
    wanted = {"home": home, "shell": shell, "group": group, "groups": groups}
    if not account_matches(host.get_fact(UserAccount, user=user), **wanted):
        yield from server.user._inner(
            user=user, system=system, create_home=create_home, ensure_home=ensure_home, **wanted
        )
        return
    if ensure_home and home:
        yield from files.directory._inner(
            path=home, user=user, group=group or user, _no_fail_on_link=True
        )
    else:
        host.noop(f"user {user} exists")


def any_change(ops: Iterable[Any]) -> bool:
    """Whether any of ``ops`` (operations of this run, before the caller) changed the host:
    once they ran, what they did; before (planning with checks for changes), what they
    would do."""
    return any(op.did_change() if op.is_complete() else op.will_change for op in ops)


@operation()
def service(
    service: str,
    reload_after: Sequence[Any] = (),
    restart_after: Sequence[Any] = (),
    daemon_reload: bool = False,
):
    """
    A systemd unit running and enabled (pyinfra's ``systemd.service``), reloading systemd when
    one of ``reload_after`` changed a unit file and restarting the unit when one of
    ``restart_after`` changed its configuration. The operations are looked at inside this one,
    when it runs: passed to pyinfra's as ``daemon_reload=op.will_change``, they would run
    while planning and read their files' state ahead of the execution's one probe.

    + service: the unit
    + reload_after: operations whose change needs ``systemctl daemon-reload``
    + restart_after: operations whose change needs a restart
    + daemon_reload: reload systemd in any case

    **Example:**

    .. code:: python

        unit = files.put(name="Unit", src="x.service", dest="/etc/systemd/system/x.service")
        system.service(name="Run x", service="x.service", reload_after=[unit], restart_after=[unit])
    """
    yield from systemd.service._inner(
        service=service,
        running=True,
        enabled=True,
        daemon_reload=daemon_reload or any_change(reload_after),
        restarted=any_change(restart_after),
    )


#: The state callback method told of every refused host: ``host_refused(state, host, reason)``.
REFUSED_CALLBACK = "host_refused"


def announce_refusal(state: Any, host: Any, reason: str) -> None:
    """Log ``reason`` in red for ``host`` and hand it to every state callback handler that has
    a ``host_refused(state, host, reason)`` method (e.g. the model sync's result)."""
    host.log_styled(reason, fg="red", log_func=logger.error)
    for handler in getattr(state, "callback_handlers", ()):
        callback = getattr(handler, REFUSED_CALLBACK, None)
        if callback is not None:
            callback(state, host, reason)


def fail_host(state: Any, host: Any, reason: str) -> bool:
    """The one way to refuse a host while its operations run (the body of the command that
    :func:`refusal` yields): announce ``reason`` (:func:`announce_refusal`) and fail this host;
    the others go on."""
    announce_refusal(state, host, reason)
    return False


def refusal(reason: str) -> FunctionCommand:
    """The command an operation yields to refuse its host with ``reason`` (:func:`fail_host`)."""
    return FunctionCommand(fail_host, (reason,), {})


@operation(is_idempotent=False)
def reboot(delay: int = 10, interval: int = 2, reboot_timeout: int = 900):
    """
    Reboot the host and wait until it is back. The reboot is proven by a new boot ID
    (``/proc/sys/kernel/random/boot_id``), not by the uptime as pyinfra's ``server.reboot``
    does: containers share their machine's uptime, so an uptime check waits forever on a
    systemd-nspawn host, while systemd-nspawn gives every container boot its own boot ID.
    Otherwise the same steps as ``server.reboot`` (sudo askpass files cleared around it).

    + delay: seconds to wait before the first reconnection attempt
    + interval: seconds between reconnection attempts
    + reboot_timeout: seconds after which the host is failed if it did not come back

    **Example:**

    .. code:: python

        system.reboot(name="Reboot into the new driver", reboot_timeout=600)
    """
    before: list[str | None] = []

    def remove_any_askpass_file(state, host):
        remove_any_sudo_askpass_file(host)

    def remember_boot_id(state, host):
        before.append(host.get_fact(BootId))

    def wait_for_new_boot(state, host):
        sleep(delay)
        clear_askpass_cache(host)
        host.disconnect()
        attempts = 0
        while True:
            host.connect(show_errors=False)
            if host.connected:
                current = host.get_fact(BootId)
                if current and current != before[0]:
                    # the lock ended with the old connection: take it again
                    problem = _lock_problem(host)
                    if problem:
                        raise Exception(f"after the reboot: {problem}")
                    return True
            if attempts * interval > reboot_timeout:
                raise Exception(f"the host did not come back within {reboot_timeout}s")
            attempts += 1
            sleep(interval)

    def clean_sudo_info(state, host):
        clear_askpass_cache(host)

    yield FunctionCommand(remove_any_askpass_file, (), {})
    yield FunctionCommand(remember_boot_id, (), {})
    # Detached so the SSH channel closes at once instead of hanging on the dying session.
    yield StringCommand("( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &")
    yield FunctionCommand(wait_for_new_boot, (), {})
    yield FunctionCommand(clean_sudo_info, (), {})
