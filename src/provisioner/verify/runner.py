"""Run the verification suite over a set of hosts and collect a :class:`VerifyReport`.

``run_verify`` takes each host's pyinfra connection data, resolved data, plan and facts,
and:

1. derives one ``ssh_config`` block per SSH host from the pyinfra connection data
   (``@local`` becomes testinfra's ``local://``, ``@docker/ID`` ``docker://ID``);
2. writes the expectations file the suite reads (``--provisioner-expect``);
3. runs pytest on the suite in a child process (the installed ``provisioner.verify.checks``),
   hosts in parallel with pytest-xdist, one worker per host at most;
4. reads the per-check results the suite's recorder wrote and returns the report.

The child process keeps pyinfra's gevent patching (``pyinfra_cli``) and the caller's pytest
session, if any, out of the suite's way; plugin autoloading is off, so only testinfra, xdist
and the suite's own plugin are loaded, whatever else is installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import settings
from provisioner.verify.report import VerifyReport

SUITE_DIR = Path(__file__).resolve().parent
CHECKS_DIR = SUITE_DIR / "checks"
EXPECT_VERSION = 1

_ALIAS_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class VerifyError(Exception):
    """The suite could not run at all (bad connection data, pytest crashed)."""


@dataclass
class VerifyTarget:
    """One host to verify.

    + name: the pyinfra host name (``@local``, ``gpu-1``, ``@docker/abc``)
    + connection: the host's pyinfra connection data (``ssh_hostname``, ``ssh_port``,
      ``ssh_user``, ``ssh_key``, ``ssh_known_hosts_file``, ``ssh_strict_host_key_checking``,
      ``ssh_config_file``); ignored for ``@local``
    + data: the host's resolved data (every declared key)
    + plan: the host's ``provision plan --json`` entry
    + facts: the host's ``provision facts --json`` entry, when gathered
    """

    name: str
    connection: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] | None = None


def alias_for(name: str, taken: set[str]) -> str:
    """A unique ``ssh_config`` Host alias for a pyinfra host name."""
    base = _ALIAS_BAD.sub("-", name).strip("-.") or "host"
    alias, n = base, 2
    while alias in taken:
        alias, n = f"{base}-{n}", n + 1
    taken.add(alias)
    return alias


def _value(option: str, value: Any) -> str:
    text = str(value)
    if "\n" in text or "\r" in text or '"' in text:
        raise VerifyError(f"ssh option {option}: value {text!r} cannot go into an ssh_config")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _strict(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False or value is None:
        return "no" if value is False else "accept-new"
    text = str(value).lower()
    return {"off": "no", "false": "no", "true": "yes"}.get(text, text)


def ssh_config_block(alias: str, target: VerifyTarget, control_dir: Path | None = None) -> str:
    """The ``ssh_config`` block OpenSSH (testinfra's ``ssh://`` backend) uses for one host.

    Mirrors what pyinfra's SSH connector does with the same data: HostName, Port, User and
    IdentityFile; host keys from ``ssh_known_hosts_file`` with ``ssh_strict_host_key_checking``
    (pyinfra's default ``accept-new``); an operator's ``ssh_config_file`` is included for
    everything not set here. BatchMode: a password prompt fails instead of hanging.
    """
    conn = target.connection
    lines = [f"Host {alias}"]
    hostname = conn.get("ssh_hostname")
    if hostname or not conn.get("ssh_config_file"):
        lines.append(f"  HostName {_value('HostName', hostname or target.name)}")
    if conn.get("ssh_port"):
        lines.append(f"  Port {int(conn['ssh_port'])}")
    if conn.get("ssh_user"):
        lines.append(f"  User {_value('User', conn['ssh_user'])}")
    if conn.get("ssh_key"):
        lines.append(f"  IdentityFile {_value('IdentityFile', conn['ssh_key'])}")
        lines.append("  IdentitiesOnly yes")
    if conn.get("ssh_known_hosts_file"):
        lines.append(
            f"  UserKnownHostsFile {_value('UserKnownHostsFile', conn['ssh_known_hosts_file'])}"
        )
    lines.append(f"  StrictHostKeyChecking {_strict(conn.get('ssh_strict_host_key_checking'))}")
    lines.append("  BatchMode yes")
    lines.append("  ServerAliveInterval 15")
    if control_dir is not None:
        lines.append(f"  ControlPath {_value('ControlPath', control_dir / 'cm-%C')}")
    if conn.get("ssh_config_file"):
        lines.append(
            f"  Include {_value('Include', Path(str(conn['ssh_config_file'])).expanduser())}"
        )
    return "\n".join(lines) + "\n"


def host_spec(target: VerifyTarget, alias: str) -> str | None:
    """testinfra's ``--hosts`` entry for a target; None when it goes over SSH (``ssh://ALIAS``
    with the derived config)."""
    if target.name == "@local" or target.name.startswith("@local/"):
        return "local://"
    for connector in ("docker", "podman"):
        if target.name.startswith(f"@{connector}/"):
            return f"{connector}://{target.name.split('/', 1)[1]}"
    if target.name.startswith("@") and not target.connection.get("ssh_hostname"):
        raise VerifyError(
            f"{target.name}: provision verify reaches hosts over SSH, @local, @docker or @podman; "
            "this connector gives no ssh_hostname"
        )
    return None


def expectations(targets: list[VerifyTarget], specs: list[str]) -> dict[str, Any]:
    """The ``--provisioner-expect`` document (its shape is in ``docs/verify.md``)."""
    declared = settings.all_keys()
    hosts = {}
    for target, spec in zip(targets, specs, strict=True):
        data = {k: v for k, v in target.data.items() if k in declared}
        hosts[spec] = {
            "name": target.name,
            "data": data,
            "plan": target.plan,
            "facts": target.facts,
        }
    return {"version": EXPECT_VERSION, "hosts": hosts}


def prepare(targets: list[VerifyTarget], workdir: Path) -> tuple[list[str], Path | None, Path]:
    """Write the ssh_config and expectations files; return the ``--hosts`` specs, the
    ssh_config path (None without SSH hosts) and the expectations path."""
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VerifyError(f"hosts listed twice: {', '.join(duplicates)}")
    taken: set[str] = set()
    specs: list[str] = []
    blocks: list[str] = []
    for target in targets:
        alias = alias_for(target.name, taken)
        spec = host_spec(target, alias)
        if spec is None:
            blocks.append(ssh_config_block(alias, target, workdir))
            spec = f"ssh://{alias}"
        specs.append(spec)
    if specs.count("local://") > 1:
        raise VerifyError("more than one @local host")
    ssh_config = None
    if blocks:
        ssh_config = workdir / "ssh_config"
        ssh_config.write_text("\n".join(blocks), encoding="utf-8")
        ssh_config.chmod(0o600)
    expect = workdir / "expect.json"
    expect.write_text(
        json.dumps(expectations(targets, specs), indent=1, default=str), encoding="utf-8"
    )
    expect.chmod(0o600)
    return specs, ssh_config, expect


def pytest_command(
    specs: list[str],
    ssh_config: Path | None,
    expect: Path,
    results: Path,
    ini: Path,
    workers: int,
) -> list[str]:
    """The child pytest's command line."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(CHECKS_DIR),
        "-c",
        str(ini),
        "--rootdir",
        str(SUITE_DIR),
        "-p",
        "testinfra.plugin",
        "-p",
        "xdist.plugin",
        "-p",
        "provisioner.verify.plugin",
        "-p",
        "no:cacheprovider",
        f"--hosts={','.join(specs)}",
        f"--provisioner-expect={expect}",
        f"--provisioner-results={results}",
        "-q",
        "-rfEs",
        "--tb=line",
        "--color=no",
    ]
    if ssh_config is not None:
        command.append(f"--ssh-config={ssh_config}")
    if workers > 1:
        command += ["-n", str(workers), "--dist", "loadgroup"]
    return command


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    env.update(extra or {})
    return env


def _close_masters(ssh_config: Path | None, specs: list[str]) -> None:
    """End the SSH connection masters the run opened (ControlPersist would keep them)."""
    if ssh_config is None:
        return
    for spec in specs:
        if spec.startswith("ssh://"):
            subprocess.run(
                ["ssh", "-F", str(ssh_config), "-O", "exit", spec[len("ssh://") :]],
                capture_output=True,
                check=False,
                timeout=15,
            )


def run_verify(
    targets: list[VerifyTarget],
    *,
    workers: int | None = None,
    junit: Path | None = None,
    env: dict[str, str] | None = None,
) -> VerifyReport:
    """Run the suite on ``targets`` and return the report (JUnit XML written to ``junit``).

    + targets: the hosts, in the order the report lists them
    + workers: hosts checked in parallel (default: all; one host's checks always run in order
      on one worker)
    + junit: where to write JUnit XML of the same results
    + env: extra environment for the suite's process (e.g. ``PATH`` for ``@local``)
    """
    if not targets:
        raise VerifyError("no hosts to verify")
    with tempfile.TemporaryDirectory(prefix="provision-verify-") as tmp:
        workdir = Path(tmp)
        specs, ssh_config, expect = prepare(targets, workdir)
        results = workdir / "results.json"
        ini = workdir / "pytest.ini"
        ini.write_text("[pytest]\npython_files = test_*.py\n", encoding="utf-8")
        count = min(workers or len(targets), len(targets))
        command = pytest_command(specs, ssh_config, expect, results, ini, count)
        try:
            proc = subprocess.run(
                command,
                cwd=workdir,
                env=_child_env(env),
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            _close_masters(ssh_config, specs)
        output = proc.stdout + proc.stderr
        if not results.exists():
            tail = "\n".join(output.strip().splitlines()[-30:])
            raise VerifyError(
                f"the verification suite did not run (pytest exit {proc.returncode}):\n{tail}"
            )
        raw = json.loads(results.read_text(encoding="utf-8"))
    problems = list(raw.get("problems") or [])
    if proc.returncode not in (0, 1):
        problems.append(f"pytest exited with status {proc.returncode}")
    report = VerifyReport.from_results(
        [t.name for t in targets], list(raw.get("results") or []), problems, output
    )
    if junit is not None:
        report.write_junit(junit)
    return report
