"""The lab fleet: real Debian hosts with real systemd, one network namespace each, reached over SSH.

How a lab host is made (read `Fleet.create_host` and `Fleet.boot_host` from top to bottom):

1. **Base rootfs**, one per Debian release, made once and cached outside the tree
   (`$LAB_CACHE/rootfs/<release>`): `debootstrap --variant=minbase --include=openssh-server,...`,
   then apt pointed at the lab's apt-cacher-ng, an empty machine-id, no SSH host keys.
2. **Overlay copy**: `mount -t overlay` with the base as the read-only lower layer and an upper
   layer under `$LAB_RUN/hosts/<name>/`: a host costs a few hundred KB until it installs things.
3. **Identity**: `/etc/hostname`, a fresh `/etc/machine-id`, fresh SSH host keys, root's
   `authorized_keys` (the lab's own key, generated into the cache, never committed).
4. **Simulated GPUs** (test doubles, `tests/doubles/`): the GPU set from `fleet.toml` goes to
   `/etc/nvidia-smi-double/` and `/etc/lspci-double`; `lspci` is installed as
   `/usr/local/bin/lspci` because PCI devices are visible before any driver. `nvidia-smi` itself is
   *not* installed: it comes with the stand-in `nvidia-smi` package from the lab's apt repository,
   as on a real server.
5. **Network**: namespace `lab-<name>`; veth pair `vlab-<name>` (machine side,
   169.254.(100+i).1/30) and `eth0` (host side, .2/30); a route to the service address
   169.254.100.1 (on the machine's `lo`), where the mirrors listen, and to the other hosts' /30s.
   No route anywhere else, no DNS.
6. **Boot**: a supervisor process runs `systemd-nspawn -b` in that namespace and starts it again
   when it exits with 133 (a `reboot` inside the host), so a reboot is a real reboot.
7. **Wait** until SSH answers (bounded).

Teardown (`Fleet.destroy_host`) undoes each step by what it finds on the machine, not by what it
remembers, so it also cleans up after a start that failed half-way.

This file uses only the standard library: the supervisor runs it as a script
(`python3 fleet.py supervise ...`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DOUBLES = REPO / "tests" / "doubles"
FLEET_TOML = HERE / "fleet.toml"

REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot


def cache_dir() -> Path:
    """Where the base rootfs, keys and caches live between runs (`LAB_CACHE`)."""
    return Path(os.environ.get("LAB_CACHE", "/var/cache/provisioner-lab"))


def run_dir() -> Path:
    """Where a running lab keeps its hosts, logs and state (`LAB_RUN`)."""
    return Path(os.environ.get("LAB_RUN", "/var/tmp/provisioner-lab"))


def load_config(path: Path = FLEET_TOML) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


# --------------------------------------------------------------------------------------------------
# Host definitions


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_mib: int
    compute_cap: str
    pci_device: str  # PCI device id (vendor is always 10de)
    pci_bus_id: str  # as nvidia-smi prints it: 00000000:01:00.0
    uuid: str
    mig_mode: str  # "Disabled" on MIG-capable GPUs, "[N/A]" elsewhere (nvidia-smi's query output)


@dataclass(frozen=True)
class HostSpec:
    name: str
    index: int  # host N gets 169.254.(100+N).0/30
    release: str  # bookworm | trixie
    gpus: tuple[Gpu, ...] = ()
    nvswitch: bool = False

    @property
    def address(self) -> str:
        """The host's own address (eth0 inside its namespace)."""
        return f"169.254.{100 + self.index}.2"

    @property
    def gateway(self) -> str:
        """The machine's end of the veth pair."""
        return f"169.254.{100 + self.index}.1"

    @property
    def netns(self) -> str:
        return f"lab-{self.name}"

    @property
    def veth(self) -> str:
        return f"vlab-{self.name}"  # at most 15 characters (IFNAMSIZ)

    @property
    def machine(self) -> str:
        return f"lab-{self.name}"


MIG_CAPABLE = ("A100", "A30", "H100", "H200", "B200", "GB200")
# PCI bus numbers given to the simulated GPUs, in order (as on a typical 8-GPU board)
BUS_NUMBERS = ("01", "07", "0F", "41", "81", "87", "8F", "C1")


def host_specs(config: dict | None = None, names: Iterable[str] | None = None) -> list[HostSpec]:
    """The hosts of `fleet.toml`: those named, else those in `$LAB_HOSTS` (a,b), else all."""
    config = config or load_config()
    if names is None and os.environ.get("LAB_HOSTS"):
        names = [n.strip() for n in os.environ["LAB_HOSTS"].split(",") if n.strip()]
    specs = []
    for h in config["host"]:
        gpus = tuple(
            Gpu(
                index=i,
                name=g["name"],
                memory_total_mib=g["memory_total_mib"],
                compute_cap=g["compute_cap"],
                pci_device=g["pci_device"],
                pci_bus_id=f"00000000:{BUS_NUMBERS[i]}:00.0",
                # stable per host and slot, shaped like a real GPU UUID
                uuid="GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{h['name']}.gpu{i}.lab")),
                mig_mode="Disabled" if any(m in g["name"] for m in MIG_CAPABLE) else "[N/A]",
            )
            for i, g in enumerate(h.get("gpus", []))
        )
        specs.append(HostSpec(h["name"], h["index"], h["release"], gpus, h.get("nvswitch", False)))
    if names is not None:
        wanted = list(names)
        known = {s.name for s in specs}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise LabError(f"unknown lab host(s) {unknown}; fleet.toml has {sorted(known)}")
        specs = [s for s in specs if s.name in wanted]
    return specs


class LabError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Small helpers


def sh(*cmd: str | os.PathLike, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture its output, raise with the output when it fails."""
    argv = [str(c) for c in cmd]
    kw.setdefault("text", True)
    p = subprocess.run(argv, capture_output=True, **kw)
    if check and p.returncode != 0:
        out = p.stdout + p.stderr if kw["text"] else (p.stdout + p.stderr).decode(errors="replace")
        raise LabError(f"{' '.join(argv)} -> {p.returncode}\n{out}")
    return p


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def pid_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs and its command line contains `marker` (so a reused PID is never ours)."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        if state in ("Z", "X"):  # exited, not yet reaped
            return False
        if cmdline:
            return marker in cmdline.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.02)  # a process in the middle of execve() shows an empty command line
    return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def processes_rooted_in(root: Path) -> list[int]:
    """PIDs whose root directory is `root`: the processes of a container booted from it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def tcp_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


# --------------------------------------------------------------------------------------------------
# The fleet


@dataclass
class Fleet:
    """Hosts of one lab, their cached base rootfs and their runtime files.

    `Fleet(host_specs()).up()` makes and boots every host; `.down()` removes everything.
    """

    hosts: list[HostSpec]
    cache: Path = field(default_factory=cache_dir)
    run: Path = field(default_factory=run_dir)
    config: dict = field(default_factory=load_config)
    service_address: str = ""

    def __post_init__(self) -> None:
        self.service_address = self.service_address or self.config["network"]["service_address"]
        self._supervisors: dict[str, subprocess.Popen] = {}

    # ---- paths -------------------------------------------------------------------------------
    @property
    def ssh_key(self) -> Path:
        return self.cache / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """The hosts' SSH host keys, recorded when each host is made (OpenSSH known_hosts)."""
        return self.run / "known_hosts"

    def base(self, release: str) -> Path:
        return self.cache / "rootfs" / release

    def dir(self, host: HostSpec) -> Path:
        return self.run / "hosts" / host.name

    def root(self, host: HostSpec) -> Path:
        return self.dir(host) / "root"

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no lab host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    # ---- 1. base rootfs, cached per release ----------------------------------------------------
    def ensure_ssh_key(self) -> Path:
        if not self.ssh_key.exists():
            self.ssh_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = self.ssh_key
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provisioner-lab", "-f", key)
        return self.ssh_key

    def base_stamp(self, release: str) -> str:
        """Changes when what goes into the base changes, so a stale cached base is rebuilt."""
        base = self.config["base"]
        text = json.dumps([release, base["include"], base["mirror"], base["security_mirror"], 2])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def ensure_base(self, release: str) -> Path:
        base = self.base(release)
        stamp = base / ".lab-base"
        if stamp.exists() and stamp.read_text().strip() == self.base_stamp(release):
            return base
        conf = self.config["base"]
        tmp = base.with_name(release + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        sh(
            "debootstrap", "--variant=minbase", "--include=" + ",".join(conf["include"]),
            release, tmp, conf["mirror"],
        )  # fmt: skip
        self._configure_base(tmp, release)
        shutil.rmtree(base, ignore_errors=True)
        tmp.rename(base)
        stamp.write_text(self.base_stamp(release) + "\n")
        (base / ".lab-base-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        return base

    def _configure_base(self, root: Path, release: str) -> None:
        conf = self.config["base"]
        svc = self.service_address
        port = self.config["mirror"]["acng_port"]
        # apt: Debian through the lab's apt-cacher-ng (hosts have no route out), the lab mirror
        # directly; compressed indexes and no translations keep each host's apt lists small.
        write(
            root / "etc/apt/apt.conf.d/01lab-proxy",
            f'Acquire::http::Proxy "http://{svc}:{port}";\nAcquire::http::Proxy::{svc} "DIRECT";\n',
        )
        write(
            root / "etc/apt/apt.conf.d/02lab-small-lists",
            'Acquire::GzipIndexes "true";\nAcquire::Languages "none";\n',
        )
        # the machine's own apt settings for its mirror (e.g. a snapshot without Valid-Until)
        for extra in conf.get("copy_apt_conf", []):
            if Path(extra).exists():
                shutil.copy(extra, root / "etc/apt/apt.conf.d" / Path(extra).name)
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        write(
            root / "etc/apt/sources.list.d/debian.sources",
            f"Types: deb\nURIs: {conf['mirror']}\nSuites: {release} {release}-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {conf['security_mirror']}\nSuites: {release}-security\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        # identity comes per host; no DNS in the lab
        write(root / "etc/machine-id", "")
        write(root / "etc/resolv.conf", "")
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        write(root / "etc/ssh/sshd_config.d/lab.conf", "PasswordAuthentication no\nUseDNS no\n")
        # what debootstrap downloaded is not part of a server
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        for lists in (root / "var/lib/apt/lists").glob("*_*"):
            lists.unlink()

    # ---- 2.-5. one host ------------------------------------------------------------------------
    def create_host(self, host: HostSpec) -> None:
        """Overlay copy of the base, identity, simulated GPUs, network namespace."""
        d, root = self.dir(host), self.root(host)
        for sub in ("upper", "work", "root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # 2. overlay copy of the cached base
        if str(root) not in mounts_under(root):
            lower, upper, work = self.base(host.release), d / "upper", d / "work"
            sh("mount", "-t", "overlay", "overlay",
               "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", root)  # fmt: skip
        # 3. identity
        write(root / "etc/hostname", host.name + "\n")
        write(root / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n")
        write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
        sh("ssh-keygen", "-A", "-f", root)  # writes <root>/etc/ssh/ssh_host_*_key
        self.record_host_keys(host)
        pub = self.ssh_key.with_suffix(".pub").read_text()
        (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        write(root / "root/.ssh/authorized_keys", pub, 0o600)
        # 4. simulated GPUs
        self.write_gpu_doubles(host)
        # 5. network namespace and veth pair
        self.create_network(host)

    def record_host_keys(self, host: HostSpec) -> None:
        """Put the host's fresh public host keys into `known_hosts` (replacing older ones for its
        address), so every SSH client of the lab checks them strictly."""
        keys = sorted((self.root(host) / "etc/ssh").glob("ssh_host_*_key.pub"))
        if not keys:
            raise LabError(f"{host.name}: no SSH host keys under {self.root(host)}/etc/ssh")
        lines = [line for line in self._known_lines() if line.split(" ", 1)[0] != host.address]
        for key in keys:
            kind, blob = key.read_text().split()[:2]
            lines.append(f"{host.address} {kind} {blob}")
        write(self.known_hosts, "".join(f"{line}\n" for line in lines))

    def forget_host_keys(self, host: HostSpec) -> None:
        if self.known_hosts.exists():
            lines = [line for line in self._known_lines() if line.split(" ", 1)[0] != host.address]
            write(self.known_hosts, "".join(f"{line}\n" for line in lines))

    def _known_lines(self) -> list[str]:
        try:
            return [line for line in self.known_hosts.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def write_gpu_doubles(self, host: HostSpec) -> None:
        """The GPU set the doubles report (`driver` comes with the stand-in nvidia-smi package)."""
        root = self.root(host)
        conf = root / "etc/nvidia-smi-double"
        gpus = "".join(
            f"{g.index}|{g.name}|{g.memory_total_mib}|{g.compute_cap}|{g.pci_bus_id}|{g.uuid}|{g.mig_mode}\n"
            for g in host.gpus
        )
        write(conf / "gpus", gpus)
        write(conf / "loaded_file", "/run/nvidia-double/module-version\n")
        write(conf / "persistence_file", "/run/nvidia-double/persistence\n")
        # a forced state (`python -m tests.lab state HOST ...`) lives in /run: a reboot clears it,
        # as a reboot clears a real driver/library mismatch
        (conf / "state").unlink(missing_ok=True)
        (conf / "state").symlink_to("/run/nvidia-double/state")
        write(root / "etc/lspci-double", lspci_double_config(host))
        lspci = DOUBLES / "lspci"
        if lspci.exists():
            shutil.copy(lspci, root / "usr/local/bin/lspci")
            (root / "usr/local/bin/lspci").chmod(0o755)

    def create_network(self, host: HostSpec) -> None:
        ns, veth, svc = host.netns, host.veth, self.service_address
        routes = self.config["network"]["lab_routes"]
        if not netns_exists(ns):
            sh("ip", "netns", "add", ns)
        if not link_exists(veth):
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "replace", f"{host.gateway}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        # forward between lab hosts only: forwarding is switched on for the lab's veths alone
        Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding").write_text("1\n")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "replace", f"{host.address}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "replace", f"{svc}/32", "via", host.gateway)
        sh("ip", "-n", ns, "route", "replace", routes, "via", host.gateway)

    # ---- 6. boot under a supervisor ------------------------------------------------------------
    def nspawn_command(self, host: HostSpec) -> list[str]:
        return [
            "systemd-nspawn", "--quiet", "--boot",
            f"--directory={self.root(host)}",
            f"--machine={host.machine}", f"--hostname={host.name}",
            "--register=no", "--keep-unit",  # there is no systemd on the machine itself
            # nftables inside the host (the Ollama allowlist): safe, its network namespace is
            # its own, so the capability reaches no other host and not the machine
            "--capability=CAP_NET_ADMIN",
            f"--network-namespace-path=/run/netns/{host.netns}",
            "--console=passive", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        ]  # fmt: skip

    def boot_host(self, host: HostSpec) -> int:
        """Start the host's supervisor (which starts systemd-nspawn); returns its PID."""
        d = self.dir(host)
        pid = read_pid(d / "supervisor.pid")
        if pid and pid_alive(pid, str(d)):
            return pid
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")  # pure cgroup2 (trixie)
        log = (d / "console.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, __file__, "supervise", str(d), "--", *self.nspawn_command(host)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip
        log.close()
        (d / "supervisor.pid").write_text(f"{proc.pid}\n")
        self._supervisors[host.name] = proc  # reaped by poll() (when this process started it)
        return proc.pid

    # ---- 7. wait for SSH -----------------------------------------------------------------------
    def ssh_args(self, host: HostSpec, connect_timeout: int = 3) -> list[str]:
        return [
            "ssh", "-i", str(self.ssh_key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
            f"root@{host.address}",
        ]  # fmt: skip

    def ssh(self, host: HostSpec, command: str, check: bool = True, timeout: float = 300):
        """Run a shell command on a host over SSH."""
        return sh(*self.ssh_args(host), command, check=check, timeout=timeout)

    def wait_ssh(self, host: HostSpec, timeout: float = 90) -> float:
        """Wait until the host accepts an SSH login; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self.running(host):
                proc = self._supervisors.get(host.name)
                rc = proc.poll() if proc else "?"
                raise LabError(
                    f"{host.name}: systemd-nspawn stopped (supervisor: {rc})\n"
                    + self.console_tail(host)
                )
            if tcp_open(host.address, 22):
                p = sh(*self.ssh_args(host, 2), "true", check=False, timeout=10)
                if p.returncode == 0:
                    return time.monotonic() - started
            time.sleep(0.3)
        raise LabError(f"{host.name}: no SSH after {timeout:.0f}s\n{self.console_tail(host)}")

    def console_tail(self, host: HostSpec, lines: int = 30) -> str:
        try:
            text = (self.dir(host) / "console.log").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- the whole fleet -----------------------------------------------------------------------
    def up(self, ssh_timeout: float = 90) -> dict[str, float]:
        """Make, boot and wait for every host. On any failure everything is torn down again."""
        timings: dict[str, float] = {}
        try:
            self.ensure_ssh_key()
            # one debootstrap per missing release, side by side (downloads overlap with unpacking)
            releases = sorted({h.release for h in self.hosts})
            t = time.monotonic()
            with ThreadPoolExecutor(max_workers=len(releases)) as pool:
                list(pool.map(self.ensure_base, releases))
            timings["base rootfs"] = time.monotonic() - t
            t = time.monotonic()
            for host in self.hosts:
                self.create_host(host)
                self.boot_host(host)
            for host in self.hosts:
                self.wait_ssh(host, ssh_timeout)
            timings["hosts"] = time.monotonic() - t
        except BaseException:
            self.down()
            raise
        return timings

    def down(self) -> list[str]:
        """Remove every host of this fleet; returns what could not be removed (empty when clean)."""
        problems: list[str] = []
        for host in self.hosts:
            problems += self.destroy_host(host)
        hosts_dir = self.run / "hosts"
        if hosts_dir.exists() and not any(hosts_dir.iterdir()):
            hosts_dir.rmdir()
        return problems

    # ---- operations on one host ----------------------------------------------------------------
    def running(self, host: HostSpec) -> bool:
        pid = read_pid(self.dir(host) / "supervisor.pid")
        return bool(pid and pid_alive(pid, str(self.dir(host))))

    def stop_host(self, host: HostSpec, timeout: float = 30) -> None:
        """Power the host off (SIGTERM to systemd-nspawn: a clean shutdown), then make sure."""
        d = self.dir(host)
        pid = read_pid(d / "supervisor.pid")
        if pid and pid_alive(pid, str(d)):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid, str(d)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid, str(d)):
                os.kill(pid, signal.SIGKILL)
        nspawn = read_pid(d / "nspawn.pid")
        if nspawn and pid_alive(nspawn, "systemd-nspawn"):
            os.kill(nspawn, signal.SIGKILL)
        # whatever still runs inside the host's root (after a SIGKILL of systemd-nspawn)
        for leftover in processes_rooted_in(self.root(host)):
            try:
                os.kill(leftover, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while processes_rooted_in(self.root(host)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for f in ("supervisor.pid", "nspawn.pid"):
            (d / f).unlink(missing_ok=True)

    def start_host(self, host: HostSpec, ssh_timeout: float = 90) -> None:
        self.boot_host(host)
        self.wait_ssh(host, ssh_timeout)

    def cut(self, host: HostSpec) -> None:
        """Cut the host off the network, like a pulled cable: its eth0 goes down, so packets to
        and from it are dropped and connections time out (the machine's `unreachable` route for
        the lab range keeps them from ever leaving the machine)."""
        sh("ip", "-n", host.netns, "link", "set", "eth0", "down")

    def uncut(self, host: HostSpec) -> None:
        """Reconnect a cut host: eth0 up again, and the routes that went down with it."""
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        self.create_network(host)

    def is_cut(self, host: HostSpec) -> bool:
        p = sh("ip", "-n", host.netns, "-o", "link", "show", "eth0", check=False)
        return p.returncode == 0 and "state DOWN" in p.stdout

    def boots(self, host: HostSpec) -> int:
        """How many times systemd-nspawn was started for this host since it was made."""
        try:
            return int((self.dir(host) / "boots").read_text())
        except (OSError, ValueError):
            return 0

    def reboot(self, host: HostSpec, ssh_timeout: float = 90) -> None:
        """`systemctl reboot` in the host; waits until it is back (its supervisor restarts it)."""
        before = self.boots(host)
        self.ssh(host, "systemctl reboot", check=False, timeout=30)
        deadline = time.monotonic() + ssh_timeout
        while self.boots(host) == before:
            if time.monotonic() > deadline or not self.running(host):
                raise LabError(f"{host.name}: did not reboot\n{self.console_tail(host)}")
            time.sleep(0.2)
        self.wait_ssh(host, ssh_timeout)

    def destroy_host(self, host: HostSpec) -> list[str]:
        """Stop the host and remove its mounts, namespace, veth, recorded host keys and files."""
        d = self.dir(host)
        self.stop_host(host)
        problems = self._unmount(host) + self._remove_network(host)
        self._remove_nspawn_leftovers(host)
        self.forget_host_keys(host)
        if mounts_under(d):
            problems.append(f"{host.name}: {d} still has mounts; not removed")
        elif d.exists():
            shutil.rmtree(d, ignore_errors=True)
        return problems

    def _unmount(self, host: HostSpec) -> list[str]:
        problems = []
        for point in mounts_under(self.dir(host)):
            if sh("umount", point, check=False).returncode != 0:
                time.sleep(0.5)
                if sh("umount", point, check=False).returncode != 0:
                    problems.append(f"{host.name}: cannot unmount {point}")
        return problems

    def _remove_network(self, host: HostSpec) -> list[str]:
        problems = []
        if netns_exists(host.netns):
            if sh("ip", "netns", "del", host.netns, check=False).returncode != 0:
                problems.append(f"{host.name}: cannot delete netns {host.netns}")
        # deleting the namespace deletes eth0 and with it the veth pair, asynchronously
        deadline = time.monotonic() + 5
        while link_exists(host.veth) and time.monotonic() < deadline:
            time.sleep(0.1)
        if link_exists(host.veth):
            sh("ip", "link", "del", host.veth, check=False)
        return problems

    @staticmethod
    def _remove_nspawn_leftovers(host: HostSpec) -> None:
        """systemd-nspawn's own leftovers (it has no systemd to clean up after it)."""
        for leftover in (
            Path("/run/systemd/nspawn/propagate") / host.machine,
            Path("/run/systemd/nspawn/unix-export") / host.machine,
        ):
            shutil.rmtree(leftover, ignore_errors=True)
        for empty in ("propagate", "unix-export", "locks", ""):
            try:
                Path("/run/systemd/nspawn", empty).rmdir()
            except OSError:
                pass

    def leftovers(self) -> list[str]:
        """Everything of this fleet still on the machine (empty after a clean `down`)."""
        found = []
        for host in self.hosts:
            if netns_exists(host.netns):
                found.append(f"netns {host.netns}")
            if link_exists(host.veth):
                found.append(f"veth {host.veth}")
            found += [f"mount {m}" for m in mounts_under(self.dir(host))]
            found += [f"process {p}" for p in processes_rooted_in(self.root(host))]
            if self.dir(host).exists():
                found.append(f"dir {self.dir(host)}")
            if Path("/run/systemd/nspawn/propagate", host.machine).exists():
                found.append(f"/run/systemd/nspawn/propagate/{host.machine}")
        return found


def lspci_double_config(host: HostSpec) -> str:
    """PCI functions for the lspci double (tests/doubles/lspci): `slot class vendor:device rev`."""
    lines = []
    for g in host.gpus:
        slot = "0000:" + g.pci_bus_id.split(":", 1)[1].lower()  # 0000:01:00.0
        lines.append(f"# {g.name}\n{slot} 0302 10de:{g.pci_device} a1\n")
    if host.nvswitch:
        for i in range(max(len(host.gpus) // 2, 1)):
            lines.append(f"# NVSwitch\n0000:{0xC4 + i:02x}:00.0 0680 10de:1af1 a1\n")
    return "".join(lines)


# --------------------------------------------------------------------------------------------------
# The supervisor: one small process per host, started by `Fleet.boot_host`.


def supervise(host_dir: Path, command: list[str]) -> int:
    """Run systemd-nspawn; run it again when it exits 133 (reboot); stop on SIGTERM.

    SIGTERM is passed on to systemd-nspawn, which shuts the container down cleanly.
    """
    child: subprocess.Popen | None = None
    stopping = False

    def on_term(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    boots_file = host_dir / "boots"
    while True:
        boots = int(boots_file.read_text()) if boots_file.exists() else 0
        boots_file.write_text(f"{boots + 1}\n")
        print(f"[lab supervisor {time.strftime('%H:%M:%S')}] boot {boots + 1}", flush=True)
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        (host_dir / "nspawn.pid").write_text(f"{child.pid}\n")
        if stopping:  # SIGTERM came before `child` was set
            child.send_signal(signal.SIGTERM)
        rc = child.wait()
        stamp = time.strftime("%H:%M:%S")
        print(f"[lab supervisor {stamp}] systemd-nspawn exited {rc}", flush=True)
        if stopping or rc != REBOOT_EXIT:
            (host_dir / "nspawn.pid").unlink(missing_ok=True)
            return rc
        print(f"[lab supervisor {stamp}] reboot: starting the host again", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "supervise" and sys.argv[3] == "--":
        sys.exit(supervise(Path(sys.argv[2]), sys.argv[4:]))
    sys.exit(f"usage: {sys.argv[0]} supervise HOST_DIR -- COMMAND...   (use python -m tests.lab)")
