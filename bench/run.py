"""The benchmark run: start-up, planner scale, then on the lab: first apply, converged re-runs
(ours and Ansible, N hosts), model distribution; targets; reports. See bench/README.md."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import lab_bench, models_dist, planner_scale, startup
from bench.stats import ratio_summary, summarize, versus_target

PARTS = ("startup", "planner", "converged", "ansible", "rtt", "models")
LAB_PARTS = ("converged", "ansible", "rtt", "models")
LOCK = Path("/var/lock/provisioner-lab.lock")
# issue 8's targets: (goal, how it reads); every one is met at or below the goal
TARGETS = {
    "converged_one_host_s": (5.0, "≤"),
    "fanout_ratio": (1.5, "≤"),
    "ours_over_ansible": (0.2, "≤"),
    "mirror_upstream_factor": (1.0, "="),  # at most one copy of the model from upstream
    "plan_10k_s": (2.0, "<"),
    "plan_10k_rss_mib": (500.0, "<"),
    "help_s": (0.3, "<"),
    # issue 15: converged in one round trip per layer
    "commands_per_host": (12.0, "≤"),
    "converged_one_host_s_15": (2.0, "≤"),
    "ours_over_ansible_15": (0.10, "≤"),
    "rtt50_one_host_s": (3.0, "≤"),
}


class BenchError(RuntimeError):
    pass


@dataclass
class Options:
    reps: int = 3
    hosts: tuple[int, ...] = (1, 2, 4, 8)
    ansible_hosts: tuple[int, ...] | None = None  # None: the same as hosts
    model_hosts: tuple[int, ...] | None = None  # None: the same as hosts
    model_mib: int = 64
    planner_hosts: int = 10_000
    startup_reps: int = 15
    parts: tuple[str, ...] = PARTS
    out: Path = Path(__file__).resolve().parent / "results"
    work: Path = Path("/var/tmp/provisioner-bench")
    lock_wait_s: float = 0.0
    rtts: tuple[int, ...] = (0, 20, 50, 100)  # ms added by bench/relay.py ("rtt" part)
    log: Any = field(default=None, repr=False)  # callable(str) for progress lines

    def say(self, message: str) -> None:
        (self.log or (lambda m: print(m, file=sys.stderr, flush=True)))(message)


def provision_cmd() -> list[str]:
    return startup.provision_command()


# --- parts without the lab ---------------------------------------------------------------------


def run_startup(options: Options) -> dict[str, Any]:
    times = startup.measure(options.startup_reps)
    return {
        "command": "provision --help",
        "provision_help_s": summarize(times["provision_help_s"]).to_json(),
        "python_bare_s": summarize(times["python_bare_s"]).to_json(),
        "raw": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
    }


def run_planner(options: Options) -> dict[str, Any]:
    options.work.mkdir(parents=True, exist_ok=True)
    facts_file = options.work / f"facts-{options.planner_hosts}.json"
    facts_file.write_text(json.dumps(planner_scale.fleet_facts(options.planner_hosts)))
    runs = [planner_scale.measure(facts_file) for _ in range(options.reps)]
    return {
        "hosts": options.planner_hosts,
        "models_planned": runs[0]["models_planned"],
        "facts_file_bytes": facts_file.stat().st_size,
        "wall_s": summarize([r["wall_s"] for r in runs]).to_json(),
        "max_rss_mib": summarize([r["max_rss_mib"] for r in runs]).to_json(1),
        "plan_fleet_s": summarize([r["plan_s"] for r in runs]).to_json(),
        "inside_s": summarize([r["inside_s"] for r in runs]).to_json(),
        "raw": runs,
    }


# --- the lab -----------------------------------------------------------------------------------


@contextlib.contextmanager
def lab_lock(wait_s: float) -> Iterator[None]:
    """The machine's lab lock (``flock /var/lock/provisioner-lab.lock``), held for the run."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BenchError(f"another lab user holds {LOCK}") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LabRun:
    """One lab session: the bench fleet up, measured, and down again."""

    def __init__(self, options: Options) -> None:
        from tests.lab.fleet import load_config

        self.options = options
        self.max_n = max(
            [*options.hosts, *(options.ansible_hosts or ()), *(options.model_hosts or ())]
        )
        self.config = lab_bench.bench_fleet_config(load_config(), self.max_n)
        self.work = options.work
        self.logs = self.work / "logs"
        self.inventories: dict[int, Path] = {}
        self.ansible_inventories: dict[int, Path] = {}
        self.ansible_venv: Path | None = None
        self.results: dict[str, Any] = {}
        self.lab: Any = None
        self.sessions: lab_bench.SessionLog | None = None

    # ---- setup ---------------------------------------------------------------------------------
    def up(self) -> None:
        from tests.lab.fleet import Fleet, cache_dir, host_specs, run_dir
        from tests.lab.lab import Lab
        from tests.lab.mirrors import Mirrors

        class BenchLab(Lab):
            """The lab harness on the benchmark's fleet configuration (fleet.toml untouched)."""

            def __init__(self, config: dict[str, Any]) -> None:
                self.config = config
                self.cache, self.run = cache_dir(), run_dir()
                names = [h["name"] for h in config["host"]]
                self.fleet = Fleet(host_specs(config, names), self.cache, self.run, config)
                self.mirrors = Mirrors(config, self.cache, self.run)
                self.info = {}

        if (run_dir() / "lab.json").exists():
            raise BenchError(
                f"a lab is up already ({run_dir() / 'lab.json'}): the lab is one fleet per "
                "machine; wait for its user, or `python -m tests.lab down`"
            )
        self.lab = BenchLab(self.config)
        self.options.say(f"lab: bringing up {self.max_n} hosts")
        timings = self.lab.up()
        self.results["lab_up_s"] = round(timings.get("total", 0.0), 1)
        for n in sorted({*self.options.hosts, *(self.options.ansible_hosts or ()), self.max_n}):
            self.inventories[n] = self.write_inventory(f"converged-{n}", n)

    def down(self) -> list[str]:
        if self.lab is None:
            return []
        self.options.say("lab: tearing down")
        return self.lab.down()

    def host_entries(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        info = self.lab.info["hosts"]
        return [(name, info[name]) for name in lab_bench.host_names(n)]

    def write_inventory(
        self, label: str, n: int, role: dict[str, Any] | None = None, overrides=None
    ) -> Path:
        hosts = [
            (name, lab_bench.host_data(spec, role or lab_bench.ROLE))
            for name, spec in self.host_entries(n)
        ]
        return lab_bench.write_inventory(
            self.work / "inventories" / label, hosts, overrides=overrides
        )

    def instrument(self) -> None:
        """sshd of every host logs each session (see lab_bench.SSHD_SETUP)."""
        names = lab_bench.host_names(self.max_n)
        for name in names:
            self.lab.ssh(name, lab_bench.SSHD_SETUP)
        roots = {name: self.lab.fleet.root(self.lab.host(name)) for name in names}
        netns = {name: self.lab.host(name).netns for name in names}
        self.sessions = lab_bench.SessionLog(roots, netns=netns)
        # prove the counting works before relying on it: one login, one command
        self.sessions.start([names[0]])
        self.lab.ssh(names[0], "true")
        seen = self.sessions.stop()[names[0]]
        if seen["logins"] < 1 or seen["commands"] < 1:
            raise BenchError(f"sshd's log does not show sessions on {names[0]}: {seen}")

    # ---- runs ----------------------------------------------------------------------------------
    def apply(self, n: int, label: str, inventory: Path | None = None) -> dict[str, Any]:
        names = lab_bench.host_names(n)
        assert self.sessions is not None
        self.sessions.start(names)
        run = lab_bench.run_timed(
            [*provision_cmd(), "apply", str(inventory or self.inventories[n]), "--json"],
            log=self.logs / f"{label}.log",
        )
        sessions = self.sessions.stop()
        changed = lab_bench.changed_by_host(run.payload)
        if run.returncode != 0:
            self.options.say(f"  {label}: exit {run.returncode}\n{run.log_tail[-1500:]}")
        return {
            "wall_s": round(run.wall_s, 3),
            "cpu_s": round(run.cpu_s, 3),
            "exit_code": run.returncode,
            "changed": {h: ops for h, ops in changed.items() if ops},
            "sessions": sessions,
        }

    def first_apply(self) -> tuple[dict[str, Any], str]:
        """The first apply on every (bare) host, through ``bench.layers`` (pyinfra's CLI as
        ``provision apply`` runs it) with its timeline on; the mirrors' logs and the hosts'
        interface counters read before and after. Returns (results, the log's tail)."""
        from bench import layers, mirror_logs, timeline

        n = self.max_n
        entries = self.host_entries(n)
        names = [name for name, _ in entries]
        record = self.work / "first-apply-timeline.json"
        counts = self.work / "first-apply-commands.json"
        for old in (record, counts):
            old.unlink(missing_ok=True)
        logs = mirror_logs.MirrorLogs(self.lab.mirrors.services, self.lab.mirrors.www)
        logs.mark()
        before = layers.received_bytes(names)
        run = lab_bench.run_timed(
            [sys.executable, "-m", "bench.layers", str(self.inventories[n])],
            log=self.logs / "first-apply.log",
            parse_json=False,
            env={layers.TIMELINE_ENV: str(record), "BENCH_LAYERS_OUT": str(counts)},
        )
        after = layers.received_bytes(names)
        served = logs.read({spec["address"]: name for name, spec in entries})
        doc = json.loads(record.read_text()) if record.exists() else {}
        commands = json.loads(counts.read_text()) if counts.exists() else {}
        result = first_apply_results(
            names, run.wall_s, run.returncode, timeline.summarise(doc), served, before, after
        )
        result["commands"] = commands
        return result, run.log_tail

    def layers(self, label: str) -> dict[str, Any]:
        """One converged run on 1 host through ``bench.layers``: the remote commands per layer
        and phase counted on the controller, beside the sshd count of the same run."""
        names = lab_bench.host_names(1)
        assert self.sessions is not None
        out = self.work / f"{label}.json"
        self.sessions.start(names)
        run = lab_bench.run_timed(
            [sys.executable, "-m", "bench.layers", str(self.inventories[1])],
            log=self.logs / f"{label}.log",
            parse_json=False,
            env={
                "BENCH_LAYERS_OUT": str(out),
                "BENCH_LAYERS_COMMANDS": str(self.work / f"{label}-commands.tsv"),
            },
        )
        sessions = self.sessions.stop()
        by_layer = json.loads(out.read_text()) if out.exists() else {}
        return {
            "wall_s": round(run.wall_s, 3),
            "exit_code": run.returncode,
            "by_layer": next(iter(by_layer.values()), {}),
            "sshd": sessions.get(names[0], {}),
        }

    def baseline(self, label: str) -> dict[str, Any]:
        """A bare pyinfra run on one host: ``pyinfra INVENTORY exec -- true`` (interpreter,
        inventory, one SSH connection, one command): the fixed cost under every apply."""
        names = lab_bench.host_names(1)
        assert self.sessions is not None
        self.sessions.start(names)
        run = lab_bench.run_timed(
            [sys.executable, "-m", "pyinfra", "-y", str(self.inventories[1]), "exec", "--", "true"],
            log=self.logs / f"{label}.log",
            parse_json=False,
        )
        return {
            "wall_s": round(run.wall_s, 3),
            "cpu_s": round(run.cpu_s, 3),
            "exit_code": run.returncode,
            "changed": {},
            "sessions": self.sessions.stop(),
        }

    def ansible(self, n: int, label: str, inventory: Path | None = None) -> dict[str, Any]:
        from bench.peers.ansible import runner

        names = lab_bench.host_names(n)
        assert self.sessions is not None and self.ansible_venv is not None
        self.sessions.start(names)
        run = runner.run_playbook(
            self.ansible_venv,
            inventory or self.ansible_inventories[n],
            log=self.logs / f"{label}.log",
            work=self.work / "ansible",
        )
        sessions = self.sessions.stop()
        if run.returncode != 0:
            self.options.say(f"  {label}: exit {run.returncode}\n{run.log_tail[-1500:]}")
        return {
            "wall_s": round(run.wall_s, 3),
            "cpu_s": round(run.cpu_s, 3),
            "exit_code": run.returncode,
            "changed": {h: r.get("changed", 0) for h, r in run.recap.items() if r.get("changed")},
            "recap": run.recap,
            "sessions": sessions,
        }

    def setup_ansible(self) -> None:
        from bench.peers.ansible import inventory as ansible_inventory
        from bench.peers.ansible import runner

        self.ansible_venv = runner.default_venv()
        started = time.monotonic()
        version = runner.ensure_venv(self.ansible_venv)
        self.results["ansible_core"] = version
        self.results["ansible_venv_s"] = round(time.monotonic() - started, 1)
        data = lab_bench.group_data_values()
        base = self.config["base"]
        distro_sources = [
            (base["mirror"], ["bookworm", "bookworm-updates"], ARCHIVE_KEYRING),
            (base["security_mirror"], ["bookworm-security"], ARCHIVE_KEYRING),
        ]
        kernel = os.uname().release
        for n in sorted(set(self.options.ansible_hosts or self.options.hosts)):
            hosts = {
                name: ansible_inventory.host_vars(
                    name,
                    spec,
                    {**data, **lab_bench.host_data(spec)},
                    kernel=kernel,
                    key_sha256=self.lab.info["key"]["sha256_asc"],
                    distro_sources=distro_sources,
                )
                for name, spec in self.host_entries(n)
            }
            doc = ansible_inventory.inventory(
                hosts, ssh_user=self.lab.info["ssh_user"], ssh_key=self.lab.info["ssh_key"]
            )
            path = self.work / "inventories" / f"ansible-{n}.yml"
            path.write_text(json.dumps(doc, indent=2))
            self.ansible_inventories[n] = path

    def relayed_inventories(self, rtt: int, port: int) -> tuple[Path, Path | None]:
        """Inventories of host 1 reached through a relay on 127.0.0.1:``port``: ours (with a
        known_hosts naming the relay's port) and Ansible's (when it is set up)."""
        name = lab_bench.host_names(1)[0]
        spec = self.lab.info["hosts"][name]
        known = Path(self.lab.info["known_hosts"]).read_text().splitlines()
        relay_known = self.work / "inventories" / f"rtt-{rtt}-known_hosts"
        relay_known.parent.mkdir(parents=True, exist_ok=True)
        relay_known.write_text(
            "".join(
                f"[127.0.0.1]:{port} {line.split(' ', 1)[1]}\n"
                for line in known
                if line.split(" ", 1)[0] == spec["address"]
            )
        )
        data = {
            **lab_bench.host_data(spec),
            "ssh_hostname": "127.0.0.1",
            "ssh_port": port,
            "ssh_known_hosts_file": str(relay_known),
        }
        ours = lab_bench.write_inventory(self.work / "inventories" / f"rtt-{rtt}", [(name, data)])
        theirs = None
        if self.ansible_inventories.get(1):
            doc = json.loads(self.ansible_inventories[1].read_text())
            doc["all"]["hosts"][name].update(ansible_host="127.0.0.1", ansible_port=port)
            theirs = self.work / "inventories" / f"ansible-rtt-{rtt}.yml"
            theirs.write_text(json.dumps(doc, indent=2))
        return ours, theirs

    def rtt(self) -> dict[str, Any]:
        """The converged re-run on 1 host with ``rtts`` ms added to every SSH round trip
        (bench/relay.py in front of the host's sshd), ours and Ansible side by side."""
        from bench.relay import DelayRelay

        name = lab_bench.host_names(1)[0]
        address = self.lab.info["hosts"][name]["address"]
        out: dict[str, Any] = {}
        for rtt in self.options.rtts:
            ours: list[dict[str, Any]] = []
            theirs: list[dict[str, Any]] = []
            with DelayRelay(rtt, allowed=[address]) as relay:
                ours_inv, theirs_inv = self.relayed_inventories(rtt, relay.add(address, 22))
                for rep in range(self.options.reps):
                    ours.append(self.apply(1, f"rtt-{rtt}-ours-rep{rep}", ours_inv))
                    self.options.say(f"  rtt {rtt} ms rep {rep} ours {ours[-1]['wall_s']:.2f} s")
                    if theirs_inv is not None:
                        theirs.append(self.ansible(1, f"rtt-{rtt}-ansible-rep{rep}", theirs_inv))
                        self.options.say(f"  rtt {rtt} ms ansible {theirs[-1]['wall_s']:.2f} s")
            out[str(rtt)] = {"ours": summarise_runs({1: ours}).get("1")}
            if theirs:
                out[str(rtt)]["ansible"] = summarise_runs({1: theirs}).get("1")
                out[str(rtt)]["ours_over_ansible"] = ratio_summary(
                    [r["wall_s"] for r in ours], [r["wall_s"] for r in theirs]
                ).to_json()
        return out

    # ---- the measurements ----------------------------------------------------------------------
    def converged(self, with_ansible: bool) -> dict[str, Any]:
        opts = self.options
        ours_ns = sorted(set(opts.hosts))
        ansible_ns = sorted(set(opts.ansible_hosts or opts.hosts)) if with_ansible else []
        ours: dict[int, list[dict[str, Any]]] = {n: [] for n in ours_ns}
        theirs: dict[int, list[dict[str, Any]]] = {n: [] for n in ansible_ns}
        base: list[dict[str, Any]] = []
        for rep in range(opts.reps):
            for n in sorted(set(ours_ns) | set(ansible_ns)):
                order = ["ours", "ansible"] if rep % 2 == 0 else ["ansible", "ours"]
                for who in order:
                    if who == "ours" and n in ours:
                        ours[n].append(self.apply(n, f"ours-n{n}-rep{rep}"))
                        opts.say(f"  rep {rep} N={n} ours {ours[n][-1]['wall_s']:.2f} s")
                        if n == 1:
                            base.append(self.baseline(f"pyinfra-baseline-rep{rep}"))
                    elif who == "ansible" and n in theirs:
                        theirs[n].append(self.ansible(n, f"ansible-n{n}-rep{rep}"))
                        opts.say(f"  rep {rep} N={n} ansible {theirs[n][-1]['wall_s']:.2f} s")
        result: dict[str, Any] = {"ours": summarise_runs(ours)}
        if base:
            result["pyinfra_baseline"] = summarise_runs({1: base})["1"]
        if theirs:
            result["ansible"] = summarise_runs(theirs)
        result["fanout_ratio"] = {"ours": fanout(ours)}
        if theirs:
            result["fanout_ratio"]["ansible"] = fanout(theirs)
            result["ours_over_ansible"] = {
                str(n): ratio_summary(
                    [r["wall_s"] for r in ours[n]], [r["wall_s"] for r in theirs[n]]
                ).to_json()
                for n in ours_ns
                if n in theirs
            }
        return result

    def models(self) -> dict[str, Any]:
        from bench.registry_proxy import CountingProxy

        opts = self.options
        address = self.config["network"]["service_address"]
        backend = (address, self.config["mirror"]["registry_port"])
        upstream = CountingProxy((address, models_dist.UPSTREAM_PORT), backend).start()
        site = CountingProxy((address, models_dist.SITE_PORT), backend).start()
        registry = f"{address}:{self.config['mirror']['registry_port']}"
        size = opts.model_mib * 1024 * 1024
        role = models_dist.distribution_role()
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {"direct": {}, "mirror": {}}
        model_bytes = 0
        try:
            for n in sorted(set(opts.model_hosts or opts.hosts)):
                direct_inv = self.write_inventory(
                    f"models-direct-{n}",
                    n,
                    role,
                    models_dist.distribution_overrides(upstream.url, "library"),
                )
                mirror_inv = self.write_inventory(
                    f"models-mirror-{n}",
                    n,
                    role,
                    models_dist.distribution_overrides(site.url, models_dist.SITE_NAMESPACE),
                )
                for rep in range(opts.reps):
                    for scenario in ("direct", "mirror") if rep % 2 == 0 else ("mirror", "direct"):
                        seed = f"bench {scenario} n{n} rep{rep} {time.time_ns()}"
                        _, model_bytes = models_dist.push_fresh_model(registry, seed, size)
                        upstream.counters.reset()
                        site.counters.reset()
                        record: dict[str, Any] = {}
                        if scenario == "mirror":
                            mirror = lab_bench.run_timed(
                                [
                                    *provision_cmd(),
                                    "models",
                                    "mirror",
                                    str(mirror_inv),
                                    "--from",
                                    upstream.url,
                                    "--json",
                                ],
                                log=self.logs / f"models-mirror-n{n}-rep{rep}-mirror.log",
                            )
                            record["mirror_s"] = round(mirror.wall_s, 3)
                            record["mirror_exit_code"] = mirror.returncode
                            if mirror.returncode != 0:
                                opts.say(f"  mirror failed:\n{mirror.log_tail[-1500:]}")
                        sync = lab_bench.run_timed(
                            [
                                *provision_cmd(),
                                "models",
                                "sync",
                                str(mirror_inv if scenario == "mirror" else direct_inv),
                                "--json",
                            ],
                            log=self.logs / f"models-{scenario}-n{n}-rep{rep}-sync.log",
                        )
                        record["sync_s"] = round(sync.wall_s, 3)
                        record["sync_exit_code"] = sync.returncode
                        record["hosts_changed"] = sum(
                            1
                            for h in (sync.payload or {}).get("hosts", {}).values()
                            if models_dist.MODEL in {c.get("model") for c in h.get("changes", [])}
                        )
                        if sync.returncode != 0:
                            opts.say(f"  sync failed:\n{sync.log_tail[-1500:]}")
                        record["wall_s"] = round(record.get("mirror_s", 0) + record["sync_s"], 3)
                        record["upstream"] = models_dist.bytes_summary(upstream.counters.snapshot())
                        record["site"] = models_dist.bytes_summary(site.counters.snapshot())
                        record["model_bytes"] = model_bytes
                        runs[scenario].setdefault(n, []).append(record)
                        opts.say(
                            f"  models {scenario} N={n} rep {rep}: {record['wall_s']:.2f} s, "
                            f"upstream {record['upstream']['blob_bytes'] / model_bytes:.2f} x"
                        )
        finally:
            upstream.stop()
            site.stop()
        return {
            "model": models_dist.MODEL,
            "model_bytes": model_bytes,
            "direct": summarise_distribution(runs["direct"]),
            "mirror": summarise_distribution(runs["mirror"]),
        }


ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def first_apply_results(
    names: list[str],
    wall_s: float,
    exit_code: int,
    recorded: dict[str, Any],
    served: dict[str, Any],
    before: dict[str, int | None],
    after: dict[str, int | None],
) -> dict[str, Any]:
    """``results["first_apply"]``: the run (``hosts``: how many, ``wall_s``, ``exit_code``),
    pyinfra's ``phases`` and the ``layers`` (:func:`bench.timeline.summarise` of the run's
    timeline), the ``mirrors`` (:func:`bench.mirror_logs.summarise`) and, ``by_host``, the
    bytes each host downloaded from the mirrors and received on its interface in all."""
    from bench.timeline import delta

    mirrors_by_host = served.get("by_host", {})
    by_host = {
        name: {
            "from_mirrors_bytes": mirrors_by_host.get(name, 0),
            "received_bytes": delta(before.get(name), after.get(name)),
        }
        for name in names
    }
    others = {c: b for c, b in mirrors_by_host.items() if c not in by_host}
    return {
        "hosts": len(names),
        "wall_s": round(wall_s, 1),
        "exit_code": exit_code,
        "phases": recorded.get("phases", {}),
        "layers": recorded.get("layers", {}),
        "mirrors": served.get("mirrors", {}),
        "by_host": by_host,
        **({"mirror_clients_not_hosts": others} if others else {}),
    }


def summarise_runs(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per N: wall time, remote commands (and logins, sftp sessions) per host, changes."""
    out: dict[str, Any] = {}
    for n, records in runs.items():
        if not records:
            continue
        per_host = [s for r in records for s in r["sessions"].values()]
        out[str(n)] = {
            "wall_s": summarize([r["wall_s"] for r in records]).to_json(),
            "commands_per_host": summarize([s["commands"] for s in per_host]).to_json(1),
            "logins_per_host": summarize([s["logins"] for s in per_host]).to_json(1),
            "sftp_per_host": summarize([s["sftp"] for s in per_host]).to_json(1),
            "runs_with_changes": sum(1 for r in records if r["changed"]),
            **(
                {"controller_cpu_s": summarize([r["cpu_s"] for r in records]).to_json()}
                if all("cpu_s" in r for r in records)
                else {}
            ),
            **(
                {"remote_cpu_s_per_host": summarize([s["cpu_s"] for s in per_host]).to_json()}
                if per_host and all("cpu_s" in s for s in per_host)
                else {}
            ),
            "failed_runs": sum(1 for r in records if r["exit_code"] != 0),
            "runs": records,
        }
    return out


def fanout(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """time(N) / time(1), paired by repetition."""
    if 1 not in runs or not runs[1]:
        return {}
    base = [r["wall_s"] for r in runs[1]]
    return {
        str(n): ratio_summary([r["wall_s"] for r in records], base).to_json()
        for n, records in runs.items()
        if n != 1 and len(records) == len(base)
    }


def summarise_distribution(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, records in runs.items():
        factors = [r["upstream"]["blob_bytes"] / r["model_bytes"] for r in records]
        out[str(n)] = {
            "wall_s": summarize([r["wall_s"] for r in records]).to_json(),
            "upstream_blob_bytes": summarize(
                [r["upstream"]["blob_bytes"] for r in records]
            ).to_json(0),
            "upstream_factor": summarize(factors).to_json(),
            "site_blob_bytes": summarize([r["site"]["blob_bytes"] for r in records]).to_json(0),
            "hosts_served": summarize([r["hosts_changed"] for r in records]).to_json(0),
            "failed_runs": sum(
                1 for r in records if r["sync_exit_code"] or r.get("mirror_exit_code")
            ),
            "runs": records,
        }
    return out


# --- targets ----------------------------------------------------------------------------------


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 8 with the measured value, met or missed and by how much."""
    rows: list[dict[str, Any]] = []

    def add(key: str, what: str, value: float | None, unit: str, **extra: Any) -> None:
        target, op = TARGETS[key]
        row: dict[str, Any] = {"key": key, "what": what, "unit": unit, "op": op, **extra}
        if value is None:
            row.update(target=target, value=None, met=None, note="not measured in this run")
        else:
            row.update(versus_target(round(value, 4), target, strict=op == "<"))
        rows.append(row)

    conv = results.get("converged") or {}
    ours = conv.get("ours", {})
    one = ours.get("1", {}).get("wall_s", {}).get("median")
    add(
        "converged_one_host_s",
        "converged re-run of the full stack, 1 lab host",
        one,
        "s",
    )
    fan = conv.get("fanout_ratio", {}).get("ours", {})
    biggest = max((int(n) for n in fan), default=None)
    add(
        "fanout_ratio",
        f"time({biggest or 8} hosts) / time(1 host)",
        fan.get(str(biggest), {}).get("median") if biggest else None,
        "x",
        hosts=biggest,
    )
    versus = conv.get("ours_over_ansible", {})
    add(
        "ours_over_ansible",
        "ours / Ansible, converged re-run, 1 host",
        versus.get("1", {}).get("median"),
        "x",
    )
    mirror = (results.get("models") or {}).get("mirror", {})
    biggest_m = max((int(n) for n in mirror), default=None)
    factor = None
    if biggest_m:
        factor = mirror.get(str(biggest_m), {}).get("upstream_factor", {}).get("max")
    add(
        "mirror_upstream_factor",
        f"upstream bytes through the mirror for {biggest_m or 'N'} hosts, x model size",
        factor,
        "x",
        hosts=biggest_m,
    )
    planner = results.get("planner") or {}
    add(
        "plan_10k_s",
        f"provision plan, {planner.get('hosts', 10000)} hosts (process wall time)",
        planner.get("wall_s", {}).get("median"),
        "s",
    )
    add(
        "plan_10k_rss_mib",
        "provision plan, peak memory (RSS)",
        planner.get("max_rss_mib", {}).get("median"),
        "MiB",
    )
    help_s = (results.get("startup") or {}).get("provision_help_s", {}).get("median")
    add("help_s", "provision --help", help_s, "s")
    _issue15_targets(results, add)
    rows.append(first_apply_row(results.get("first_apply")))
    return rows


def first_apply_row(first: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 15's goal for the first apply has no number: it is met when the run was measured
    by layer, with the bytes each host received and the bytes the mirrors served."""
    row: dict[str, Any] = {
        "key": "first_apply_by_layer",
        "what": f"first provision apply on {(first or {}).get('hosts', 8)} bare hosts",
        "goal": "measured by layer, bytes per host and per mirror",
        "unit": "s",
        "op": "",
        "target": None,
    }
    if not first:
        return {**row, "value": None, "met": None, "note": "not measured in this run"}
    layers, mirrors = first.get("layers") or {}, first.get("mirrors") or {}
    per_host = [h["from_mirrors_bytes"] for h in (first.get("by_host") or {}).values()]
    measured = bool(layers) and bool(mirrors) and first.get("exit_code") == 0
    return {
        **row,
        "value": first.get("wall_s"),
        "met": measured,
        "note": f"{len(layers)} layers, {len(mirrors)} mirrors"
        + (
            f", {max(per_host) / 2**20:.0f} MiB from the mirrors per host (max)" if per_host else ""
        ),
    }


def _issue15_targets(results: dict[str, Any], add: Any) -> None:
    """Issue 15's targets: commands per host, 1 host time, ours/Ansible, 50 ms of RTT."""
    conv = results.get("converged") or {}
    one = conv.get("ours", {}).get("1", {})
    commands = one.get("commands_per_host", {}).get("max")
    add("commands_per_host", "remote commands per host, converged re-run", commands, "")
    seconds = one.get("wall_s", {}).get("median")
    add("converged_one_host_s_15", "converged re-run, 1 lab host (issue 15)", seconds, "s")
    versus = conv.get("ours_over_ansible", {}).get("1", {}).get("median")
    add("ours_over_ansible_15", "ours / Ansible, converged re-run, 1 host (issue 15)", versus, "x")
    slow = ((results.get("rtt") or {}).get("50") or {}).get("ours") or {}
    rtt50 = slow.get("wall_s", {}).get("median")
    add("rtt50_one_host_s", "converged re-run, 1 host, 50 ms added RTT", rtt50, "s")


# --- the whole run ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import pyinfra

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyinfra": pyinfra.__version__,
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
    }


def git_revision() -> str | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=lab_bench.REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or None


def run(options: Options) -> dict[str, Any]:
    """Every part asked for; returns the results (see bench/README.md for the shape)."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: UP017
            "revision": git_revision(),
            "machine": machine(),
            "options": {
                "reps": options.reps,
                "hosts": list(options.hosts),
                "ansible_hosts": list(options.ansible_hosts or options.hosts),
                "model_hosts": list(options.model_hosts or options.hosts),
                "model_mib": options.model_mib,
                "planner_hosts": options.planner_hosts,
                "parts": list(options.parts),
            },
        },
        "notes": [],
    }
    options.work.mkdir(parents=True, exist_ok=True)
    if "startup" in options.parts:
        options.say("start-up: provision --help")
        results["startup"] = run_startup(options)
    if "planner" in options.parts:
        options.say(f"planner: {options.planner_hosts} hosts")
        results["planner"] = run_planner(options)
    if any(p in options.parts for p in LAB_PARTS):
        run_lab(options, results)
    results["targets"] = evaluate_targets(results)
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    return results


def run_lab(options: Options, results: dict[str, Any]) -> None:
    from tests.lab.lab import missing_prerequisites

    why = missing_prerequisites()
    if why:
        results["notes"].append(f"lab parts not measured: {why}")
        options.say(f"lab: skipped ({why})")
        return
    waiting = time.monotonic()
    with lab_lock(options.lock_wait_s):
        results["meta"]["lock_wait_s"] = round(time.monotonic() - waiting, 1)
        lab = LabRun(options)
        try:
            lab.up()
            results["lab"] = {
                "hosts": lab.max_n,
                "host": f"{lab_bench.TEMPLATE_HOST} clone: Debian 12, 1x RTX 4090 (simulated)",
                "role": lab_bench.ROLE,
                "up_s": lab.results.get("lab_up_s"),
            }
            options.say(f"first apply on {lab.max_n} hosts, by layer")
            lab.sessions = lab_bench.SessionLog({})  # nothing counted before instrument()
            results["first_apply"], tail = lab.first_apply()
            if results["first_apply"]["exit_code"] != 0:
                raise BenchError(f"the first apply failed:\n{tail}")
            lab.instrument()
            with_ansible = "ansible" in options.parts
            if with_ansible:
                options.say("ansible: environment, inventories, first run")
                lab.setup_ansible()
                # the hosts Ansible is measured on (--ansible-hosts may be fewer than --hosts)
                warm = lab.ansible(max(options.ansible_hosts or options.hosts), "ansible-first")
                results["ansible_first_run"] = {
                    "wall_s": warm["wall_s"],
                    "exit_code": warm["exit_code"],
                    "changed": warm["changed"],
                }
                results["lab"]["ansible_core"] = lab.results.get("ansible_core")
                results["lab"]["ansible_venv_s"] = lab.results.get("ansible_venv_s")
            settle = lab.apply(lab.max_n, "ours-settle")
            results["ours_settle_run"] = {
                "wall_s": settle["wall_s"],
                "exit_code": settle["exit_code"],
                "changed": settle["changed"],
            }
            if "converged" in options.parts or with_ansible:
                options.say("converged re-runs")
                results["converged"] = lab.converged(with_ansible)
                results["converged"]["layers"] = lab.layers("ours-layers")
            if "rtt" in options.parts:
                options.say(f"round-trip times {options.rtts} ms, 1 host")
                results["rtt"] = lab.rtt()
            if "models" in options.parts:
                options.say("model distribution")
                results["models"] = lab.models()
        except BenchError as exc:
            results["notes"].append(str(exc)[:4000])
            options.say(f"bench: {exc}")
        finally:
            left = lab.down()
            if left:
                results["notes"].append(f"lab teardown left: {left}")
