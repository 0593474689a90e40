"""
Operations of the NVIDIA GPU stack: repository and signing key, driver branch lock, driver
packages and holds, nouveau, Fabric Manager, services, the reboot that loads the module, and
the CUDA toolkit's PATH.

Every operation takes the distro key of ``data/distros.toml`` (``debian12``, ``rhel9``, ...)
and looks up what differs there; none reads host data. Each takes ``skip``: a reason to do
nothing (a CPU-only host), so that every host runs the same sequence of operations (pyinfra's
API mode pairs operations across hosts by their order).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from io import StringIO
from typing import Any

import gevent
from pyinfra import host, logger, state
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.connectors.local import LocalConnector
from pyinfra.facts.apt import AptSources
from pyinfra.facts.files import File, Sha1File
from pyinfra.facts.server import Which
from pyinfra.operations import apt, dnf, files, systemd

from provisioner import bounds, fact_cache, gpu_stack, next_boot, rendering, run_events
from provisioner.facts.gpu import ONE_RUN, NvidiaSmi
from provisioner.facts.nvidia import (
    KERNEL_HOLD_RECORD,
    AptSourcesFor,
    GpuStackPackages,
    KernelPackages,
    NextBootModule,
    NvidiaKernelModule,
    RepoKey,
)
from provisioner.operations import system

NOUVEAU_BLACKLIST = "/etc/modprobe.d/blacklist-nouveau.conf"
CUDA_PROFILE = "/etc/profile.d/cuda.sh"
REPO_PREFERENCE = "/etc/apt/preferences.d/nvidia-cuda.pref"
DKMS_SIGNING = "/etc/dkms/framework.conf.d/provisioner-mok.conf"
PERSISTENCED_DROPIN = "/etc/systemd/system/nvidia-persistenced.service.d/provisioner.conf"
REPO_NAME = "nvidia-cuda"
CONTRIB_SOURCES = "provisioner-distro-components"
HEADERS_REPO_NAME = "provisioner-kernel-headers"
# after a reboot, how long the module may take to appear before the host is failed
MODULE_SETTLE_SECONDS = 60
MODULE_SETTLE_INTERVAL = 5
DRIVER_CHANGED = "the driver packages changed in this run"


# --- helpers ---------------------------------------------------------------------------------


def _render(template: str, **values: Any) -> str:
    """Render ``templates/gpu/<template>`` (:func:`provisioner.rendering.render`)."""
    return rendering.render(f"gpu/{template}", **values)


def _command(family: gpu_stack.Family, parts: Sequence[str], *args: str) -> StringCommand:
    """A package-manager command of ``family`` (distros.toml), with its bound options
    (``data/bounds.toml`` ``[packages.options.<family>]``) and ``args`` quoted."""
    bounded = bounds.with_options(parts, family.name)
    return StringCommand(*bounded, *(QuoteString(arg) for arg in args))


def _install(
    target: gpu_stack.Distro, packages: Sequence[str], replace_held: bool = False
) -> Iterator[StringCommand]:
    """Refresh the package lists (apt; each attempt bounded, a transient mirror error retried:
    :func:`provisioner.bounds.retried`), then install ``packages`` (the package manager's own
    bounded retries of a download; a missing package fails at once)."""
    family = target.family
    if family.update:
        update = shlex.join(bounds.with_options(family.update, family.name, refresh=True))
        step = f"the package lists refresh ({shlex.join(family.update)})"
        yield StringCommand(bounds.retried(update, step))
    flags = family.replace_held if replace_held else ()
    yield _command(family, (*family.install, *flags), *packages)


def _versioned(target: gpu_stack.Distro, package: str, version: str | None) -> str:
    return f"{package}{target.family.version_separator}{version}" if version else package


def _executing() -> bool:
    return bool(state.is_executing)


def _module_state(
    target: gpu_stack.Distro, anew: bool = False
) -> tuple[gpu_stack.InstalledDriver, Any, Any]:
    """Installed driver, loaded module, nvidia-smi; ``anew``: read from the host now (after a
    reboot inside the running operation, where the probe's values are the old boot's)."""
    installed = gpu_stack.installed_driver(target, fact_cache.get_fact(GpuStackPackages))
    read = fact_cache.fresh if anew else fact_cache.get_fact
    return installed, read(NvidiaKernelModule), read(NvidiaSmi, **ONE_RUN)


# --- repository ------------------------------------------------------------------------------


def _key_ok(current: dict[str, Any], sha256: str | None, fingerprint: str | None) -> bool:
    if not current.get("exists"):
        return False
    if sha256 and current.get("sha256") != sha256:
        return False
    return not fingerprint or current.get("fingerprints") == [fingerprint]


def key_script(
    target: gpu_stack.Distro,
    url: str,
    path: str,
    sha256: str | None,
    fingerprint: str | None,
    strip_version: bool,
) -> str:
    """The shell script that fetches a signing key into a temporary file, checks it, and only
    then installs it at ``path``: a key that fails its check never reaches the keyring."""
    tmp = '"$d/key"'
    fetch = " ".join(
        tmp if arg == "{dest}" else shlex.quote(url) if arg == "{url}" else shlex.quote(arg)
        for arg in target.family.fetch
    )
    steps = ["set -e", "d=$(mktemp -d)", "trap 'rm -rf \"$d\"' EXIT", fetch]
    if strip_version:
        steps.append(f"sed -i '/^Version/d' {tmp}")
    if sha256:
        message = shlex.quote(f"{url}: the key's sha256 is not the pinned {sha256}")
        steps.append(
            f"printf '%s  %s\\n' {sha256} {tmp} | sha256sum -c --status - "
            f"|| {{ echo {message} >&2; exit 1; }}"
        )
    if fingerprint:
        message = shlex.quote(f"{url}: the key's fingerprint is not the pinned {fingerprint}")
        steps.append('mkdir -m 700 "$d/g"')
        steps.append(
            f'f=$(GNUPGHOME="$d/g" gpg --batch --quiet --show-keys --with-colons {tmp} '
            '2>/dev/null | awk -F: \'$1=="pub"{n++; p=1; next} $1=="fpr" && p {f=$10; p=0} '
            "END{if (n==1) print tolower(f)}')"
        )
        steps.append(f'[ "$f" = {fingerprint} ] || {{ echo {message} >&2; exit 1; }}')
    steps.append(f"install -D -m 0644 {tmp} {shlex.quote(path)}")
    return "; ".join(steps)


@operation()
def repo_key(
    distro: str,
    url: str,
    path: str,
    sha256: str | None = None,
    fingerprint: str | None = None,
    strip_version: bool = False,
    skip: str | None = None,
):
    """
    Install a repository signing key, checked against a pinned sha256 and/or fingerprint.

    + distro: distro key of ``data/distros.toml``
    + url: where the key is fetched from (with the package manager's own transport on apt)
    + path: where the key goes (referenced by ``signed-by`` / ``gpgkey``)
    + sha256: sha256 the key file must have
    + fingerprint: OpenPGP fingerprint the key must have (checked with gpg, installed first)
    + strip_version: drop the armor's ``Version`` header before the sha256 (NVIDIA's own check)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.repo_key(
            name="NVIDIA repository key",
            distro="debian12",
            url="https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/3bf863cc.pub",
            path="/etc/apt/keyrings/nvidia-cuda.asc",
            fingerprint="eb693b3035cd5710e231e123a4b469963bf863cc",
        )
    """
    if skip:
        host.noop(f"repository key: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    current = host.get_fact(RepoKey, path=path)
    if _key_ok(current, sha256, fingerprint):
        host.noop(f"repository key {path} is in place and matches its pin")
        return
    if fingerprint and not current.get("gpg"):
        yield from _install(target, [target.family.gpg_package])
    yield key_script(target, url, path, sha256, fingerprint, strip_version)


def _apt_repository(target: gpu_stack.Distro, url: str, key_path: str) -> Iterator[Any]:
    ours = f"/etc/apt/sources.list.d/{REPO_NAME}.sources"
    others = [f for f in host.get_fact(AptSourcesFor, url=url) if f != ours]
    if others:
        # cuda-keyring (cloud and vendor images) already names this URI with its own
        # Signed-By: a second source for it would make apt-get update fail
        if host.get_fact(File, path=ours):
            yield from files.file._inner(path=ours, present=False)
        else:
            host.noop(f"NVIDIA repository: {', '.join(others)} already configures {url}")
        return
    yield from apt.sources_file._inner(
        filename=REPO_NAME, types=["deb"], uris=[url], suites=["/"], signed_by=key_path
    )


def _dnf_repository(target: gpu_stack.Distro, url: str, key_path: str) -> Iterator[Any]:
    yield from dnf.repo._inner(
        src=REPO_NAME,
        baseurl=url.rstrip("/"),
        description="NVIDIA CUDA repository (provisioner)",
        gpgcheck=True,
        gpgkey=f"file://{key_path}",
    )


_REPOSITORY = {"apt": _apt_repository, "dnf": _dnf_repository}


@operation()
def repository(distro: str, url: str, key_path: str, skip: str | None = None):
    """
    Configure NVIDIA's CUDA repository, signed by the key at ``key_path``: a deb822 source
    (``/etc/apt/sources.list.d/nvidia-cuda.sources``, ``Signed-By``) or a dnf ``.repo`` file
    with ``gpgcheck``.

    + distro: distro key of ``data/distros.toml``
    + url: the repository, e.g. ``.../compute/cuda/repos/debian12/x86_64/``
    + key_path: the signing key installed by ``nvidia.repo_key``
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.repository(
            name="NVIDIA CUDA repository",
            distro="ubuntu2404",
            url="https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/",
            key_path="/etc/apt/keyrings/nvidia-cuda.asc",
        )
    """
    if skip:
        host.noop(f"NVIDIA repository: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    yield from _REPOSITORY[target.family.name](target, url, key_path)


@operation()
def repo_preference(distro: str, skip: str | None = None):
    """
    Give NVIDIA's repository apt priority 600 (as cuda-keyring does), so that a distribution's
    same-named packages (Debian's ``nvidia-driver``) never win over NVIDIA's. Nothing on dnf.

    + distro: distro key of ``data/distros.toml``
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.repo_preference(name="Prefer NVIDIA's repository", distro="debian12")
    """
    if skip:
        host.noop(f"repository preference: skipped, {skip}")
        return
    text = gpu_stack.distro(distro).family.repo_preference
    if not text:
        host.noop("no repository preference on this package manager")
        return
    header = "# Managed by provisioner: NVIDIA's CUDA repository wins (cuda-keyring's pin)\n"
    yield from files.put._inner(src=StringIO(header + text), dest=REPO_PREFERENCE, mode="644")


@operation()
def dkms_signing(key: str | None, cert: str | None, skip: str | None = None):
    """
    Make DKMS sign the modules it builds with the operator's Machine Owner Key (Secure Boot):
    ``mok_signing_key`` / ``mok_certificate`` in ``/etc/dkms/framework.conf.d``. The key must be
    enrolled already (the plan refuses the host otherwise). Nothing without a key.

    + key: the MOK private key on the host
    + cert: its certificate (DER)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.dkms_signing(key="/var/lib/shim-signed/mok/MOK.priv",
                            cert="/var/lib/shim-signed/mok/MOK.der")
    """
    if skip or not key or not cert:
        host.noop(f"DKMS module signing: {skip or 'not needed (no Secure Boot)'}")
        return
    text = _render("dkms-mok.conf.j2", key=key, cert=cert)
    yield from files.directory._inner(path="/etc/dkms/framework.conf.d", present=True)
    yield from files.put._inner(src=StringIO(text), dest=DKMS_SIGNING, mode="644")


@operation()
def persistenced_override(distro: str, skip: str | None = None):
    """
    Turn persistence mode on where the distribution's ``nvidia-persistenced`` unit starts with
    ``--no-persistence-mode`` (Ubuntu), with a systemd drop-in as NVIDIA's Ansible role does.

    + distro: distro key of ``data/distros.toml``
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.persistenced_override(name="Persistence mode on", distro="ubuntu2404")
    """
    if skip:
        host.noop(f"nvidia-persistenced drop-in: skipped, {skip}")
        return
    if not gpu_stack.distro(distro).persistenced_dropin:
        host.noop("nvidia-persistenced starts with persistence mode on here")
        return
    text = _render("nvidia-persistenced.conf.j2")
    directory = PERSISTENCED_DROPIN.rsplit("/", 1)[0]
    yield from files.directory._inner(path=directory, present=True)
    ops = list(files.put._inner(src=StringIO(text), dest=PERSISTENCED_DROPIN, mode="644"))
    if ops:
        yield from ops
        yield from systemd.daemon_reload._inner()


@operation()
def distro_components(
    components: Sequence[str], exclude_urls: Sequence[str] = (), skip: str | None = None
):
    """
    Enable the archive components the NVIDIA packages need (Debian: ``contrib``) next to
    every enabled ``main`` source, in a deb822 file of its own; the operator's files stay as
    they are.

    + components: the components (``distros.toml`` ``extra_components``, or host data)
    + exclude_urls: sources to leave alone (the NVIDIA repository, a headers mirror)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.distro_components(name="Debian contrib", components=["contrib"])
    """
    if skip:
        host.noop(f"distro components: skipped, {skip}")
        return
    if not components:
        host.noop("no extra archive components needed")
        return
    sources = host.get_fact(AptSources) or []
    have: dict[tuple[str, str], set[str]] = {}
    signed: dict[tuple[str, str], str] = {}
    for repo in sources:  # AptRepo objects, which also read like dicts
        if repo["type"] != "deb" or repo["url"] in exclude_urls:
            continue
        pair = (repo["url"], repo["distribution"])
        have.setdefault(pair, set()).update(repo["components"])
        by = (repo["options"] or {}).get("signed-by")
        if isinstance(by, str) and pair not in signed:
            signed[pair] = by
    wanted = tuple(components)
    missing = sorted(
        pair for pair, comps in have.items() if "main" in comps and not set(wanted) <= comps
    )
    if not missing:
        host.noop(f"archive components {', '.join(wanted)} are enabled")
        return
    stanzas: dict[tuple[str, str], list[str]] = {}
    for url, suite in missing:
        stanzas.setdefault((url, signed.get((url, suite), "")), []).append(suite)
    text = "# Managed by provisioner: archive components the NVIDIA packages need.\n"
    for (url, by), suites in sorted(stanzas.items()):
        text += f"\nTypes: deb\nURIs: {url}\nSuites: {' '.join(suites)}\n"
        text += f"Components: {' '.join(wanted)}\n"
        text += f"Signed-By: {by}\n" if by else ""
    yield from files.put._inner(
        src=StringIO(text), dest=f"/etc/apt/sources.list.d/{CONTRIB_SOURCES}.sources", mode="644"
    )


@operation()
def headers_repository(distro: str, url: str | None, codename: str = "", skip: str | None = None):
    """
    Add an extra repository that carries the running kernel's headers (an internal mirror or a
    snapshot), signed by the distro archive's own key. Nothing when ``url`` is unset.

    + distro: distro key of ``data/distros.toml``
    + url: the repository (apt: ``<url> <codename> main``; dnf: the baseurl)
    + codename: the release codename (apt)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.headers_repository(
            name="Kernel headers mirror",
            distro="debian12",
            url="http://mirror.example/debian",
            codename="bookworm",
        )
    """
    if skip or not url:
        host.noop(f"kernel headers repository: {skip or 'the distro repositories are used'}")
        return
    target = gpu_stack.distro(distro)
    if target.family.name == "apt":
        yield from apt.sources_file._inner(
            filename=HEADERS_REPO_NAME,
            uris=[url],
            suites=[codename],
            components=["main"],
            signed_by=target.archive_keyring or None,
        )
    else:
        yield from dnf.repo._inner(
            src=HEADERS_REPO_NAME,
            baseurl=url,
            description="Kernel headers (provisioner)",
            gpgcheck=True,
            gpgkey=f"file://{target.archive_keyring}",
        )


# --- packages --------------------------------------------------------------------------------


@operation()
def packages(distro: str, packages: Sequence[str], skip: str | None = None):
    """
    Install packages with the distro's package manager (apt: package lists refreshed first);
    nothing when all are installed. A package may be given as ``name-version.arch`` as well
    (``kernel-devel-$(uname -r)`` on EL).

    + distro: distro key of ``data/distros.toml``
    + packages: the packages
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.packages(
            name="Kernel headers",
            distro="debian12",
            packages=["linux-headers-6.1.0-28-amd64"],
        )
    """
    if skip:
        host.noop(f"packages {', '.join(packages)}: skipped, {skip}")
        return
    if not packages:
        host.noop("no packages to install")
        return
    target = gpu_stack.distro(distro)
    installed = fact_cache.get_fact(GpuStackPackages)
    missing = [p for p in packages if not gpu_stack.is_installed(installed, p)]
    if not missing:
        host.noop(f"{', '.join(packages)} installed")
        return
    yield from _install(target, missing)


@operation()
def branch_lock(distro: str, branch: str, flavour: str, skip: str | None = None):
    """
    Lock the driver to one branch the way NVIDIA documents it for the distro: install
    ``nvidia-driver-pinning-<branch>`` before the driver (apt), or enable the
    ``nvidia-driver:<branch>-open|dkms`` module stream (EL).

    + distro: distro key of ``data/distros.toml``
    + branch: driver branch, e.g. ``"580"``
    + flavour: ``open`` or ``proprietary`` (picks the EL module stream)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.branch_lock(name="Lock branch 580", distro="debian12", branch="580", flavour="open")
    """
    if skip:
        host.noop(f"driver branch lock: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    if target.branch_lock == "none":
        host.noop(f"{target.name} ships one driver branch: held, not pinned")
        return
    installed = fact_cache.get_fact(GpuStackPackages)
    if target.branch_lock == "module-stream":
        stream = target.stream(branch, flavour)
        module, _, wanted = stream.partition(":")
        current = installed.get("stream")
        if current == wanted:
            host.noop(f"dnf module stream {stream} is enabled")
            return
        if current:
            yield _command(target.family, target.family.module_reset, module)
        yield _command(target.family, target.family.module_enable, stream)
        return
    wanted = target.pinning(branch)
    others = [
        p["name"]
        for p in gpu_stack.find_packages(installed, [target.pinning("*")])
        if p["name"] != wanted
    ]
    if gpu_stack.is_installed(installed, wanted) and not others:
        host.noop(f"{wanted} is installed")
        return
    if others:  # another branch was pinned: the caller allowed the change
        yield _command(target.family, target.family.remove, *others)
    if not gpu_stack.is_installed(installed, wanted):
        yield from _install(target, [wanted])


@operation()
def driver(
    distro: str,
    branch: str,
    flavour: str,
    version: str | None = None,
    kernel: str = "",
    skip: str | None = None,
):
    """
    Install the NVIDIA driver of one branch and kernel-module flavour (``nvidia-open`` or
    ``cuda-drivers``), upgrade it to ``version`` when that is given, or replace a driver of
    another branch or flavour (the deploy refuses that unless the operator allowed it).

    + distro: distro key of ``data/distros.toml``
    + branch: driver branch, e.g. ``"580"``
    + flavour: ``open`` (Turing and newer) or ``proprietary``
    + version: exact package version; None: the newest of the branch, or the installed one
    + kernel: the running kernel (``uname -r``; its flavour names Ubuntu's precompiled modules)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.driver(name="NVIDIA driver", distro="debian12", branch="580", flavour="open")
    """
    if skip:
        host.noop(f"NVIDIA driver: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    installed_fact = fact_cache.get_fact(GpuStackPackages)
    current = gpu_stack.installed_driver(target, installed_fact)
    metas = target.driver_packages(flavour, branch, kernel)
    if target.distribution_driver:
        version = None  # the release's one version (Ubuntu's module packages carry the kernel's)
    if current.version is None:
        yield from _install(target, [_versioned(target, m, version) for m in metas])
        return
    same = current.flavour == flavour and gpu_stack.branch_of(current.version) == branch
    if same and (version is None or current.version.split(":", 1)[-1] == version):
        if all(gpu_stack.is_installed(installed_fact, m) for m in metas):
            host.noop(f"NVIDIA driver {current.version} ({flavour} kernel modules) is installed")
            return
        # the kernel module is there without its meta package: add it at the same version
        version = current.version.split(":", 1)[-1]
    if target.family.unhold_before_replace and installed_fact.get("locks"):
        yield _command(target.family, target.family.unhold, *installed_fact["locks"])
    pinned = [_versioned(target, m, version) for m in metas]
    yield from _install(target, pinned, replace_held=True)


@operation()
def fabricmanager(
    distro: str,
    nvswitch: bool,
    branch: str = "",
    version: str | None = None,
    skip: str | None = None,
):
    """
    Install Fabric Manager at the installed driver's version, on NVSwitch systems only
    (elsewhere it fails to start: ``NV_WARN_NOTHING_TO_DO``). The package name follows the
    branch (``nvidia-fabricmanager`` from 580; ``nvidia-fabricmanager-<branch>`` on apt and
    ``nvidia-fabric-manager`` on EL before), the version the driver's upstream version as
    NVIDIA's driver container matches it (apt: ``=<version>*``; dnf: ``-<version>``).

    + distro: distro key of ``data/distros.toml``
    + nvswitch: whether the host has NVSwitch bridges (PCI class 0680)
    + branch: the driver branch (picks the package name)
    + version: the driver version to expect when no driver is installed yet
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.fabricmanager(
            name="Fabric Manager", distro="ubuntu2204", nvswitch=True, branch="580"
        )
    """
    if skip:
        host.noop(f"Fabric Manager: skipped, {skip}")
        return
    if not nvswitch:
        host.noop("Fabric Manager: not an NVSwitch system")
        return
    target = gpu_stack.distro(distro)
    installed_fact = fact_cache.get_fact(GpuStackPackages)
    driver_version = gpu_stack.installed_driver(target, installed_fact).version or version
    package = target.fabricmanager_package(branch or gpu_stack.branch_of(driver_version or "0"))
    present = gpu_stack.find_packages(installed_fact, [package])
    upstream = gpu_stack.package_version(driver_version) if driver_version else None
    if present and upstream and gpu_stack.package_version(present[0]["version"]) == upstream:
        host.noop(f"{package} {upstream} is installed (the driver's version)")
        return
    locks = installed_fact.get("locks", [])
    if present and target.family.unhold_before_replace and package in locks:
        yield _command(target.family, target.family.unhold, package)
    spec = package
    if upstream:
        spec = f"{package}{target.family.version_separator}{target.fabricmanager_version(upstream)}"
    yield from _install(target, [spec], replace_held=bool(present))


@operation()
def hold(distro: str, skip: str | None = None):
    """
    Hold every installed driver package (``apt-mark hold`` / ``dnf versionlock``), so that no
    upgrade replaces the user space under the loaded kernel module (NVML "Driver/library
    version mismatch"). The branch lock keeps a requested upgrade within the branch.

    + distro: distro key of ``data/distros.toml``
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.hold(name="Hold the driver packages", distro="debian12")
    """
    if skip:
        host.noop(f"driver package holds: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    installed_fact = fact_cache.get_fact(GpuStackPackages)
    unheld = gpu_stack.packages_to_hold(target, installed_fact)
    if not unheld:
        host.noop("the driver packages are held")
        return
    stale = [name for name in unheld if name in installed_fact.get("locks", [])]
    if stale:  # a versionlock for another version of these packages
        yield _command(target.family, target.family.unhold, *stale)
    yield _command(target.family, target.family.hold, *unheld)


@operation()
def auto_upgrades_exclude(distro: str, skip: str | None = None):
    """
    Keep unattended-upgrades off the driver: an apt.conf.d drop-in (the family's
    ``auto_upgrades_dropin``) that lists every installed driver package in
    ``Unattended-Upgrade::Package-Blacklist``, as the exact name (each entry is a Python
    regular expression matched at the start of the name: escaped, ending with ``$``). Removed
    when no driver package is installed or the host has no driver to manage (``skip``). The
    holds already stop the upgrade; the drop-in keeps it off even where a hold is lifted by
    hand. dnf has no such file: dnf-automatic runs dnf with its plugins, versionlock included.

    + distro: distro key of ``data/distros.toml``
    + skip: reason to manage no driver here (the drop-in is removed)

    **Example:**

    .. code:: python

        nvidia.auto_upgrades_exclude(name="Keep unattended upgrades off", distro="debian12")
    """
    paths = _auto_upgrades_dropins(distro)
    if not paths:
        host.noop(f"{distro}: no unattended-upgrades drop-in (dnf-automatic honours versionlock)")
        return
    names = [] if skip else _driver_package_names(gpu_stack.distro(distro))
    if not names:  # no driver managed here: no drop-in (wherever a package family puts it)
        for path in paths:
            yield from files.file._inner(path=path, present=False)
        return
    text = _render("unattended-upgrades.conf.j2", patterns=[_exact_name(n) for n in names])
    yield from files.put._inner(src=StringIO(text), dest=paths[0], mode="644")


def _auto_upgrades_dropins(distro: str) -> list[str]:
    """The distro family's drop-in path; without a distro (a skipped host), every family's."""
    if distro:
        path = gpu_stack.distro(distro).family.auto_upgrades_dropin
        return [path] if path else []
    return sorted({f.auto_upgrades_dropin for f in gpu_stack.families().values()} - {""})


def _exact_name(name: str) -> str:
    """A package name as an unattended-upgrades entry (a Python regular expression matched at
    the start of the name): Debian package names are ``[a-z0-9.+-]``, of which ``.`` and ``+``
    are special; ``$`` ends the match at the name's end."""
    return re.sub(r"([.+])", r"\\\1", name) + "$"


def _driver_package_names(target: gpu_stack.Distro) -> list[str]:
    """The installed driver packages, as the holds see them (``hold_globs`` less
    ``hold_exclude``)."""
    installed = fact_cache.get_fact(GpuStackPackages)
    return sorted(
        {
            p["name"]
            for p in gpu_stack.find_packages(installed, target.hold_globs)
            if not gpu_stack.name_matches(p["name"], target.hold_exclude)
        }
    )


@operation()
def kernel_hold(distro: str, kernel: str, hold: bool, skip: str | None = None):
    """
    ``nvidia_hold_kernel``: hold the running kernel's installed packages (the distro's
    ``kernel_hold`` names: its image and headers, its flavour's metapackages) with the
    family's hold command, and record them in ``/var/lib/provisioner/kernel-hold``; with
    ``hold=False``, release what that record names (never a hold made by someone else) and
    remove it.

    + distro: distro key of ``data/distros.toml``
    + kernel: the running kernel (``uname -r``)
    + hold: hold (True) or release the provisioner's holds (False)
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.kernel_hold(
            name="Hold the kernel", distro="debian12", kernel="6.1.0-28-amd64", hold=True
        )
    """
    if skip:
        host.noop(f"kernel hold: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    names = target.kernel_packages(kernel) if hold else []
    fact = host.get_fact(KernelPackages, names=names)
    held = {p["name"]: bool(p.get("held")) for p in fact["packages"]}
    recorded = list(fact.get("recorded") or [])
    if hold:
        yield from _hold_kernel(target, [n for n in names if n in held], held, recorded)
        return
    release = [name for name in recorded if held.get(name)]
    if release:
        yield _command(target.family, target.family.unhold, *release)
    if recorded:
        yield from files.file._inner(path=KERNEL_HOLD_RECORD, present=False)
    elif not release:
        host.noop("kernel hold: nvidia_hold_kernel is false and nothing was held by it")


def _hold_kernel(
    target: gpu_stack.Distro, present: list[str], held: dict[str, bool], recorded: list[str]
) -> Iterator[Any]:
    unheld = [name for name in present if not held[name]]
    if unheld:
        yield _command(target.family, target.family.hold, *unheld)
    want = sorted({*recorded, *unheld})
    if want != sorted(recorded):
        directory = KERNEL_HOLD_RECORD.rsplit("/", 1)[0]
        yield from files.directory._inner(path=directory, present=True)
        record = "".join(f"{name}\n" for name in want)
        yield from files.put._inner(src=StringIO(record), dest=KERNEL_HOLD_RECORD, mode="644")
    if not unheld:
        host.noop(f"kernel hold: {', '.join(present) or 'no kernel package'} held")


# --- kernel module ---------------------------------------------------------------------------


@operation()
def blacklist_nouveau(distro: str, skip: str | None = None):
    """
    Blacklist nouveau in ``/etc/modprobe.d`` and rebuild the initramfs when that file changed
    (``update-initramfs -u`` / ``dracut -f``); without the rebuild tool (a container) the
    rebuild is skipped with a message.

    + distro: distro key of ``data/distros.toml``
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.blacklist_nouveau(name="Blacklist nouveau", distro="debian12")
    """
    if skip:
        host.noop(f"nouveau blacklist: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    content = _render("blacklist-nouveau.conf.j2")
    ops = list(files.put._inner(src=StringIO(content), dest=NOUVEAU_BLACKLIST, mode="644"))
    if not ops:
        host.noop(f"{NOUVEAU_BLACKLIST} is in place")
        return
    changed_content = host.get_fact(Sha1File, path=NOUVEAU_BLACKLIST) != _sha1(content)
    yield from ops
    if not changed_content:
        return  # only the mode changed
    tool = target.initramfs[0]
    if host.get_fact(Which, command=tool):
        yield StringCommand(*target.initramfs)
    elif _executing():
        host.log_styled(
            f"{tool} not found: the initramfs was not rebuilt (nouveau stays off after a reboot "
            "only where the initramfs does not load it)",
            fg="yellow",
            log_func=logger.warning,
        )


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _wait_for_module(target: gpu_stack.Distro, settle_seconds: int) -> str | None:
    """After a reboot: what is wrong with the running module, waiting up to ``settle_seconds``
    for it to come right (None: all right)."""
    deadline = time.monotonic() + settle_seconds
    while True:
        installed, module, smi = _module_state(target, anew=True)
        problem = gpu_stack.module_problem(installed, module, smi)
        if problem is None or time.monotonic() >= deadline:
            return problem
        gevent.sleep(MODULE_SETTLE_INTERVAL)


def _next_boot_blocker(
    target: gpu_stack.Distro, installed: gpu_stack.InstalledDriver
) -> str | None:
    """Why a reboot now could brick the host: the kernel it boots next has no (fitting,
    signed where Secure Boot enforces) NVIDIA module for the installed driver, with the
    operator's next step (:func:`provisioner.next_boot.problem`); None: the reboot may go."""
    fact = fact_cache.get_fact(NextBootModule)
    kernel = fact.get("kernel")
    headers = target.headers.format(kernel=kernel) if kernel else None
    found = next_boot.problem(fact, installed.driver_version, headers)
    if found is None:
        return None
    reason, step = found
    return f"not rebooting: {reason}; next: {step}, then run provision apply again"


@operation()
def reboot_if_needed(
    distro: str,
    reboot: bool = True,
    changed: Sequence[OperationMeta] = (),
    reboot_timeout: int = 900,
    settle_seconds: int = MODULE_SETTLE_SECONDS,
    marker: str = gpu_stack.REBOOT_MARKER,
    skip: str | None = None,
):
    """
    Reboot when the kernel module that runs is not the one installed: the driver packages
    changed in this run (``changed``), the loaded module's version differs from the installed
    driver, no module is loaded, nvidia-smi reports a driver/library mismatch, or nouveau is
    loaded. After the reboot the module is checked again and the host fails with the reason if
    it is still wrong. With ``reboot=False`` the host is reported as pending reboot instead: a
    warning and the marker file ``/var/lib/provisioner/reboot-required`` with the reasons; the
    same on ``@local`` (pyinfra cannot reboot the machine it runs on), and when the kernel the
    host boots next has no NVIDIA module for the installed driver (or an unsigned one under
    Secure Boot): a reboot would come up without the driver, so the reason names that kernel
    and the operator's next step (:mod:`provisioner.next_boot`, the ``NextBootModule`` fact).
    Batches follow pyinfra's ``--serial`` / ``--parallel N``.

    + distro: distro key of ``data/distros.toml``
    + reboot: whether rebooting is allowed
    + changed: operations whose change requires a reboot (the driver's)
    + reboot_timeout: seconds to wait for the host to come back
    + settle_seconds: seconds the module may take to show up after the reboot
    + marker: the pending-reboot marker file
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        installed = nvidia.driver(distro="debian12", branch="580", flavour="open")
        nvidia.reboot_if_needed(
            name="Reboot into the driver", distro="debian12", changed=[installed]
        )
    """
    if skip:
        host.noop(f"reboot: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    driver_changed = system.any_change(changed)
    installed, module, smi = _module_state(target)
    found = gpu_stack.reboot_reasons(installed, module, smi)
    reasons = ([DRIVER_CHANGED] if driver_changed else []) + found
    marker_present = bool(host.get_fact(File, path=marker))
    if not reasons:
        if marker_present:
            yield from files.file._inner(path=marker, present=False)
        else:
            host.noop("the installed NVIDIA module is the one loaded: no reboot needed")
        return
    why_not = None if reboot else "nvidia_reboot is false"
    if isinstance(getattr(host, "connector", None), LocalConnector):
        why_not = "pyinfra runs on this machine (@local): it cannot reboot itself"
    why_not = why_not or _next_boot_blocker(target, installed)
    if why_not:
        if _executing():
            why = f"({why_not}): {'; '.join(reasons)}"
            host.log_styled(f"PENDING REBOOT {why}", fg="yellow", log_func=logger.warning)
            run_events.record(host.name, run_events.PENDING_REBOOT, reason=why)
        # what the host itself shows, so that the marker stays the same until the reboot
        text = _render("reboot-required.j2", reasons=found or reasons, why_not=why_not)
        yield from files.put._inner(src=StringIO(text), dest=marker, mode="644")
        return
    if _executing():
        host.log_styled(f"rebooting: {'; '.join(reasons)}", log_func=logger.info)
    yield from system.reboot._inner(delay=10, interval=2, reboot_timeout=reboot_timeout)
    if _executing():
        problem = _wait_for_module(target, settle_seconds)
        if problem:
            yield system.refusal(
                f"after the reboot the NVIDIA kernel module is not right: {problem}"
            )
            return
    if marker_present:
        yield from files.file._inner(path=marker, present=False)


@operation()
def driver_service(
    service: str,
    distro: str,
    needs_module: bool = True,
    skip: str | None = None,
):
    """
    Enable a driver service (``nvidia-persistenced``, ``nvidia-fabricmanager``) and start it
    once the NVIDIA kernel module is loaded; before that (a pending reboot) it is only enabled,
    as it cannot start without the module.

    + service: the systemd unit
    + distro: distro key of ``data/distros.toml``
    + needs_module: start it only while the module is loaded
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.driver_service(
            name="Persistence daemon", service="nvidia-persistenced", distro="debian12"
        )
    """
    if skip:
        host.noop(f"{service}: skipped, {skip}")
        return
    target = gpu_stack.distro(distro)
    running: bool | None = True
    if needs_module:
        installed, module, smi = _module_state(target)
        if gpu_stack.loaded_module_version(module, smi) is None:
            running = None  # leave it alone until the module is loaded
            host.noop(f"{service}: enabled only, it starts once the NVIDIA module is loaded")
    yield from systemd.service._inner(service=service, running=running, enabled=True)


# --- CUDA toolkit ----------------------------------------------------------------------------


@operation()
def toolkit_path(version: str, bin_dir: str, path: str = CUDA_PROFILE, skip: str | None = None):
    """
    Put a CUDA toolkit's ``bin`` directory on PATH for login shells (``/etc/profile.d``).

    + version: the toolkit's version, e.g. ``"13.0"``
    + bin_dir: its ``bin`` directory, e.g. ``/usr/local/cuda-13.0/bin``
    + path: the profile script
    + skip: reason to do nothing

    **Example:**

    .. code:: python

        nvidia.toolkit_path(name="CUDA on PATH", version="13.0", bin_dir="/usr/local/cuda-13.0/bin")
    """
    if skip:
        host.noop(f"CUDA toolkit PATH: skipped, {skip}")
        return
    text = _render("cuda-profile.sh.j2", version=version, bin_dir=bin_dir)
    yield from files.put._inner(src=StringIO(text), dest=path, mode="644")
