"""The Ollama deploy: settings rules, rendered files, and the install scripts run for real.

The release, switch and wait scripts that the operations send to a host are executed here in
a shell against a temporary install directory: a real (stand-in) release archive served from
``file://``, and stand-in ``systemctl`` and ``curl`` programs on PATH for the service part.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import bounds
from provisioner.deploys import ollama as deploy
from provisioner.deploys.ollama import check_settings, settings_from
from provisioner.operations import ollama as ops

ROOT = Path(__file__).resolve().parents[2]
RELEASE_DOUBLE = ROOT / "tests" / "doubles" / "ollama" / "release.py"


def _release_double():
    spec = importlib.util.spec_from_file_location("ollama_release_double", RELEASE_DOUBLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- settings ---------------------------------------------------------------------------------


def test_the_defaults_are_valid_and_loopback_only():
    cfg, problems = settings_from({})
    assert problems == []
    assert cfg.ollama_host == "127.0.0.1:11434"
    assert cfg.api_url == "http://127.0.0.1:11434"
    assert not cfg.proxy and not cfg.allowlist


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"ollama_listen_address": "0.0.0.0"}, "ollama_listen_address", "no authentication"),
        (
            {
                "ollama_listen_address": "0.0.0.0",
                "ollama_expose": "proxy",
                "ollama_htpasswd_env": "PATH",
            },
            "ollama_listen_address",
            "behind an allowlist",
        ),
        ({"ollama_expose": "allowlist"}, "ollama_allow_networks", "needs networks"),
        (
            {"ollama_expose": "allowlist", "ollama_allow_networks": ["10.0.0.0/33"]},
            "ollama_allow_networks",
            "is not a network",
        ),
        ({"ollama_expose": "proxy"}, "ollama_htpasswd_file", "never runs without authentication"),
        (
            {"ollama_expose": "proxy", "ollama_htpasswd_file": "/nonexistent/htpasswd"},
            "ollama_htpasswd_file",
            "does not exist on this machine",
        ),
        (
            {"ollama_expose": "proxy", "ollama_htpasswd_env": "PROVISIONER_TEST_UNSET_VAR"},
            "ollama_htpasswd_env",
            "is not set",
        ),
        (
            {"ollama_extra_env": {"OLLAMA_HOST": "0.0.0.0"}},
            "ollama_extra_env",
            "set by its own key",
        ),
        (
            {"ollama_extra_env": {"BAD-NAME": "1"}},
            "ollama_extra_env",
            "not an environment variable",
        ),
        ({"ollama_extra_env": {"A": "x\ny"}}, "ollama_extra_env", "one line"),
        ({"ollama_models_dir": "models"}, "ollama_models_dir", "absolute path"),
        ({"ollama_keep_alive": "forever"}, "ollama_keep_alive", "not a duration"),
        ({"ollama_registry": "http://10.0.0.5:5000"}, "ollama_registry_insecure", "plain HTTP"),
        ({"ollama_registry": "http://10.0.0.5:5000/site"}, "ollama_registry", "namespace"),
        ({"ollama_version": "latest"}, "ollama_version", "not an Ollama version"),
    ],
)
def test_settings_that_would_expose_or_break_ollama_are_refused(data, key, fragment):
    problems = check_settings(data)
    assert [k for k, _ in problems] == [key], problems
    assert fragment in problems[0][1]


def test_an_allowlist_may_open_ollama_to_its_networks():
    cfg, problems = settings_from(
        {
            "ollama_expose": "allowlist",
            "ollama_listen_address": "0.0.0.0",
            "ollama_allow_networks": ["10.1.0.0/16", "192.0.2.7", "2001:db8::/48"],
        }
    )
    assert problems == []
    assert cfg.ollama_host == "0.0.0.0:11434"
    assert cfg.api_url == "http://127.0.0.1:11434"
    assert cfg.networks() == (["10.1.0.0/16", "192.0.2.7/32"], ["2001:db8::/48"])


def test_the_proxy_takes_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROVISIONER_TEST_HTPASSWD", "ops:$2y$05$abcdefghijklmnopqrstuu\n")
    cfg, problems = settings_from(
        {"ollama_expose": "proxy", "ollama_htpasswd_env": "PROVISIONER_TEST_HTPASSWD"}
    )
    assert problems == []
    assert deploy._htpasswd(cfg).startswith("ops:$2y$")


def test_ipv6_loopback_is_bracketed():
    cfg, _ = settings_from({"ollama_listen_address": "::1", "ollama_port": 11500})
    assert cfg.ollama_host == "[::1]:11500"
    assert cfg.api_url == "http://[::1]:11500"


# --- rendered files ---------------------------------------------------------------------------


def test_the_drop_in_pins_every_setting_and_quotes_for_systemd():
    cfg, _ = settings_from(
        {
            "ollama_context_length": 16384,
            "ollama_num_parallel": 2,
            "ollama_kv_cache_type": "q8_0",
            "ollama_flash_attention": False,
            "ollama_keep_alive": "-1",
            "ollama_max_loaded_models": 1,
            "ollama_cuda_visible_devices": "GPU-0a1b,GPU-2c3d",
            "ollama_extra_env": {
                "OLLAMA_ORIGINS": 'https://a.example,"b"',
                "OLLAMA_GPU_OVERHEAD": "5%",
            },
        }
    )
    lines = [
        line for line in deploy.render_dropin(cfg).splitlines() if line.startswith("Environment=")
    ]
    assert lines == [
        'Environment="OLLAMA_HOST=127.0.0.1:11434"',
        'Environment="OLLAMA_MODELS=/var/lib/ollama/models"',
        'Environment="OLLAMA_CONTEXT_LENGTH=16384"',
        'Environment="OLLAMA_NUM_PARALLEL=2"',
        'Environment="OLLAMA_KEEP_ALIVE=-1"',
        'Environment="OLLAMA_MAX_LOADED_MODELS=1"',
        'Environment="OLLAMA_FLASH_ATTENTION=0"',
        'Environment="OLLAMA_KV_CACHE_TYPE=q8_0"',
        'Environment="CUDA_VISIBLE_DEVICES=GPU-0a1b,GPU-2c3d"',
        'Environment="OLLAMA_GPU_OVERHEAD=5%%"',
        'Environment="OLLAMA_ORIGINS=https://a.example,\\"b\\""',
    ]


def test_the_unit_requires_the_allowlist_only_in_allowlist_modes():
    loopback, _ = settings_from({})
    assert "Requires=" not in deploy.render_unit(loopback)
    allow, _ = settings_from(
        {"ollama_expose": "allowlist", "ollama_allow_networks": ["10.0.0.0/8"]}
    )
    unit = deploy.render_unit(allow)
    assert "Requires=provisioner-ollama-firewall.service" in unit
    assert "ExecStart=/opt/ollama/current/bin/ollama serve" in unit
    assert "ReadWritePaths=-/var/lib/ollama -/var/lib/ollama/models" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_units_are_valid_systemd_units(tmp_path):
    cfg, _ = settings_from({"ollama_expose": "allowlist", "ollama_allow_networks": ["10.0.0.0/8"]})
    (tmp_path / "ollama.service").write_text(deploy.render_unit(cfg))
    (tmp_path / "provisioner-ollama-firewall.service").write_text(deploy.render_firewall_unit())
    run = subprocess.run(
        ["systemd-analyze", "verify", *map(str, tmp_path.iterdir())], capture_output=True, text=True
    )
    complaints = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and "is not executable" not in line  # the binaries are not installed here
    ]
    assert complaints == []


def test_the_proxy_forwards_to_loopback_with_tls_and_auth():
    cfg, _ = settings_from(
        {"ollama_expose": "proxy", "ollama_htpasswd_env": "PATH", "ollama_proxy_port": 8443}
    )
    site = deploy.render_nginx(cfg)
    assert "listen 8443 ssl;" in site
    assert "auth_basic_user_file /etc/nginx/ollama/htpasswd;" in site
    assert "ssl_certificate /etc/nginx/ollama/tls.crt;" in site
    assert "proxy_pass http://127.0.0.1:11434;" in site
    assert 'proxy_set_header Host "localhost:11434";' in site
    assert "proxy_buffering off;" in site


def test_the_allowlist_guards_the_proxy_port_when_there_is_a_proxy():
    both, _ = settings_from(
        {
            "ollama_expose": "proxy+allowlist",
            "ollama_htpasswd_env": "PATH",
            "ollama_allow_networks": ["198.51.100.0/24", "2001:db8::/32"],
        }
    )
    rules = deploy.render_nft(both)
    assert "tcp dport 443 ip saddr @allow_v4 accept" in rules
    assert "elements = { 198.51.100.0/24 }" in rules
    assert "elements = { 2001:db8::/32 }" in rules
    assert "tcp dport 443 counter drop" in rules
    only, _ = settings_from({"ollama_expose": "allowlist", "ollama_allow_networks": ["10.0.0.0/8"]})
    rules = deploy.render_nft(only)
    assert "tcp dport 11434 counter drop" in rules
    assert "ipv6_addr\n        flags interval\n    }" in rules  # an empty v6 set, no elements


def test_the_config_digest_changes_with_any_rendered_byte():
    cfg, _ = settings_from({})
    other, _ = settings_from({"ollama_num_parallel": 2})
    unit = deploy.render_unit(cfg)
    assert deploy.config_digest(unit, deploy.render_dropin(cfg)) == deploy.config_digest(
        unit, deploy.render_dropin(cfg)
    )
    assert deploy.config_digest(unit, deploy.render_dropin(cfg)) != deploy.config_digest(
        unit, deploy.render_dropin(other)
    )


# --- the release script -----------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path):
    release = _release_double()
    path = release.build_release(tmp_path / "mirror", "0.32.15")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _sh(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env={**os.environ, **env}
    )


def test_the_release_is_unpacked_only_after_its_checksum_matched(tmp_path, archive):
    path, sha = archive
    install = tmp_path / "opt"
    run = _sh(ops._release_script("0.32.15", f"file://{path}", sha, str(install), "zst"))
    assert run.returncode == 0, run.stderr
    assert f"sha256 {sha} verified against ollama_sha256" in run.stdout
    assert (install / "0.32.15" / "bin" / "ollama").is_file()
    assert (install / "0.32.15" / "lib" / "ollama" / "cuda_v13" / "libggml-cuda.so").is_file()
    assert os.access(install / "0.32.15" / "bin" / "ollama", os.X_OK)
    assert (install / "0.32.15" / ".provisioner-sha256").read_text().strip() == sha
    assert sorted(p.name for p in install.iterdir()) == ["0.32.15"]  # no staging, no download


def test_a_checksum_mismatch_unpacks_nothing_and_leaves_the_serving_version(tmp_path, archive):
    path, _ = archive
    install = tmp_path / "opt"
    (install / "0.32.14" / "bin").mkdir(parents=True)
    (install / "0.32.14" / "bin" / "ollama").write_text("serving")
    (install / "current").symlink_to("0.32.14")
    wrong = "0" * 64
    run = _sh(ops._release_script("0.32.15", f"file://{path}", wrong, str(install), "zst"))
    assert run.returncode == 1
    assert f"checksum mismatch for file://{path}: expected {wrong}" in run.stderr
    assert "nothing was unpacked" in run.stderr
    assert sorted(p.name for p in install.iterdir()) == ["0.32.14", "current"]
    assert os.readlink(install / "current") == "0.32.14"


def _unpinned(path: Path, install: Path, fmt: str = "zst") -> subprocess.CompletedProcess:
    sums = f"file://{path.parent}/sha256sum.txt"
    return _sh(ops._release_script("0.32.15", f"file://{path}", None, str(install), fmt, sums))


def test_without_a_pin_the_release_is_checked_against_its_own_sha256sum_txt(tmp_path, archive):
    path, sha = archive
    install = tmp_path / "opt"
    run = _unpinned(path, install)
    assert run.returncode == 0, run.stderr
    assert f"sha256 {sha} verified against file://{path.parent}/sha256sum.txt" in run.stdout
    assert (install / "0.32.15" / ".provisioner-sha256").read_text().strip() == sha
    assert sorted(p.name for p in install.iterdir()) == ["0.32.15"]


def test_a_tampered_archive_fails_against_the_release_sums_and_unpacks_nothing(tmp_path, archive):
    path, sha = archive
    path.write_bytes(path.read_bytes() + b"\0")
    install = tmp_path / "opt"
    (install / "0.32.14").mkdir(parents=True)
    (install / "current").symlink_to("0.32.14")
    run = _unpinned(path, install)
    assert run.returncode == 1
    assert f"expected {sha} (from file://{path.parent}/sha256sum.txt)" in run.stderr
    assert sorted(p.name for p in install.iterdir()) == ["0.32.14", "current"]


@pytest.mark.parametrize(
    ("sums", "message"),
    [
        (None, "cannot fetch"),
        (f"{'ab' * 32}  ./ollama-linux-arm64.tar.zst\n", "has no line for ./ollama-linux-amd64"),
    ],
)
def test_missing_release_sums_unpack_nothing(tmp_path, archive, sums, message):
    path, _ = archive
    listing = path.parent / "sha256sum.txt"
    if sums is None:
        listing.unlink()
    else:
        listing.write_text(sums)
    install = tmp_path / "opt"
    run = _unpinned(path, install)
    assert run.returncode == 1
    assert message in run.stderr
    assert not (install / "0.32.15").exists()


def test_an_old_tgz_release_unpacks_with_its_members_as_published(tmp_path):
    path = _release_double().build_release(tmp_path / "mirror", "0.13.5")
    assert path.name == "ollama-linux-amd64.tgz"
    install = tmp_path / "opt"
    run = _unpinned(path, install, "tgz")
    assert run.returncode == 0, run.stderr
    assert (install / "0.32.15" / "bin" / "ollama").is_file()


def test_an_archive_without_the_binary_is_refused(tmp_path):
    empty = tmp_path / "empty.tgz"
    subprocess.run(
        ["tar", "-czf", str(empty), "-C", str(tmp_path), "--files-from", "/dev/null"], check=True
    )
    sha = hashlib.sha256(empty.read_bytes()).hexdigest()
    install = tmp_path / "opt"
    run = _sh(ops._release_script("0.32.15", f"file://{empty}", sha, str(install), "tgz"))
    assert run.returncode == 1
    assert "holds no bin/ollama" in run.stderr
    assert not (install / "0.32.15").exists()


# --- switching, waiting and rolling back ------------------------------------------------------


@pytest.fixture
def service_stubs(tmp_path):
    """``systemctl`` records its calls; ``curl`` answers /api/version with ``$ANSWER`` or fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "curl").write_text(
        '#!/bin/sh\n[ -n "$ANSWER" ] || exit 7\nprintf \'{"version":"%s"}\\n\' "$ANSWER"\n'
    )
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    install = tmp_path / "opt"
    for version in ("0.32.14", "0.32.15"):
        (install / version / "bin").mkdir(parents=True)
    (install / "current").symlink_to("0.32.14")
    path = f"{bin_dir}:{os.environ['PATH']}"
    return install, calls, path


def _upgrade(install: Path, tmp_path: Path, path: str, answer: str) -> subprocess.CompletedProcess:
    switch = ops._switch_script("0.32.15", str(install), bin_link=str(tmp_path / "ollama"))
    wait = ops._wait_script(
        "0.32.15", "http://127.0.0.1:11434", 2, "ollama", str(install), previous="0.32.14"
    )
    return _sh(f"{switch}\n{wait}", PATH=path, ANSWER=answer)


def test_an_upgrade_that_answers_stays(tmp_path, service_stubs):
    install, calls, path = service_stubs
    run = _upgrade(install, tmp_path, path, answer="0.32.15")
    assert run.returncode == 0, run.stderr
    assert os.readlink(install / "current") == "0.32.15"
    assert os.readlink(tmp_path / "ollama") == f"{install}/current/bin/ollama"
    assert calls.read_text().splitlines() == ["daemon-reload", "restart ollama"]


@pytest.mark.parametrize("answer", ["", "0.32.14"])
def test_an_upgrade_that_does_not_answer_rolls_back(tmp_path, service_stubs, answer):
    """No answer at all, or the old binary still answering: both are a failed upgrade."""
    install, calls, path = service_stubs
    run = _upgrade(install, tmp_path, path, answer=answer)
    assert run.returncode == 1
    assert "Ollama 0.32.15 did not answer on http://127.0.0.1:11434 within 2s" in run.stderr
    assert "rolled back to Ollama 0.32.14" in run.stderr
    assert os.readlink(install / "current") == "0.32.14"
    assert calls.read_text().splitlines() == [
        "daemon-reload",
        "restart ollama",
        "status ollama --no-pager -n 20",
        "restart ollama",
    ]


# --- the deploy on fake hosts -----------------------------------------------------------------


def _fake(name: str, **data):
    responses = {
        "cat /etc/os-release": [
            "ID=debian",
            "VERSION_ID=12",
            "VERSION_CODENAME=bookworm",
            "##arch x86_64",
        ],
        "command -v apt": "/usr/bin/apt",
        "command -v useradd": "/usr/sbin/useradd",
        "uname -s": "Linux",
        "stat -c '%a %U %G %n'": ["755 root root /"],
        "provisioner.lock.owner": "held",  # provisioner.host_lock: the lock is free
    }
    return (
        f"@fake/{name}",
        {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": responses, **data},
    )


def test_a_refused_release_fails_its_host_only_and_downloads_nothing():
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    inventory = Inventory(
        (
            [
                _fake("old", ollama_version="0.16.0", ollama_sha256="a" * 64),
                _fake("badurl", ollama_release_url="https://m/{version}/{os}.tar.zst"),
                _fake("good", ollama_sha256="a" * 64),
                _fake("unpinned"),
            ],
            {},
        )
    )
    state = State(inventory=inventory, config=Config())
    connect_all(state)
    add_deploy(state, deploy.install_ollama)
    try:
        run_ops(state)
    except PyinfraError:
        pass
    hosts = {host.name: host for host in inventory}
    commands = {name: "\n".join(host.connector.executed_commands) for name, host in hosts.items()}
    for name in ("old", "badurl"):
        assert hosts[f"@fake/{name}"] in state.failed_hosts
        assert "apt-get" not in commands[f"@fake/{name}"]
        assert "ollama-linux-amd64" not in commands[f"@fake/{name}"]
    good = commands["@fake/good"]
    assert hosts["@fake/good"] not in state.failed_hosts
    # apt with its bound options (data/bounds.toml [packages.options.apt])
    bounded = " ".join(bounds.package_options("apt"))
    assert f"install {bounded} curl ca-certificates tar gzip zstd" in good
    download = good.index("curl -fsSL --retry 3")
    assert "v0.32.15/ollama-linux-amd64.tar.zst" in good
    assert good.index("sha256sum", download) < good.index("zstd -dcq", download)
    assert "sha256sum.txt" not in good  # the pin wins: the release's list is not consulted
    assert "systemctl restart ollama" in good
    unpinned = commands["@fake/unpinned"]
    assert hosts["@fake/unpinned"] not in state.failed_hosts
    assert "releases/download/v0.32.15/sha256sum.txt" in unpinned


def test_a_data_override_of_the_version_never_checks_against_the_inventorys_sum(caplog):
    """`--data ollama_version=X` without a sum: the group's ollama_sha256 (for its own version)
    is ignored and the sum comes from X's sha256sum.txt; with --data ollama_sha256 too, it wins."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.operations import run_ops

    pinned = "c" * 64

    def run(override):
        inventory = Inventory(([_fake("host", ollama_sha256=pinned)], {}), override_data=override)
        state = State(inventory=inventory, config=Config())
        connect_all(state)
        add_deploy(state, deploy.install_ollama)
        run_ops(state)
        (host,) = inventory
        return "\n".join(host.connector.executed_commands)

    caplog.set_level("INFO")
    overridden = run({"ollama_version": "0.20.3"})
    logged = caplog.text
    assert "ollama_sha256 is ignored: --data ollama_version=0.20.3 came without a sum" in logged
    assert "sha256 from the release's own sha256sum.txt (https://github.com/ollama/" in logged
    assert "v0.20.3/ollama-linux-amd64.tar.zst" in overridden
    assert "v0.20.3/sha256sum.txt" in overridden
    assert pinned not in overridden
    assert "newer than the newest version" not in caplog.text
    caplog.clear()
    run({"ollama_version": "0.40.0"})
    assert "Ollama 0.40.0 is newer than the newest version this toolkit was checked" in caplog.text
    caplog.clear()
    both = run({"ollama_version": "0.20.3", "ollama_sha256": "d" * 64})
    assert "d" * 64 in both and "sha256sum.txt" not in both
    assert "sha256 from ollama_sha256" in caplog.text
    assert pinned in run({})
