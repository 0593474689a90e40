"""Exposure changes go in as a whole or not at all (issue 18, item 3), and removing one removes
what it installed (item 7).

The switch script that ``operations.exposure.switch`` sends to a host is run here in a shell
against a temporary directory, with stand-in ``nft`` and ``systemctl`` programs on PATH that
record their calls and fail on demand. The deploy's order of operations is checked on
pyinfra's ``@fake`` hosts.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from provisioner.deploys import ollama as deploy
from provisioner.operations import exposure
from provisioner.web_server import web_server

USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


@pytest.fixture
def stubs(tmp_path):
    """``nft`` and ``systemctl`` append their arguments to ``calls`` and fail when the
    environment variable ``FAIL_NFT`` / ``FAIL_SYSTEMCTL`` is a substring of them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name, variable in (("nft", "FAIL_NFT"), ("systemctl", "FAIL_SYSTEMCTL")):
        (bin_dir / name).write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> {calls}\n'
            f'if [ -n "${variable}" ] && case "$*" in *"${variable}"*) true;; *) false;; esac; '
            f'then echo "{name}: Operation not permitted" >&2; exit 1; fi\n'
        )
        (bin_dir / name).chmod(0o755)
    return tmp_path, calls, f"{bin_dir}:{os.environ['PATH']}"


def _items(root: Path, rules: str, dropin: str) -> list[exposure.Staged]:
    return [
        exposure.Staged(str(root / "etc/ollama.nft"), rules, user=USER, group=GROUP),
        exposure.Staged(str(root / "etc/fw.service"), "[Unit]\n", user=USER, group=GROUP),
        exposure.Staged(str(root / "etc/dropin.conf"), dropin, mode="600", user=USER, group=GROUP),
    ]


def _run(root: Path, path: str, items: list[exposure.Staged], **env: str):
    stage = root / "stage"
    stage.mkdir(exist_ok=True)
    for i, item in enumerate(items):
        (stage / exposure._staged_name(i, item)).write_text(item.content)
    script = exposure.switch_script(
        items,
        str(stage),
        "the Ollama allowlist",
        check="nft -c -f {0}",
        activate=["systemctl daemon-reload", "systemctl restart fw"],
        restore=["systemctl daemon-reload", "systemctl restart fw"],
    )
    run = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path, **env},
    )
    return run, stage


def _installed(root: Path) -> dict[str, str]:
    etc = root / "etc"
    return {p.name: p.read_text() for p in sorted(etc.iterdir())} if etc.exists() else {}


def _serving(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/ollama.nft").write_text("old rules\n")
    (root / "etc/fw.service").write_text("[Unit]\n")
    (root / "etc/dropin.conf").write_text("OLLAMA_HOST=127.0.0.1:11434\n")


def test_a_switch_installs_every_file_then_activates(stubs):
    root, calls, path = stubs
    _serving(root)
    run, stage = _run(root, path, _items(root, "new rules\n", "OLLAMA_HOST=0.0.0.0:11434\n"))
    assert run.returncode == 0, run.stderr
    assert _installed(root) == {
        "dropin.conf": "OLLAMA_HOST=0.0.0.0:11434\n",
        "fw.service": "[Unit]\n",
        "ollama.nft": "new rules\n",
    }
    assert oct((root / "etc/dropin.conf").stat().st_mode & 0o777) == "0o600"
    assert calls.read_text().splitlines() == [
        f"nft -c -f {stage}/0-ollama.nft",
        "systemctl daemon-reload",
        "systemctl restart fw",
    ]
    assert not stage.exists()


def test_a_ruleset_that_does_not_load_changes_nothing(stubs):
    """The firewall is checked before the drop-in that opens Ollama is written."""
    root, calls, path = stubs
    _serving(root)
    before = _installed(root)
    run, stage = _run(
        root, path, _items(root, "bad rules\n", "OLLAMA_HOST=0.0.0.0:11434\n"), FAIL_NFT="-c"
    )
    assert run.returncode == 1
    assert "the Ollama allowlist: the check `nft -c -f" in run.stderr
    assert "nothing was changed" in run.stderr
    assert "nft: Operation not permitted" in run.stderr
    assert _installed(root) == before
    assert "systemctl" not in calls.read_text()
    assert not stage.exists()  # the next run stages and checks again


def test_a_firewall_that_fails_to_start_puts_the_previous_files_back(stubs):
    root, calls, path = stubs
    _serving(root)
    before = _installed(root)
    run, _ = _run(
        root,
        path,
        _items(root, "new rules\n", "OLLAMA_HOST=0.0.0.0:11434\n"),
        FAIL_SYSTEMCTL="restart",
    )
    assert run.returncode == 1
    assert "`systemctl restart fw` failed, the previous configuration is back" in run.stderr
    assert "systemctl: Operation not permitted" in run.stderr
    assert _installed(root) == before
    assert calls.read_text().splitlines()[-2:] == [
        "systemctl daemon-reload",
        "systemctl restart fw",
    ]


def test_files_that_did_not_exist_before_a_failed_switch_are_removed_again(stubs):
    root, _, path = stubs
    (root / "etc").mkdir()
    (root / "etc/dropin.conf").write_text("OLLAMA_HOST=127.0.0.1:11434\n")
    run, _ = _run(
        root, path, _items(root, "rules\n", "OLLAMA_HOST=0.0.0.0:11434\n"), FAIL_SYSTEMCTL="fw"
    )
    assert run.returncode == 1
    assert _installed(root) == {"dropin.conf": "OLLAMA_HOST=127.0.0.1:11434\n"}


# --- the deploy on fake hosts -----------------------------------------------------------------


def _fake(name: str, responses: dict | None = None, **data):
    base = {
        "cat /etc/os-release": ["ID=debian", "VERSION_ID=12", "##arch x86_64"],
        "command -v apt": "/usr/bin/apt",
        "command -v useradd": "/usr/sbin/useradd",
        "uname -s": "Linux",
        "stat -c '%a %U %G %n'": ["755 root root /"],
    }
    return (
        f"@fake/{name}",
        {
            "fake_delay": 0,
            "fake_delay_jitter": 0,
            "fake_responses": {**(responses or {}), **base},
            "ollama_sha256": "a" * 64,
            **data,
        },
    )


def _exists(*paths: str) -> dict:
    """A ``fake_responses`` entry for the PresentPaths fact: ``paths`` are on the host."""
    return {f"for p in {paths[0]} ": list(paths)}


def _deploy(*hosts) -> tuple[dict[str, str], set[str]]:
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    inventory = Inventory((list(hosts), {}))
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, deploy.install_ollama)
    try:
        run_ops(state)
    except PyinfraError:
        pass
    commands = {h.name: "\n".join(h.connector.executed_commands) for h in inventory}
    return commands, {h.name for h in state.failed_hosts}


def test_the_allowlist_is_checked_and_loaded_before_the_drop_in_and_the_restart():
    commands, failed = _deploy(
        _fake(
            "allow",
            ollama_expose="allowlist",
            ollama_listen_address="0.0.0.0",
            ollama_allow_networks=["192.0.2.0/24"],
        )
    )
    assert not failed
    run = commands["@fake/allow"]
    check = run.index("nft -c -f /var/lib/provisioner/stage/0-ollama.nft")
    dropin = run.index(f"{deploy.DROPIN}.provisioner-new")
    firewall = run.index(f"out=$(systemctl restart {deploy.FIREWALL_UNIT} 2>&1)")
    assert check < dropin < firewall < run.index("systemctl restart ollama")


def test_removing_the_allowlist_waits_until_ollama_listens_on_loopback_again():
    unit = f"/etc/systemd/system/{deploy.FIREWALL_UNIT}"
    commands, failed = _deploy(_fake("was-allow", _exists(unit)))
    assert not failed
    run = commands["@fake/was-allow"]
    assert "nft -c" not in run
    assert run.index("systemctl restart ollama") < run.index(
        f"disable --now {deploy.FIREWALL_UNIT}"
    )


def test_removing_the_proxy_removes_its_files_and_the_nginx_it_installed():
    commands, failed = _deploy(_fake("was-proxy", _exists(deploy.NGINX_SITE, deploy.NGINX_OURS)))
    assert not failed
    run = commands["@fake/was-proxy"]
    removed = run.index(f"rm -rf {deploy.NGINX_SITE} {deploy.NGINX_DIR} {deploy.NGINX_OURS}")
    # the record of an nginx the proxy installed is read before it is removed with the rest
    assert run.index(f"if [ -e {deploy.NGINX_OURS} ]; then systemctl disable --now nginx") < removed
    assert removed < run.index("systemctl reload nginx")


@pytest.mark.parametrize(
    ("os_release", "group"),
    [
        ({"id": "debian", "id_like": None}, "www-data"),
        ({"id": "ubuntu", "id_like": "debian"}, "www-data"),
        ({"id": "rocky", "id_like": "rhel centos fedora"}, "nginx"),
    ],
)
def test_the_web_server_group_comes_from_the_distro_data(os_release, group):
    assert web_server.group(os_release) == group


def test_every_exposure_mode_runs_the_same_operations_in_the_same_order(monkeypatch):
    """Architecture contract: per-host differences are arguments or skips, never branches."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy

    monkeypatch.setenv("PROVISIONER_TEST_HTPASSWD", "ops:{SHA}x\n")
    proxy = {"ollama_htpasswd_env": "PROVISIONER_TEST_HTPASSWD"}
    inventory = Inventory(
        (
            [
                _fake("loopback"),
                _fake("proxy", ollama_expose="proxy", **proxy),
                _fake(
                    "both",
                    ollama_expose="proxy+allowlist",
                    ollama_allow_networks=["192.0.2.0/24"],
                    **proxy,
                ),
            ],
            {},
        )
    )
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, deploy.install_ollama)
    order = state.get_op_order()
    names = {
        h.name: [state.op_meta[op].names for op in order if op in state.ops[h]] for h in inventory
    }
    assert names["@fake/proxy"] == names["@fake/loopback"] == names["@fake/both"]
    assert len(names["@fake/loopback"]) > 10
    # and a mode's steps plan no change where the mode is not wanted (a dry run stays clean)
    loopback = inventory.get_host("@fake/loopback")
    planned = {
        " ".join(sorted(state.op_meta[op].names)): state.ops[loopback][op].operation_meta
        for op in order
    }
    for name in (
        "Record that the Ollama proxy installs nginx",
        "Keep the Ollama allowlist loaded",
        "Create the proxy's directory",
        "Generate a self-signed certificate for the proxy",
        "Install the Ollama proxy",
        "Run nginx",
    ):
        (meta,) = [meta for names, meta in planned.items() if name in names]
        assert meta._maybe_is_change is False, name


def test_the_facts_read_files_and_paths_in_one_command(tmp_path):
    from provisioner.facts.exposure import InstalledFiles, PresentPaths

    unit = tmp_path / "unit"
    unit.write_text("[Unit]\n")
    unit.chmod(0o640)
    paths = [str(unit), str(tmp_path / "missing"), str(tmp_path)]
    fact = InstalledFiles()
    out = subprocess.run(["sh", "-c", fact.command(paths)], capture_output=True, text=True)
    item = exposure.Staged(str(unit), "[Unit]\n", mode="640", user=USER, group=GROUP)
    installed = fact.process(out.stdout.splitlines())
    assert installed == {str(unit): ("640", USER, GROUP, item.sha256)}
    assert exposure._in_place(item, installed)
    assert not exposure._in_place(exposure.Staged(str(unit), "[Unit]\n", user=USER), installed)
    present = PresentPaths()
    out = subprocess.run(["sh", "-c", present.command(paths)], capture_output=True, text=True)
    assert present.process(out.stdout.splitlines()) == [str(unit), str(tmp_path)]


def test_installed_files_pairs_each_file_s_owner_with_its_sum():
    """``stat`` and ``sha256sum`` lines of the same files: a file is reported only with both,
    mode, owner and group in that order."""
    from provisioner.facts.exposure import InstalledFiles

    sha = "ab" * 32
    output = [
        "stat 640 ollama adm /etc/a.conf",
        "stat 644 root root /etc/only-stat",
        f"{sha}  /etc/a.conf",
        f"{'cd' * 32}  /etc/only-sum",
    ]
    assert InstalledFiles().process(output) == {"/etc/a.conf": ("640", "ollama", "adm", sha)}
