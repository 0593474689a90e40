"""Package-manager calls made by the deploys are bounded (issue 18): apt and dnf get the
timeouts, download retries and lock wait of ``data/bounds.toml``; the package lists' refresh
runs in a bounded retry loop that names the step and the mirror when it gives up, retries a
transient mirror error, and never turns a real failure into an endless loop.

The retry loop runs here for real (``sh``, ``timeout``) around a stand-in ``apt-get`` on PATH:
a script that prints what apt 2.6 (Debian 12) prints for a failed index download
(``Err:1 <url> <suite> InRelease`` / ``E: Failed to fetch <url>``; exit 100).
"""

from __future__ import annotations

import shlex
import subprocess
import time

import pytest

from provisioner import bounds, gpu_stack, run_outcome
from provisioner.operations import nvidia

MIRROR = "http://169.254.100.1:3142/deb.debian.org/debian"
APT_ERROR = (
    f"Err:1 {MIRROR} bookworm InRelease\n  503  Service Unavailable [IP: 169.254.100.1 3142]\n"
    f"E: Failed to fetch {MIRROR}/dists/bookworm/InRelease  503  Service Unavailable\n"
)


def _raw(command) -> str:
    return command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)


@pytest.mark.parametrize("distro", ["debian12", "ubuntu2404", "rhel9"])
def test_every_package_command_of_the_gpu_stack_carries_the_bounds(distro):
    target = gpu_stack.distro(distro)
    family = target.family.name
    options = " ".join(bounds.package_options(family))
    assert options  # both families have bounds
    commands = [_raw(c) for c in nvidia._install(target, ["nvidia-open"])]
    install = commands[-1]
    assert f"{'apt-get' if family == 'apt' else 'dnf'} {options} install" in install
    assert install.endswith(" nvidia-open")
    if family == "apt":
        update = commands[0]
        # a bounded loop around the refresh, which has the options too; install is not looped
        p = bounds.bounds()["packages"]
        assert f"timeout -k 10 {p['update_timeout_s']} sh -c " in update
        refresh = " ".join(bounds.bounds()["packages"]["options"]["apt"]["update_options"])
        assert f"'apt-get {options} {refresh} update'" in update
        assert "Error-Mode" not in install  # the refresh's option only
        assert f'[ "$n" -ge {p["update_attempts"]} ]' in update
        assert "until" not in install
    else:
        assert len(commands) == 1  # dnf refreshes its metadata itself, bounded by its options
    for parts in (target.family.remove, target.family.hold, target.family.unhold):
        bounded = _raw(nvidia._command(target.family, parts, "x"))
        if bounds.bounds()["packages"]["options"][family]["after"] in parts:
            assert options in bounded
        else:  # apt-mark: not the program the options belong to
            assert options not in bounded


def test_the_apt_options_are_the_ones_of_bounds_toml():
    options = bounds.package_options("apt")
    pairs = dict(o.split("=", 1) for o in options[1::2])
    assert options[::2] == ["-o"] * len(pairs)
    assert set(pairs) == {
        "Acquire::http::Timeout",
        "Acquire::https::Timeout",
        "Acquire::Retries",
        "DPkg::Lock::Timeout",
    }
    assert all(int(v) > 0 for v in pairs.values())
    assert bounds.package_options("zypper") == []


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """A stand-in ``apt-get`` on PATH that fails the first ``fail`` calls (as a mirror's bad
    answer makes apt fail), or hangs when ``hang`` is set; it counts its calls."""
    monkeypatch.setitem(bounds.bounds()["packages"], "retry_delay_s", 0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"

    def make(fail: int, hang: bool = False) -> None:
        script = bin_dir / "apt-get"
        script.write_text(
            "#!/bin/sh\n"
            f'echo "$*" >> {calls}\n'
            + ("sleep 30\n" if hang else "")
            + f'n=$(wc -l < {calls}); if [ "$n" -le {fail} ]; then\n'
            f"printf %s {shlex.quote(APT_ERROR)}; exit 100; fi\n"
            f"echo 'Hit:1 {MIRROR} bookworm InRelease'; echo 'Reading package lists...'\n"
        )
        script.chmod(0o755)

    make.bin = bin_dir  # type: ignore[attr-defined]
    make.calls = calls  # type: ignore[attr-defined]
    return make


def _run(command: str, bin_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )


def _update_command() -> str:
    return bounds.retried(
        shlex.join(bounds.with_options(["apt-get", "update"], "apt", refresh=True)),
        "the package lists refresh",
    )


def test_a_transient_mirror_error_is_retried_and_the_refresh_succeeds(fake_apt):
    fake_apt(fail=1)
    run = _run(_update_command(), fake_apt.bin)
    assert run.returncode == 0, run.stderr
    calls = fake_apt.calls.read_text().splitlines()
    assert len(calls) == 2
    assert (
        calls[0]
        == " ".join(bounds.package_options("apt")) + " -o APT::Update::Error-Mode=any update"
    )
    assert "E: Failed to fetch" in run.stdout and "Hit:1" in run.stdout  # both attempts shown


def test_a_mirror_that_keeps_failing_fails_the_step_naming_it_after_the_bounded_attempts(
    fake_apt,
):
    fake_apt(fail=99)
    attempts = bounds.get("packages", "update_attempts")
    run = _run(_update_command(), fake_apt.bin)
    assert run.returncode == 1
    assert len(fake_apt.calls.read_text().splitlines()) == attempts  # never more
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"the package lists refresh failed {attempts} times (last exit 100)")
    mirrors = last.split("package mirror(s): ", 1)[1].split()
    assert sorted(mirrors) == [MIRROR, f"{MIRROR}/dists/bookworm/InRelease"]
    reason = run_outcome.sentence("Install the driver", last)
    assert reason.startswith(
        "step 'Install the driver' failed: a package mirror did not answer properly: "
    )


def test_a_stalled_refresh_is_killed_at_its_bound(fake_apt, monkeypatch):
    monkeypatch.setitem(bounds.bounds()["packages"], "update_timeout_s", 1)
    monkeypatch.setitem(bounds.bounds()["packages"], "update_attempts", 2)
    fake_apt(fail=0, hang=True)
    started = time.monotonic()
    run = _run(_update_command(), fake_apt.bin)
    assert run.returncode == 1
    assert time.monotonic() - started < 10  # two attempts of 1 s, not 2 x 30 s
    last = run.stderr.strip().splitlines()[-1]
    assert "failed 2 times (the last attempt timed out after 1s)" in last
    assert "package mirror(s): none named" in last
    reason = run_outcome.sentence("Install the driver", last)
    assert "a step exceeded its time bound" in reason


def test_a_step_name_with_shell_characters_is_quoted():
    command = bounds.retried("false", "it's $HOME `x`")
    run = subprocess.run(
        ["sh", "-c", command.replace("sleep ", "true ")], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("it's $HOME `x` failed")


@pytest.mark.parametrize("family", ["apt", "dnf"])
def test_system_packages_installs_with_the_family_bounds(family):
    """``system.packages`` (Ollama's tools, node_exporter) on a pyinfra ``@fake`` host that
    has ``family``: pyinfra's own apt/dnf operation, with the bounds as extra install args."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    from provisioner.operations import system

    other = "dnf" if family == "apt" else "apt"
    responses = {
        f"command -v {family}": f"/usr/bin/{family}",
        f"command -v {other}": "",
        "uname -s": "Linux",
    }
    data = {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses}
    inventory = Inventory(([("@fake/host", data)], {}))
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_op(state, system.packages, packages=["zstd"])
    run_ops(state)
    executed = "\n".join(next(iter(inventory)).connector.executed_commands)
    bounded = " ".join(bounds.package_options(family))
    program = "apt-get" if family == "apt" else "dnf"
    installs = [
        line for line in executed.splitlines() if f"{program} " in line and " install" in line
    ]
    assert len(installs) == 1, executed
    assert installs[0].endswith(f" {bounded} zstd"), executed
