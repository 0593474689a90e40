"""The verification suite run for real against ``local://`` (this machine, which has no GPU),
with the test doubles where the GPU, the driver and the Ollama binary would be: the
nvidia-smi double on PATH, and the Ollama double serving on a loopback port from a real
on-disk model store."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.verify import VerifyReport, VerifyTarget, run_verify
from tests.doubles.nvidia_smi import RTX_4090, install_nvidia_smi_double
from tests.doubles.ollama import release
from tests.doubles.ollama.registry import build_model

OLLAMA_VERSION = "0.32.15"
GPU_LAYERS = ("driver", "cuda")


def _checks(report: VerifyReport, host: str = "@local") -> dict[str, dict]:
    return {f"{c.layer}/{c.check}": c for c in report.checks_of(host)}


def _no_errors(report: VerifyReport) -> None:
    errors = [f"{r.layer}/{r.check}: {r.message}" for r in report.results if r.status == "error"]
    assert errors == [], "\n".join(errors) + "\n" + report.output[-3000:]


# -- doubles -------------------------------------------------------------------------------------


@pytest.fixture
def smi(tmp_path: Path) -> Iterator:
    """Install the nvidia-smi double (one RTX 4090) and return the env that puts it on PATH."""
    bin_dir, conf = tmp_path / "bin", tmp_path / "smi"

    def install(**kwargs) -> dict[str, str]:
        kwargs.setdefault("gpus", [RTX_4090])
        install_nvidia_smi_double(bin_dir, conf, **kwargs)
        return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "NVIDIA_SMI_DOUBLE_DIR": str(conf)}

    yield install


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OllamaDouble:
    port: int
    store: Path
    bin_dir: Path
    digests: dict[str, str]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delete(self, tag: str) -> None:
        request = urllib.request.Request(
            self.url("/api/delete"), data=json.dumps({"model": tag}).encode(), method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


MODELS = {"verify-small:tiny": 64 * 1024, "verify-big:tiny": 256 * 1024}


def _place(store: Path, tag: str, size: int) -> str:
    """Put a stand-in model into an Ollama store as `ollama pull` leaves it; return its digest."""
    model = build_model(tag, size=size, family="llama")
    name, _, label = tag.partition(":")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / name / label
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(model.manifest)
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    for digest, data in model.blobs.items():
        (store / "blobs" / digest.replace(":", "-")).write_bytes(data)
    return model.digest


@pytest.fixture
def ollama(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Start the Ollama double on a loopback port; ``env`` decides whether it sees GPUs."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str] | None = None, address: str = "127.0.0.1") -> OllamaDouble:
        store = tmp_path / "models"
        digests = {tag: _place(store, tag, size) for tag, size in MODELS.items()}
        bin_dir = tmp_path / "ollama-bin"
        release.install_program(bin_dir / "ollama", OLLAMA_VERSION)
        port = _free_port()
        server_env = {
            **os.environ,
            **(env or {}),
            "OLLAMA_HOST": f"{address}:{port}",
            "OLLAMA_MODELS": str(store),
            "OLLAMA_CONTEXT_LENGTH": "2048",
        }
        proc = subprocess.Popen(
            [sys.executable, str(bin_dir / "ollama"), "serve"],
            env=server_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        double = OllamaDouble(port, store, bin_dir, digests)
        for _ in range(100):
            try:
                with urllib.request.urlopen(double.url("/api/version"), timeout=1):
                    return double
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Ollama double did not start")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def _ollama_data(double: OllamaDouble, **extra) -> dict:
    return {
        "ollama_port": double.port,
        "ollama_version": OLLAMA_VERSION,
        "ollama_models_dir": str(double.store),
        **extra,
    }


def _plan(**digests: str) -> dict:
    return {
        "models": [
            {"tag": tag, "estimated_vram_mib": 1, "digest": digests.get(tag)} for tag in MODELS
        ]
    }


# -- no GPU --------------------------------------------------------------------------------------


def test_no_gpu_skips_gpu_checks_with_the_reason_and_never_errors() -> None:
    report = run_verify([VerifyTarget("@local")], workers=1)
    _no_errors(report)
    checks = _checks(report)
    gpu_checks = [c for c in checks.values() if c.layer in GPU_LAYERS]
    assert gpu_checks, report.output
    for check in gpu_checks:
        assert check.status == "skip", check
        assert check.message.startswith("no NVIDIA GPU found"), check
    assert checks["host/reachable"].status == "pass"
    # no Ollama on this machine: the Ollama layer fails, naming what it saw
    assert checks["ollama/api_answers"].status == "fail"
    assert (
        "@local: GET http://127.0.0.1:11434/api/version: expected HTTP 200"
        in checks["ollama/api_answers"].message
    )
    assert report.layer_status("@local", "driver") == "skip"
    assert report.exit_code == 1


def test_cpu_only_host_names_gpu_false_and_checks_torch_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    data = {"gpu": False, "gpu_count": 2, "cuda_toolkit_version": "12.8", "pytorch_venv": str(venv)}
    report = run_verify([VerifyTarget("@local", data=data)], workers=1)
    _no_errors(report)
    checks = _checks(report)
    for name in (
        "driver/nvidia_smi_answers",
        "driver/gpu_count",
        "cuda/nvcc_version",
        "pytorch/cuda_available",
    ):
        assert (
            checks[name].status == "skip" and checks[name].message == "cpu-only host (gpu: false)"
        )
    # still checked on a CPU host: a venv without torch fails, naming the import error
    compute = checks["pytorch/compute"]
    assert compute.status == "fail"
    assert (
        compute.message == f"@local: torch in {venv}: expected importable, "
        "got ModuleNotFoundError: No module named 'torch'"
    )


# -- driver --------------------------------------------------------------------------------------


def test_driver_mismatch_fails_the_driver_layer_naming_the_mismatch(smi) -> None:
    env = smi(state="driver-mismatch")
    report = run_verify([VerifyTarget("@local", data={"gpu_count": 1})], workers=1, env=env)
    _no_errors(report)
    checks = _checks(report)
    answers = checks["driver/nvidia_smi_answers"]
    assert answers.status == "fail"
    assert "Driver/library version mismatch" in answers.message
    assert answers.message.startswith("@local: nvidia-smi: expected state ok, got driver-mismatch")
    module = checks["driver/module_matches_userspace"]
    assert (
        module.status == "fail"
        # judged as apply judges it (gpu_stack.module_problem): this machine has no driver
        # package, and nvidia-smi's library version is named
        and "no NVIDIA driver package is installed" in module.message
        and "NVML library 580.105" in module.message
    )
    assert checks["driver/gpu_count"].status == "fail"
    assert report.layer_status("@local", "driver") == "fail"
    assert report.host_status("@local") == "fail"
    assert "FAIL @local driver/nvidia_smi_answers" in report.failures()


def test_working_driver_checks_gpus_persistence_and_packages(smi, tmp_path: Path) -> None:
    env = smi(persistence_file=tmp_path / "persistenced-not-running")
    data = {"gpu_count": 2, "gpu_memory_mib": RTX_4090["memory_total_mib"]}
    report = run_verify([VerifyTarget("@local", data=data)], workers=1, env=env)
    _no_errors(report)
    checks = _checks(report)
    assert checks["driver/nvidia_smi_answers"].status == "pass"
    assert checks["driver/gpu_memory"].status == "pass"
    assert (
        checks["driver/gpu_count"].message
        == "@local: GPU count: expected 2, got 1 (0: NVIDIA GeForce RTX 4090)"
    )
    persistence = checks["driver/persistence_mode"]
    assert persistence.status == "fail" and "GPU 0 Disabled" in persistence.message
    # this machine has no NVIDIA driver package: the running driver is not an installed one
    packages = checks["driver/module_matches_userspace"]
    assert packages.status == "fail"
    assert "no NVIDIA driver package is installed" in packages.message
    assert checks["driver/fabric_manager"].message.startswith("no NVSwitch")


# -- Ollama --------------------------------------------------------------------------------------


def test_ollama_double_passes_api_and_model_checks_on_cpu(ollama) -> None:
    double = ollama(env={"CUDA_VISIBLE_DEVICES": "-1"})
    plan = _plan(**{"verify-small:tiny": double.digests["verify-small:tiny"]})
    data = _ollama_data(double, gpu=False)
    env = {"PATH": f"{double.bin_dir}:{os.environ['PATH']}"}
    report = run_verify([VerifyTarget("@local", data=data, plan=plan)], workers=1, env=env)
    _no_errors(report)
    checks = _checks(report)
    for name in (
        "ollama/binary_version",
        "ollama/api_answers",
        "ollama/listen_address",
        "ollama/models_present",
        "ollama/generate",
        "ollama/model_on_gpu",
        "host/models_dir_free_space",
    ):
        assert checks[name].status == "pass", (checks[name], report.output[-2000:])
    assert (
        "verify-small:tiny on CPU (cpu-only host (gpu: false))"
        in checks["ollama/model_on_gpu"].message
    )
    assert checks["ollama/proxy_requires_auth"].status == "skip"
    # no systemd here, and the store belongs to root, not to the ollama user
    assert checks["ollama/service"].status == "fail"
    assert checks["ollama/service"].message.startswith(
        "@local: ollama.service: expected enabled, active, got "
    )
    assert "expected ollama, got root" in checks["host/models_dir_owner"].message


def test_deleted_model_and_wrong_digest_fail_naming_the_tag(ollama) -> None:
    double = ollama(env={"CUDA_VISIBLE_DEVICES": "-1"})
    plan = _plan(**{"verify-small:tiny": "sha256:" + "0" * 64})
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(double, gpu=False), plan=plan)], workers=1
    )
    present = _checks(report)["ollama/models_present"]
    assert present.status == "fail"
    assert "verify-small:tiny" in present.message and "000000000000" in present.message

    double.delete("verify-big:tiny")
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(double, gpu=False), plan=_plan())], workers=1
    )
    present = _checks(report)["ollama/models_present"]
    assert present.status == "fail"
    assert present.message.startswith(
        "@local: planned models in /api/tags: expected verify-big:tiny, got missing"
    )
    assert "present: verify-small:tiny" in present.message


def test_a_pinned_model_in_other_case_is_checked_once(ollama) -> None:
    """``models_pinned`` spelled in another case (or with the default namespace) is the
    planned model itself: one expected model, found in /api/tags (issue 17)."""
    double = ollama(env={"CUDA_VISIBLE_DEVICES": "-1"})
    data = _ollama_data(
        double, gpu=False, models_pinned=["Verify-Small:TINY", "library/verify-big:tiny"]
    )
    report = run_verify([VerifyTarget("@local", data=data, plan=_plan())], workers=1)
    present = _checks(report)["ollama/models_present"]
    assert present.status == "pass", present.message
    assert present.message == "@local: verify-small:tiny, verify-big:tiny"


def test_model_on_gpu_and_cpu_fallback(ollama, smi) -> None:
    env = smi()
    double = ollama(env=env)  # the double finds the GPU through nvidia-smi, as Ollama does
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(double), plan=_plan())], workers=1, env=env
    )
    on_gpu = _checks(report)["ollama/model_on_gpu"]
    assert on_gpu.status == "pass" and "fully on GPU" in on_gpu.message

    cpu_double = ollama(env={**env, "CUDA_VISIBLE_DEVICES": "-1"})  # the GPU is not usable
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(cpu_double), plan=_plan())], workers=1, env=env
    )
    fallback = _checks(report)["ollama/model_on_gpu"]
    assert fallback.status == "fail"
    assert "size_vram 0 of" in fallback.message and "on CPU only" in fallback.message


def test_listening_on_all_addresses_fails_unless_exposed(ollama) -> None:
    double = ollama(env={"CUDA_VISIBLE_DEVICES": "-1"}, address="0.0.0.0")
    data = _ollama_data(double, gpu=False, ollama_listen_address="0.0.0.0")
    report = run_verify([VerifyTarget("@local", data=data)], workers=1)
    listen = _checks(report)["ollama/listen_address"]
    assert listen.status == "fail"
    assert listen.message.startswith(
        f"@local: listeners on port {double.port}: "
        "expected loopback only (ollama_expose: loopback), "
        f"got 0.0.0.0:{double.port}"
    )
    data["ollama_expose"] = "allowlist"
    report = run_verify([VerifyTarget("@local", data=data)], workers=1)
    checks = _checks(report)
    assert checks["ollama/listen_address"].status == "pass"
    assert checks["ollama/api_answers"].status == "pass"  # reached on 127.0.0.1


# -- the run as a whole ----------------------------------------------------------------------------


def test_two_hosts_in_parallel_with_json_junit_and_unreachable_host(tmp_path: Path) -> None:
    junit = tmp_path / "verify.xml"
    dead = VerifyTarget(
        "dead-1",
        connection={
            "ssh_hostname": "127.0.0.1",
            "ssh_port": _free_port(),
            "ssh_user": "nobody",
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
        },
    )
    report = run_verify([VerifyTarget("@local", data={"gpu": False}), dead], workers=2, junit=junit)
    _no_errors(report)
    assert report.hosts == ["@local", "dead-1"]
    reachable = _checks(report, "dead-1")["host/reachable"]
    assert reachable.status == "fail" and "Connection refused" in reachable.message
    others = [c for c in report.checks_of("dead-1") if c.check != "reachable"]
    assert others and all(
        c.status == "skip" and c.message.startswith("host unreachable") for c in others
    )
    assert report.exit_code == 1

    document = report.to_json()
    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    for host in report.hosts:
        assert len(suites[host].findall("testcase")) == len(document["hosts"][host]["checks"])
        assert int(suites[host].get("failures")) == sum(
            c["status"] == "fail" for c in document["hosts"][host]["checks"]
        )
    assert document["summary"]["failed_hosts"] == ["@local", "dead-1"]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict]:
    """A private sshd on a loopback port (key auth only), and the pyinfra connection data
    that reaches it."""
    binary = Path("/usr/sbin/sshd")
    if os.geteuid() != 0 or not binary.exists() or not shutil.which("ssh-keygen"):
        pytest.skip("needs root, sshd and ssh-keygen")
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("hostkey", "userkey"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True
        )
    (d / "authorized_keys").write_text((d / "userkey.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [str(binary), "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": port,
            "ssh_user": "root",
            "ssh_key": str(d / "userkey"),
            "ssh_known_hosts_file": str(d / "known_hosts"),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ssh_host_through_the_derived_ssh_config(sshd: dict) -> None:
    report = run_verify([VerifyTarget("lab-1", connection=sshd, data={"gpu": False})], workers=1)
    _no_errors(report)
    checks = _checks(report, "lab-1")
    assert checks["host/reachable"].status == "pass", report.output[-2000:]
    assert checks["driver/nvidia_smi_answers"].message == "cpu-only host (gpu: false)"
    assert checks["ollama/api_answers"].message.startswith("lab-1: GET http://127.0.0.1:11434/")
    # pyinfra's default host-key policy, accept-new, recorded the key in the given file
    assert "[127.0.0.1]:" in Path(sshd["ssh_known_hosts_file"]).read_text()


def test_suite_runs_directly_with_pytest_pyargs(tmp_path: Path) -> None:
    """The documented direct use (with the pytest11 entry point installed, ``-p`` may go)."""
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"hosts": {"local://": {"name": "box", "data": {"gpu": False}}}}))
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "provisioner.verify.plugin",
            "--pyargs",
            "provisioner.verify",
            "--hosts=local://",
            f"--provisioner-expect={expect}",
            f"--provisioner-results={results}",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cpu-only host (gpu: false)" in proc.stdout
    records = json.loads(results.read_text())["results"]
    assert {r["host"] for r in records} == {"box"}
    assert {r["layer"] for r in records} == {"driver", "cuda", "pytorch", "ollama", "host"}


def test_resident_models_are_found_loaded_together(ollama, smi) -> None:
    env = smi()
    plan = {**_plan(), "resident": {"models": list(MODELS)}}
    double = ollama(env=env)
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(double), plan=plan)], workers=1, env=env
    )
    together = _checks(report)["ollama/resident_models_loaded_together"]
    assert together.status == "pass", together.message
    assert "verify-small:tiny, verify-big:tiny loaded together" in together.message

    # an Ollama that keeps one model loaded evicts the first resident model for the second
    one = ollama(env={**env, "OLLAMA_MAX_LOADED_MODELS": "1"})
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(one), plan=plan)], workers=1, env=env
    )
    evicted = _checks(report)["ollama/resident_models_loaded_together"]
    assert evicted.status == "fail"
    assert "verify-small:tiny not loaded" in evicted.message
    assert "OLLAMA_MAX_LOADED_MODELS" in evicted.message

    # no resident set: skipped with the reason
    report = run_verify(
        [VerifyTarget("@local", data=_ollama_data(double), plan=_plan())], workers=1, env=env
    )
    skipped = _checks(report)["ollama/resident_models_loaded_together"]
    assert skipped.status == "skip" and "models_resident" in skipped.message


def _generate(double: OllamaDouble, body: dict) -> None:
    request = urllib.request.Request(
        double.url("/api/generate"), data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_a_loaded_context_above_the_plan_fails_naming_host_and_model(ollama) -> None:
    """OLLAMA_CONTEXT_LENGTH is a default: a client's options.num_ctx loads the model with a
    larger context, which /api/ps reports and verify compares with the plan."""
    double = ollama(env={"CUDA_VISIBLE_DEVICES": "-1"})
    data = _ollama_data(double, gpu=False, ollama_context_length=2048)
    _generate(double, {"model": "verify-big:tiny", "prompt": "", "keep_alive": "5m"})
    report = run_verify([VerifyTarget("@local", data=data, plan=_plan())], workers=1)
    within = _checks(report)["ollama/loaded_context_within_plan"]
    assert within.status == "pass", within.message
    assert "verify-big:tiny 2048" in within.message

    _generate(
        double,
        {
            "model": "verify-big:tiny",
            "prompt": "",
            "keep_alive": "5m",
            "options": {"num_ctx": 8192},
        },
    )
    report = run_verify([VerifyTarget("@local", data=data, plan=_plan())], workers=1)
    over = _checks(report)["ollama/loaded_context_within_plan"]
    assert over.status == "fail"
    assert over.message.startswith("@local: loaded contexts")
    assert "verify-big:tiny: context 8192 > planned 2048" in over.message

    # a plan that sized the model with its own context (h6: plan model["context"]) accepts it
    plan = _plan()
    plan["models"][1]["context"] = 8192
    report = run_verify([VerifyTarget("@local", data=data, plan=plan)], workers=1)
    assert _checks(report)["ollama/loaded_context_within_plan"].status == "pass"
