"""Bad input never touches a host: exit 2, one clear message naming file, host and key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

PROVISION = [sys.executable, "-m", "provisioner.cli"]


class ConnectionRecorder:
    """A TCP listener on loopback that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def recorder():
    rec = ConnectionRecorder()
    yield rec
    rec.close()


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(PROVISION + args, cwd=cwd, capture_output=True, text=True, timeout=120)


def write_inventory(tmp_path: Path, port: int, host_data: str = "{}", extra: str = "") -> Path:
    inv = tmp_path / "inventories" / "site.py"
    inv.parent.mkdir(parents=True, exist_ok=True)
    inv.write_text(
        textwrap.dedent(
            f"""
            gpu_servers = [
                ("good-1", {{"ssh_hostname": "127.0.0.1", "ssh_port": {port}}}),
                ("bad-1", dict({{"ssh_hostname": "127.0.0.1", "ssh_port": {port}}}, **{host_data})),
            ]
            """
        )
        + extra
    )
    return inv


@pytest.mark.parametrize("command", ["facts", "plan", "apply", "verify"])
@pytest.mark.parametrize(
    ("host_data", "key", "needle"),
    [
        ('{"gpu_memry_mib": 24564}', "gpu_memry_mib", "unknown data key"),
        ('{"ollama_num_parallel": "four"}', "ollama_num_parallel", "expected int"),
        ('{"model_profile": "gaming"}', "model_profile", "'gaming' is not one of"),
        (
            '{"models": ["Not A Model!!"]}',
            "models",
            "neither in the model catalog nor a valid Ollama",
        ),
        ('{"models": "llama3.1:8b"}', "models", "expected list"),
        ('{"vram_headroom": 7}', "vram_headroom", "above the maximum"),
        # issue 18 item 7: paths and names that reach the host's file system
        ('{"ollama_models_dir": "/srv/../etc"}', "ollama_models_dir", "'..' is not allowed"),
        ('{"ollama_models_dir": "models"}', "ollama_models_dir", "not an absolute path"),
        ('{"pytorch_venv": "torch-venv"}', "pytorch_venv", "not an absolute path"),
        ('{"pytorch_venv": "/opt/x/../../etc"}', "pytorch_venv", "'..' is not allowed"),
        (
            '{"ollama_registry_namespace": "../../x"}',
            "ollama_registry_namespace",
            "is not a namespace",
        ),
        ('{"ollama_registry_namespace": "a/b"}', "ollama_registry_namespace", "no '/'"),
    ],
)
def test_bad_host_data_exits_2_naming_file_host_key(
    tmp_path, recorder, command, host_data, key, needle
):
    inv = write_inventory(tmp_path, recorder.port, host_data)
    result = run([command, str(inv)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{inv}: host bad-1: key {key}: " in result.stderr
    assert needle in result.stderr
    assert "good-1" not in result.stderr
    assert recorder.accepted == 0


def test_group_data_problem_names_the_group_data_file(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port)
    group_data = tmp_path / "inventories" / "group_data" / "gpu_servers.py"
    group_data.parent.mkdir()
    group_data.write_text("ollama_kv_cache_type = 'q2'\n")
    result = run(["plan", str(inv)], tmp_path)
    assert result.returncode == 2
    assert (
        f"{group_data}: host good-1: key ollama_kv_cache_type: 'q2' is not one of" in result.stderr
    )
    assert f"{group_data}: host bad-1: key ollama_kv_cache_type" in result.stderr
    assert recorder.accepted == 0


def test_python_error_in_inventory(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port, extra="\nboom = 1 / 0\n")
    result = run(["facts", str(inv)], tmp_path)
    assert result.returncode == 2
    assert str(inv) in result.stderr and "ZeroDivisionError" in result.stderr
    assert recorder.accepted == 0


def test_syntax_error_in_inventory(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port, extra="\ndef broken(:\n")
    result = run(["plan", str(inv)], tmp_path)
    assert result.returncode == 2
    assert str(inv) in result.stderr and "syntax error" in result.stderr
    assert recorder.accepted == 0


def test_missing_inventory_file(tmp_path):
    result = run(["plan", "inventories/nope.py"], tmp_path)
    assert result.returncode == 2
    assert "inventories/nope.py: inventory file not found" in result.stderr


def test_limit_matching_nothing(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port)
    result = run(["facts", str(inv), "--limit", "nosuchhost"], tmp_path)
    assert result.returncode == 2
    assert "--limit nosuchhost matches no host" in result.stderr
    assert recorder.accepted == 0


def test_catalog_extra_entry_is_validated(tmp_path, recorder):
    inv = write_inventory(
        tmp_path, recorder.port, '{"model_catalog_extra": [{"tag": "mine:1b", "size_bytes": -5}]}'
    )
    result = run(["plan", str(inv)], tmp_path)
    assert result.returncode == 2
    assert f"{inv}: host bad-1: key model_catalog_extra:" in result.stderr
    assert recorder.accepted == 0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("NVIDIA A100:-81920", "--what-if 'NVIDIA A100:-81920'"),
        ("NVIDIA A100:0", "--what-if 'NVIDIA A100:0'"),
        ("NVIDIA A100:99999999999", "--what-if 'NVIDIA A100:99999999999'"),
        ("0x NVIDIA A100:81920", "--what-if '0x NVIDIA A100:81920'"),
        ("NVIDIA A100", "--what-if 'NVIDIA A100'"),
    ],
)
def test_bad_what_if(tmp_path, spec, needle):
    result = run(["plan", "--what-if", spec], tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr


def test_what_if_unknown_profile(tmp_path):
    result = run(["plan", "--what-if", "NVIDIA L4:23034", "--profile", "gaming"], tmp_path)
    assert result.returncode == 2
    assert "--profile" in result.stderr and "gaming" in result.stderr


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("ollama_contxt_length=8192", "--data ollama_contxt_length: unknown data key"),
        ("ollama_num_parallel=four", "--data ollama_num_parallel: expected int"),
        ("ollama_kv_cache_type=q2", "--data ollama_kv_cache_type: 'q2' is not one of"),
        ('models=["Not A Model!!"]', "--data models: 'Not A Model!!' is neither"),
        ("ollama_context_length", "--data 'ollama_context_length': expected KEY=VALUE"),
    ],
)
def test_what_if_bad_data_exits_2_naming_the_key(tmp_path, item, needle):
    result = run(["plan", "--what-if", "NVIDIA L4:23034", "--data", item], tmp_path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert result.stdout == ""


def test_plan_data_needs_what_if(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port)
    result = run(["plan", str(inv), "--data", "ollama_context_length=4096"], tmp_path)
    assert result.returncode == 2
    assert "--data applies to --what-if" in result.stderr
    assert recorder.accepted == 0


# --- provision lock (docs/lock.md) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model"], "COMPONENTs are only given with --upgrade"),
        (["--upgrade", "drivers"], "--upgrade 'drivers': not a component"),
    ],
)
def test_lock_options_are_checked_before_any_host(tmp_path, recorder, args, needle):
    inv = write_inventory(tmp_path, recorder.port)
    result = run(["lock", str(inv), *args], tmp_path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert recorder.accepted == 0
    assert not inv.with_name("site.lock.toml").exists()


def test_lock_of_a_host_string_has_no_file_to_go_next_to(tmp_path):
    result = run(["lock", "@local"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "a lock is written next to an inventory file" in result.stderr


@pytest.mark.parametrize("command", [["apply"], ["models", "sync"], ["models", "update"]])
def test_a_malformed_lock_exits_2_naming_file_and_key(tmp_path, recorder, command):
    inv = write_inventory(tmp_path, recorder.port)
    lock = inv.with_name("site.lock.toml")
    lock.write_text(
        'lock_version = 1\n\n[[model]]\nname = "llama3.2:3b"\nversion = "3b"\n'
        'digest = "md5:abc"\nsource = "http://r/v2/library/llama3.2/manifests/3b"\nhosts = []\n'
    )
    result = run([*command, str(inv)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{lock}: model[0]: key 'digest'" in result.stderr
    assert recorder.accepted == 0


def test_without_a_lock_apply_says_once_that_the_fleet_is_not_locked(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port)
    result = run(["apply", str(inv), "--json"], tmp_path)
    assert result.stderr.count("the fleet is not locked") == 1, result.stderr
    assert "not locked" not in result.stdout


def test_bundle_export_without_a_lock_and_import_of_no_file_exit_2(tmp_path, recorder):
    inv = write_inventory(tmp_path, recorder.port)
    result = run(["bundle", "export", str(inv), "-o", str(tmp_path / "b.tar")], tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{inv}: no lock next to it" in result.stderr
    assert not (tmp_path / "b.tar").exists()
    result = run(["bundle", "import", str(tmp_path / "none.tar"), "--to", str(tmp_path)], tmp_path)
    assert result.returncode == 2 and "no such bundle" in result.stderr
    assert recorder.accepted == 0


def test_bundle_import_with_an_unknown_signing_key_exits_2_and_writes_nothing(tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    bundle_file = tmp_path / "b.tar"
    bundle_file.write_bytes(b"not read: the key is checked first")
    args = ["bundle", "import", str(bundle_file), "--to", str(tmp_path / "site")]
    result = subprocess.run(
        [*PROVISION, *args, "--sign-key", "nobody@site.invalid"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GNUPGHOME": str(home)},
    )
    assert result.returncode == 2, result.stderr
    assert "--sign-key nobody@site.invalid" in result.stderr
    assert not (tmp_path / "site").exists()
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
