"""The lab as one object (hosts + mirrors) and its command line, `python -m tests.lab`.

    python -m tests.lab up                 # mirrors, then hosts (LAB_HOSTS=gpu1,cpu1 for a subset)
    python -m tests.lab status
    python -m tests.lab ssh gpu1 [COMMAND]
    python -m tests.lab stop|start|cut|uncut|reboot gpu1
    python -m tests.lab state gpu1 driver-mismatch   # ok|no-driver|driver-mismatch|no-gpu|clear
    python -m tests.lab info               # lab.json: addresses, key, URLs, digests
    python -m tests.lab down

Everything runs as root (namespaces, mounts, systemd-nspawn). A running lab is described by
`$LAB_RUN/lab.json`; every command after `up` reads it, so they work from any shell.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .fleet import (
    REPO,
    Fleet,
    Gpu,
    HostSpec,
    LabError,
    cache_dir,
    host_specs,
    load_config,
    run_dir,
    tcp_open,
)
from .mirrors import DISTROS, Mirrors

TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "apt-cacher-ng": "apt-cacher-ng",
    "docker-registry": "docker-registry",
    "apt-ftparchive": "apt-utils",
    "dpkg-deb": "dpkg",
    "gpg": "gnupg",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
FORCED_STATES = ("ok", "no-driver", "driver-mismatch", "no-gpu")


def specs_from_info(info: dict) -> list[HostSpec]:
    """The hosts a running lab recorded in its lab.json (GPUs included), not fleet.toml's."""
    specs = []
    for name, h in info["hosts"].items():
        # lab.json of an older lab has no index: the address 169.254.(100+N).2 holds it
        index = h.get("index", int(h["address"].split(".")[2]) - 100)
        gpus = tuple(
            Gpu(
                index=i,
                name=g["name"],
                memory_total_mib=g["memory_total_mib"],
                compute_cap=g["compute_cap"],
                pci_device=g["pci_device_id"],
                pci_bus_id=g["pci_bus_id"],
                uuid=g["uuid"],
                mig_mode=g.get("mig_mode", "[N/A]"),
            )
            for i, g in enumerate(h.get("gpus", []))
        )
        specs.append(HostSpec(name, index, h["release"], gpus, h.get("nvswitch", False)))
    return specs


def missing_prerequisites() -> str | None:
    """Why the lab cannot run on this machine, or None."""
    if sys.platform != "linux":
        return "the lab needs Linux (network namespaces, overlayfs, systemd-nspawn)"
    if os.geteuid() != 0:
        return "the lab needs root (namespaces, mounts, systemd-nspawn)"
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return "the lab needs these Debian packages: " + " ".join(missing)
    return None


class Lab:
    """The hosts and mirrors of one lab: `hosts`, `addresses`, `ssh_key`, `inventory`, `info`."""

    def __init__(self, names: list[str] | None = None, specs: list[HostSpec] | None = None) -> None:
        self.config = load_config()
        self.cache, self.run = cache_dir(), run_dir()
        if specs is None:
            specs = host_specs(self.config, names)
        self.fleet = Fleet(specs, self.cache, self.run, self.config)
        self.mirrors = Mirrors(self.config, self.cache, self.run)
        self.info: dict = {}
        self.attached = False  # True: brought up by someone else (the `lab` fixture sets it)

    # ---- a running lab -------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.run / "lab.json"

    @classmethod
    def attach(cls) -> Lab | None:
        """The lab that is up (from `$LAB_RUN/lab.json`), or None: its hosts are the ones
        `lab.json` recorded, whichever fleet brought them up (fleet.toml or the bench's)."""
        path = run_dir() / "lab.json"
        if not path.exists():
            return None
        info = json.loads(path.read_text())
        lab = cls(specs=specs_from_info(info))
        lab.info = info
        return lab

    @property
    def hosts(self) -> list[str]:
        return [h.name for h in self.fleet.hosts]

    @property
    def addresses(self) -> dict[str, str]:
        return {h.name: h.address for h in self.fleet.hosts}

    @property
    def ssh_key(self) -> Path:
        return self.fleet.ssh_key

    @property
    def inventory(self) -> Path:
        return REPO / "inventories" / "lab.py"

    def host(self, name: str) -> HostSpec:
        return self.fleet.host(name)

    def ssh(self, name: str, command: str, check: bool = True, timeout: float = 300):
        return self.fleet.ssh(self.host(name), command, check=check, timeout=timeout)

    def republish_model(self, repository: str, tag: str) -> str:
        """Push the lab's own model ``repository:tag`` again exactly as the lab pushed it (the
        seed and trained context recorded in ``lab.json`` ``model_pushes``): how a test that
        re-pushed a lab model puts it back. Returns the digest, checked against the lab's."""
        from tests.doubles.ollama.registry import push_model

        key = f"{repository}:{tag}"
        push = self.info["model_pushes"][key]
        digest = push_model(self.mirrors.registry, repository, tag, **push)
        if digest != self.info["models"][key]:
            raise LabError(f"{key} re-pushed with other bytes than the lab's ({digest})")
        return digest

    # ---- up / down -----------------------------------------------------------------------------
    def up(self, real_torch: bool = False) -> dict[str, float]:
        why = missing_prerequisites()
        if why:
            raise LabError(why)
        if self.info_path.exists():
            raise LabError(f"a lab is up already ({self.info_path}); `python -m tests.lab down`")
        started = time.monotonic()
        timings: dict[str, float] = {}
        if self.leftovers():  # a lab that died without `down` (a killed CI job): clean up first
            self.down()
        try:
            self.run.mkdir(parents=True, exist_ok=True)
            timings.update(self.mirrors.up(real_torch=real_torch))
            timings.update(self.fleet.up())
        except BaseException:
            self.down()
            raise
        timings["total"] = time.monotonic() - started
        self.info = {
            "hosts": {
                h.name: {
                    "index": h.index,
                    "address": h.address,
                    "release": h.release,
                    "distro": DISTROS[h.release],
                    "gpus": [
                        {
                            "name": g.name,
                            "memory_total_mib": g.memory_total_mib,
                            "compute_cap": g.compute_cap,
                            "pci_device_id": g.pci_device,
                            "pci_bus_id": g.pci_bus_id,
                            "uuid": g.uuid,
                            "mig_mode": g.mig_mode,
                        }
                        for g in h.gpus
                    ],
                    "nvswitch": h.nvswitch,
                }
                for h in self.fleet.hosts
            },
            "ssh_user": "root",
            "ssh_key": str(self.ssh_key),
            "known_hosts": str(self.fleet.known_hosts),
            "run_dir": str(self.run),
            "cache_dir": str(self.cache),
            **self.mirrors.info,
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        }
        self.info_path.write_text(json.dumps(self.info, indent=2) + "\n")
        return timings

    def down(self) -> list[str]:
        """Tear everything down, whatever state it is in; returns what is left (empty: clean)."""
        every_host = Fleet(self._every_host(), self.cache, self.run, self.config)
        problems = every_host.down()
        self.mirrors.down()
        self.info_path.unlink(missing_ok=True)
        problems += self.leftovers(every_host)
        if not problems and self.run.exists():
            shutil.rmtree(self.run, ignore_errors=True)
        return problems

    def _every_host(self) -> list[HostSpec]:
        """This lab's hosts (lab.json's when attached), every host of fleet.toml, and any other
        host directory (e.g. of a test that was killed)."""
        specs = list(self.fleet.hosts)
        specs += [
            s for s in host_specs(self.config, names=[h["name"] for h in self.config["host"]])
        ]
        hosts_dir = self.run / "hosts"
        if hosts_dir.is_dir():
            specs += [HostSpec(d.name, 0, "") for d in sorted(hosts_dir.iterdir())]
        unique: dict[str, HostSpec] = {}
        for spec in specs:
            unique.setdefault(spec.name, spec)
        return list(unique.values())

    def leftovers(self, fleet: Fleet | None = None) -> list[str]:
        return (fleet or self.fleet).leftovers() + self.mirrors.leftovers()

    # ---- status and faults ---------------------------------------------------------------------
    def status(self) -> dict:
        if not self.info_path.exists():
            return {"up": False, "leftovers": self.leftovers()}
        hosts = {}
        for h in self.fleet.hosts:
            hosts[h.name] = {
                "address": h.address,
                "release": h.release,
                "running": self.fleet.running(h),
                "cut": self.fleet.is_cut(h),
                "ssh": tcp_open(h.address, 22),
                "boots": self.fleet.boots(h),
            }
        ports = self.config["mirror"]
        address = self.config["network"]["service_address"]
        services = {
            name: tcp_open(address, ports[f"{name}_port"]) for name in ("acng", "http", "registry")
        }
        return {"up": self.info_path.exists(), "hosts": hosts, "services": services}

    def set_state(self, name: str, state: str) -> None:
        """Force the state the host's nvidia-smi double reports, until reboot (`clear`: stop)."""
        if state == "clear":
            self.ssh(name, "rm -f /run/nvidia-double/state")
        elif state in FORCED_STATES:
            self.ssh(
                name, f"mkdir -p /run/nvidia-double && echo {state} > /run/nvidia-double/state"
            )
        else:
            raise LabError(f"state must be one of {', '.join(FORCED_STATES)}, clear")


# --------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build what is missing, start the mirrors and the hosts")
    up.add_argument("--hosts", help="comma-separated subset (default: $LAB_HOSTS or all)")
    up.add_argument(
        "--real-torch",
        action="store_true",
        default=os.environ.get("LAB_REAL_TORCH") == "1",
        help="also serve the real CPU torch wheel at /whl-real/cpu/ (LAB_REAL_TORCH=1)",
    )
    sub.add_parser("down", help="stop and remove everything the running lab recorded (lab.json)")
    sub.add_parser("status", help="hosts and services, as JSON")
    sub.add_parser("info", help="print lab.json (addresses, key, URLs, digests)")
    for name, text in (("stop", "power a host off"), ("start", "boot a stopped host"),
                       ("cut", "cut a host off the network"), ("uncut", "reconnect a cut host"),
                       ("reboot", "reboot a host (systemctl reboot) and wait for it")):  # fmt: skip
        sub.add_parser(name, help=text).add_argument("host")
    state = sub.add_parser("state", help="force the nvidia-smi double's state until reboot")
    state.add_argument("host")
    state.add_argument("state", choices=[*FORCED_STATES, "clear"])
    ssh = sub.add_parser("ssh", help="log in to a host (or run a command there)")
    ssh.add_argument("host")
    ssh.add_argument("remote", nargs=argparse.REMAINDER)
    return parser


def _up(args: argparse.Namespace) -> int:
    lab = Lab(args.hosts.split(",") if args.hosts else None)
    timings = lab.up(real_torch=args.real_torch)
    for what, seconds in timings.items():
        print(f"{what:>22}: {seconds:6.1f} s")
    for name, address in lab.addresses.items():
        print(f"{name:>22}: ssh -i {lab.ssh_key} root@{address}")
    print(f"{'lab.json':>22}: {lab.info_path}")
    return 0


def _down() -> int:
    lab = Lab.attach() or Lab()
    started = time.monotonic()
    problems = lab.down()
    for p in problems:
        print(f"left behind: {p}", file=sys.stderr)
    print(f"down in {time.monotonic() - started:.1f} s" + (" (not clean)" if problems else ""))
    return 1 if problems else 0


def _on_running_lab(lab: Lab, args: argparse.Namespace) -> int:
    if args.command == "status":
        print(json.dumps(lab.status(), indent=2))
    elif args.command == "info":
        print(json.dumps(lab.info, indent=2))
    elif args.command == "ssh":
        os.execvp("ssh", [*lab.fleet.ssh_args(lab.host(args.host)), *args.remote])
    elif args.command == "state":
        lab.set_state(args.host, args.state)
    else:
        action = {
            "stop": lab.fleet.stop_host,
            "start": lab.fleet.start_host,
            "cut": lab.fleet.cut,
            "uncut": lab.fleet.uncut,
            "reboot": lab.fleet.reboot,
        }[args.command]
        action(lab.host(args.host))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return _down()
        lab = Lab.attach()
        if lab is None:
            if args.command == "status":
                print(json.dumps(Lab().status(), indent=2))  # not up: what is left, if anything
                return 0
            print("no lab is up (python -m tests.lab up)", file=sys.stderr)
            return 1
        return _on_running_lab(lab, args)
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
