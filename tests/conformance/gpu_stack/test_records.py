"""The GPU stack's test doubles against every conformance record (records.toml).

``records.toml`` lists each fact about a real system (Debian's dkms, apt, /bin/sh, pip) that the
lab's stand-in NVIDIA packages or GpuHostDouble copy, with its source. Every record has exactly
one check here, named by its id; a record without a check, or a check without a record, fails.
The stand-in packages are built from tests/lab/debs/packages.toml exactly as the lab builds
them (dpkg-deb) and their scripts run against a temporary root (their absolute paths moved
under it), so no lab is needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner import bounds, fact_cache, lock, next_boot, nvidia_smi
from provisioner.lock import Item, Lock

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RECORDS = tomllib.loads((HERE / "records.toml").read_text(encoding="utf-8"))
KERNEL = "6.1.0-28-amd64"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


double = _load("conformance_gpu_host_double", ROOT / "tests/unit/test_gpu_stack_double.py")


def _record(record_id: str) -> dict[str, Any]:
    (record,) = [r for r in RECORDS["record"] if r["id"] == record_id]
    return record


# --- the stand-in packages, built as the lab builds them, unpacked under a temporary root ------


def _standin(name: str, tmp: Path) -> Path:
    """The stand-in package ``name`` (packages.toml's name) built with the lab's builder for
    its first variant and unpacked under ``tmp``/root; returns the root."""
    from tests.lab import packages

    nvidia = tomllib.loads((ROOT / "tests/lab/fleet.toml").read_text())["mirror"]["nvidia"]
    spec = tomllib.loads((packages.DEBS / "packages.toml").read_text())
    (package,) = [p for p in spec["package"] if p["name"] == name]
    values = packages.variants(package, nvidia, {"debian12": "http://lab.invalid"})[0]
    deb = packages.build_deb(package, values, tmp / "debs", {})
    root = tmp / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    control = tmp / "control" / name
    control.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    return root


def _rooted(script: str, root: Path) -> str:
    """``script`` with the absolute paths the stand-ins use moved under ``root``."""
    for path in ("/lib/modules", "/usr/lib/nvidia-double", "/boot"):
        script = script.replace(path, f"{root}{path}")
    return script


def _dkms_autoinstall(root: Path, *args: str) -> subprocess.CompletedProcess:
    script = (root / "usr/lib/nvidia-double/dkms-autoinstall").read_text()
    return subprocess.run(
        ["sh", "-c", _rooted(script, root), "dkms-autoinstall", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _kernel(root: Path, kernel: str, headers: bool, modules_dep: str | None = None) -> None:
    """A kernel as its packages leave it: /lib/modules/K, headers (build/include), modules.dep."""
    base = root / "lib/modules" / kernel
    base.mkdir(parents=True, exist_ok=True)
    if headers:
        (base / "build/include").mkdir(parents=True, exist_ok=True)
    if modules_dep is not None:
        (base / "modules.dep").write_text(modules_dep)


def _next_boot(root: Path, kernel: str) -> dict[str, Any]:
    """The product's NextBootModule fact script run against ``root`` for ``kernel``."""
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot" / f"vmlinuz-{kernel}").touch()
    out = subprocess.run(
        ["sh", "-c", _rooted(next_boot.FACT_SCRIPT, root)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": "/usr/bin:/bin"},  # no modinfo: kmod is not asked
    )
    return next_boot.parse_fact_output(out.stdout.splitlines())


# --- checks, one per record id -----------------------------------------------------------------

CHECKS: dict[str, Callable[[dict[str, Any], Path], None]] = {}


def check(record_id: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        CHECKS[record_id] = fn
        return fn

    return register


@check("dkms.module_dir")
def _module_dir(record: dict[str, Any], tmp: Path) -> None:
    root = _standin("nvidia-kernel-open-dkms", tmp)
    _kernel(root, KERNEL, headers=True)
    run = _dkms_autoinstall(root, "-k", KERNEL)
    assert run.returncode == 0, run.stderr
    expect = record["expect"]
    built = sorted((root / "lib/modules" / KERNEL).rglob(f"{expect['name']}.ko*"))
    rel = [p.relative_to(root / "lib/modules" / KERNEL).parent.as_posix() for p in built]
    assert rel == [expect["dir"]], built
    # the product finds the module where dkms puts it
    fact = _next_boot(root, KERNEL)
    assert [m["path"] for m in fact["modules"]] == [str(built[0])], fact


@check("dkms.compressed_suffix")
def _compressed_suffix(record: dict[str, Any], tmp: Path) -> None:
    root = _standin("nvidia-kernel-dkms", tmp)
    deps = {
        "none": None,
        "gz": "kernel/fs/a.ko.gz:\n",
        "xz": "kernel/fs/a.ko.xz: kernel/fs/b.ko.xz\n",
        "zst": "kernel/fs/a.ko.zst:\n",
    }
    for kind, dep in deps.items():
        kernel = f"6.1.0-{kind}-amd64"
        _kernel(root, kernel, headers=True, modules_dep=dep)
        assert _dkms_autoinstall(root, "-k", kernel).returncode == 0
        names = [p.name for p in (root / "lib/modules" / kernel / "updates/dkms").iterdir()]
        assert names == [record["expect"][kind]], (kind, names)
        found = _next_boot(root, kernel)["modules"]
        assert [Path(m["path"]).name for m in found] == names, (kind, found)
        (root / "boot" / f"vmlinuz-{kernel}").unlink()


@check("dkms.headers_check")
def _headers_check(record: dict[str, Any], tmp: Path) -> None:
    root = _standin("nvidia-kernel-open-dkms", tmp)
    # a build link without include/ is not headers to dkms
    (root / "lib/modules" / KERNEL / "build").mkdir(parents=True)
    assert _dkms_autoinstall(root, "-k", KERNEL).returncode == 0
    assert not list((root / "lib/modules" / KERNEL).rglob("nvidia.ko*"))
    (root / "lib/modules" / KERNEL / record["expect"]["marker"]).mkdir()
    assert _dkms_autoinstall(root, "-k", KERNEL).returncode == 0
    assert list((root / "lib/modules" / KERNEL).rglob("nvidia.ko*"))
    # the stand-in headers package provides exactly what dkms looks for
    headers = _standin("linux-headers-@KERNEL@", tmp / "headers")
    (kernel_dir,) = (headers / "lib/modules").iterdir()
    build = kernel_dir / "build"
    assert build.is_symlink()
    target = headers / os.readlink(build).lstrip("/")
    assert (target / "include").is_dir(), target
    postinst = (tmp / "control/nvidia-kernel-open-dkms/postinst").read_text()
    assert '"/lib/modules/$kver/build/include"' in postinst


@check("dkms.postinst_skip_message")
def _postinst_skip_message(record: dict[str, Any], tmp: Path) -> None:
    root = _standin("nvidia-kernel-open-dkms", tmp)
    _kernel(root, KERNEL, headers=False)
    run = _dkms_autoinstall(root, "-k", KERNEL)
    assert run.returncode == 0
    want = [line.format(kernel=KERNEL) for line in record["expect"]["lines"]]
    assert run.stdout.splitlines() == want, run.stdout
    assert not list((root / "lib/modules" / KERNEL).rglob("nvidia.ko*"))


@check("dkms.postinst_kernels")
def _postinst_kernels(record: dict[str, Any], tmp: Path) -> None:
    _standin("nvidia-kernel-open-dkms", tmp)
    postinst = (tmp / "control/nvidia-kernel-open-dkms/postinst").read_text()
    calls = re.findall(
        r"^\s*/usr/lib/nvidia-double/dkms-autoinstall (.*?)(?: \|\|.*)?$", postinst, re.M
    )
    assert calls == [record["expect"]["stand_in_kernels"]], calls  # the recorded difference
    assert str(record["conforms"]).startswith("no: ")


@check("dkms.kernel_hooks")
def _kernel_hooks(record: dict[str, Any], tmp: Path) -> None:
    spec = tomllib.loads((ROOT / "tests/lab/debs/packages.toml").read_text())
    hooks = [
        f["path"] for p in spec["package"] for f in p.get("files", [])
        if f["path"].startswith("/etc/kernel/")
    ]  # fmt: skip
    assert hooks == [] and str(record["conforms"]).startswith("no: ")  # the recorded difference
    # the operator's next step names the build the hook would run
    fact = {"kernel": "6.2.0-1-amd64", "headers": False, "modinfo": True, "modules": []}
    found = next_boot.problem(fact, "580.105.08", "linux-headers-6.2.0-1-amd64")
    assert found is not None
    assert record["expect"]["build"].format(kernel="6.2.0-1-amd64") in " ".join(found)


@check("dkms.autoinstall_without_headers")
def _autoinstall_without_headers(record: dict[str, Any], tmp: Path) -> None:
    root = _standin("nvidia-kernel-dkms", tmp)
    _kernel(root, KERNEL, headers=False)
    run = _dkms_autoinstall(root, "-k", KERNEL)
    assert run.returncode == record["expect"]["stand_in_exit"] != record["expect"]["real_exit"]
    assert "Error!" not in run.stdout + run.stderr  # the recorded difference
    assert str(record["conforms"]).startswith("no: ")


@check("debian.module_name")
def _debian_module_name(record: dict[str, Any], tmp: Path) -> None:
    expect = record["expect"]
    _kernel(tmp, KERNEL, headers=True)
    where = tmp / "lib/modules" / KERNEL / "updates/dkms"
    where.mkdir(parents=True)
    for name in [*expect["found"], *expect["not_found"]]:
        (where / name).write_text("version=535.261.03\n")
    found = sorted(Path(m["path"]).name for m in _next_boot(tmp, KERNEL)["modules"])
    assert found == sorted(expect["found"]), found
    # GpuHostDouble on Debian's own packages answers the fact with Debian's names
    debian = {"proprietary": "nvidia-kernel-dkms", "open": "nvidia-open-kernel-dkms"}
    for flavour, package in debian.items():
        host = double.GpuHostDouble(distro="debian12", gpus=("2684",), archive="debian")
        host.packages[package] = {"version": "535.261.03-1", "held": False}
        host.packages[f"linux-headers-{host.kernel}"] = {"version": "6.1.123-1", "held": False}
        fact = next_boot.parse_fact_output(host.fact_next_boot())
        (module,) = fact["modules"]
        name = Path(module["path"]).name
        assert name.split(".ko")[0] == expect["debian"][flavour], name
        assert next_boot.problem(fact, "535.261.03") is None


def _bounded_apt(parts: list[str], refresh: bool = False) -> list[str]:
    return bounds.with_options(parts, "apt", refresh=refresh)


def _options(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i in range(len(argv) - 1) if argv[i] == "-o")


@check("apt.bound_option_names")
def _apt_option_names(record: dict[str, Any], tmp: Path) -> None:
    names = {n.lower(): n for n in record["expect"]["names"]}  # apt: case-insensitive
    install = _bounded_apt(["apt-get", "install", "-y", "cuda-drivers"])
    refresh = _bounded_apt(["apt-get", "update"], refresh=True)
    given = {**_options(install), **_options(refresh)}
    assert given and {n.lower() for n in given} <= set(names), given
    for name, value in given.items():
        if names[name.lower()] in record["expect"]["integer"]:
            assert re.fullmatch(r"\d+", value), (name, value)
    # the double reads the bounded command as the plain one: exactly these options go
    for argv in (install, refresh):
        plain = [a for i, a in enumerate(argv) if "-o" not in argv[max(i - 1, 0) : i + 1]]
        assert double.unbound(" ".join(argv)) == " ".join(plain), argv


@check("apt.update_error_mode")
def _apt_update_error_mode(record: dict[str, Any], tmp: Path) -> None:
    spec = bounds.bounds()["packages"]["options"]["apt"]
    assert " ".join(spec["update_options"]) == "-o " + record["expect"]["option"]
    refresh = " ".join(_bounded_apt(["apt-get", "update"], refresh=True))
    assert record["expect"]["option"] in refresh
    assert double.unbound(refresh) == "apt-get update"
    # inside the bounded retry loop too
    looped = bounds.retried(refresh, "refresh the package lists")
    assert double.unbound(looped) == "apt-get update"


def _real_probe_lines(parts: list[list[str]], statuses: list[int], nonce: str) -> list[str]:
    """What /bin/sh prints for a probe whose parts print ``parts`` and exit ``statuses``, as
    pyinfra hands it to a fact (read_output_buffers: the final newline ends the last line)."""
    shell_parts = [
        " ".join([*(f"printf '%s\\n' '{line}';" for line in lines), f"exit {status}"])
        for lines, status in zip(parts, statuses, strict=True)
    ]
    command = fact_cache.probe_command(shell_parts, nonce).get_raw_value()
    text = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True).stdout
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


@check("sh.probe_output")
def _probe_output(record: dict[str, Any], tmp: Path) -> None:
    host = double.GpuHostDouble(distro="debian12", gpus=("2684",))
    # parts the double answers: uname -r (a line), a command it fails (nothing, status 1),
    # uname -s (a line)
    asked = ["uname -r", "false-unknown-to-the-double", "uname -s"]
    nonce = "0123456789ab"
    answer = host._probe(fact_cache.probe_command(asked, nonce).get_raw_value())
    expect = record["expect"]
    assert answer == _real_probe_lines(expect["parts"], expect["statuses"], nonce), answer
    # and a part that succeeds without output
    host.kernel = ""
    answer = host._probe(fact_cache.probe_command(["uname -r"], nonce).get_raw_value())
    assert answer == _real_probe_lines([[""]], [0], nonce), answer


def _torch_reference(url: str, sha256: str) -> str:
    """The product's reference to a locked torch wheel (lock.torch_wheel)."""
    index = "https://download.pytorch.org/whl/cu124"
    item = Item(
        "torch",
        {"name": "torch", "version": "2.5.1+cu124", "source": f"{index}/torch/", "url": url,
         "sha256": sha256},
        ["gpu1"],
    )  # fmt: skip
    reference = lock.torch_wheel(Lock([item]), "gpu1", index, "2.5.1+cu124")
    assert reference is not None
    return reference


@check("head.verbose_headers")
def _head_verbose_headers(record: dict[str, Any], tmp: Path) -> None:
    from provisioner.facts.ollama import split_head_output

    names = record["expect"]["names"]
    contents = [b'{"a":1}', b'{\n  "b": 2\n}\n']
    for name, content in zip(names, contents, strict=True):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    (tmp / "empty").write_bytes(b"")
    files = [*names, "empty"]
    real = subprocess.run(
        ["head", "-v", "-c", "1048576", "--", *files], cwd=tmp, capture_output=True, check=True
    ).stdout
    assert split_head_output(real) == list(zip(files, [*contents, b""], strict=True))
    version = subprocess.run(["head", "--version"], capture_output=True, text=True).stdout
    if re.search(r"\b9\.(1[2-9]|[2-9]\d)\b|\b1\d\.\d", version.splitlines()[0]):
        return  # a head that quotes: the run above was the quoted form
    # coreutils 9.12's form of the same files: the name with ':' in single quotes
    quoted = real.replace(f"==> {names[1]} <==".encode(), f"==> '{names[1]}' <==".encode())
    assert quoted != real
    assert split_head_output(quoted) == list(zip(files, [*contents, b""], strict=True))


@check("nvidia_smi.driver_version_field")
def _driver_version_field(record: dict[str, Any], tmp: Path) -> None:
    from tests.doubles.nvidia_smi import install_nvidia_smi_double

    expect = record["expect"]
    assert expect["field"] in nvidia_smi.QUERY_FIELDS
    gpu = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
           "compute_cap": "9.0", "pci_bus_id": "00000000:00:09.0", "mig": "Disabled",
           "uuid": "GPU-00000000-0000-0000-0000-000000000000"}  # fmt: skip
    for release, header in (("r590", "classic"), ("r610", "r610")):
        version = expect[release]
        where = tmp / release
        install_nvidia_smi_double(where / "bin", where / "conf", [gpu], version, header=header)
        env = {**os.environ, "PATH": f"{where / 'bin'}:/usr/bin:/bin"}
        env["NVIDIA_SMI_DOUBLE_DIR"] = str(where / "conf")
        for script, cuda in ((nvidia_smi.fact_script(False), None), (nvidia_smi.FACT_SCRIPT, "")):
            out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
            fact = nvidia_smi.parse_fact_output(out.stdout.splitlines())
            assert fact["driver_version"] == version, (release, out.stdout)
            assert (fact["cuda_version"] is None) == (cuda is None), fact
    host = double.GpuHostDouble(distro="debian12", gpus=("2330",))
    host.packages["nvidia-driver"] = {"version": "535.261.03-1", "held": False}
    host.module = "535.261.03"
    fact = nvidia_smi.parse_fact_output(host.fact_smi(table=False))
    assert fact["state"] == "ok" and fact["driver_version"] == "535.261.03", fact
    assert fact["cuda_version"] is None


@check("lspci.numeric_listing")
def _lspci_numeric_listing(record: dict[str, Any], tmp: Path) -> None:
    from tests.doubles.nvidia_smi import install_lspci_double

    real_lspci = shutil.which("lspci", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if real_lspci is None:
        pytest.skip("pciutils is not installed on this machine")
    real = subprocess.run([real_lspci, "-n", "-D"], capture_output=True, text=True, check=True)
    devices = []  # the double's data: the machine's own functions, as the real lspci lists them
    for line in real.stdout.splitlines():
        slot, cls, ids, *rev = line.split(" ", 3)
        devices.append(f"{slot} {cls.rstrip(':')} {ids} {rev[0][5:-1] if rev else '-'}")
    install_lspci_double(tmp / "bin", tmp / "data", devices)
    env = {**os.environ, "LSPCI_DOUBLE_FILE": str(tmp / "data")}
    vendor = devices[0].split()[2].split(":")[0]
    for args in record["expect"]["args"]:
        args = [a.replace("VENDOR", vendor).replace("UPPER", vendor.upper()) for a in args]
        want = subprocess.run([real_lspci, *args], capture_output=True, text=True, check=True)
        got = subprocess.run(
            ["sh", str(tmp / "bin" / "lspci"), *args], env=env, capture_output=True, text=True
        )
        assert got.stdout == want.stdout, args


@check("pip.direct_reference")
def _direct_reference(record: dict[str, Any], tmp: Path) -> None:
    from pip._internal.models.link import Link
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import parse_wheel_filename

    url = "https://download.pytorch.org/whl/cu124/torch-2.5.1%2Bcu124-cp311-cp311-linux_x86_64.whl"
    sha = hashlib.sha256(b"wheel").hexdigest()
    spec = _torch_reference(url, sha)
    requirement = Requirement(spec)
    assert requirement.name == record["expect"]["name"] and requirement.url == f"{url}#sha256={sha}"
    link = Link(requirement.url)
    assert (link.hash_name, link.hash) == (record["expect"]["hash_name"], sha)
    _, version, _, _ = parse_wheel_filename(link.filename)
    # the double takes the same version from the same reference
    host = double.GpuHostDouble(distro="debian12", gpus=("2684",))
    venv = "/opt/torch-venv"
    host.users.add("torch")
    host.files[f"{venv}/pyvenv.cfg"] = {"content": "version = 3.11.2\n", "sha256": None, "mode": 0}
    pip = [f"{venv}/bin/pip", "install", "--index-url", "https://download.pytorch.org/whl/cu124"]
    host._runuser("torch", [*pip, spec])
    assert host.torch[venv] == str(version) == "2.5.1+cu124"


@check("pip.hash_checked")
def _hash_checked(record: dict[str, Any], tmp: Path) -> None:
    wheel = tmp / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        info = "tinypkg-1.0.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        z.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{info}/RECORD", "")
    right = hashlib.sha256(wheel.read_bytes()).hexdigest()

    def download(sha: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-index", "-q",
             "--disable-pip-version-check", "-d", str(tmp / f"got-{sha[:6]}"),
             f"tinypkg @ {wheel.as_uri()}#sha256={sha}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    assert download(right).returncode == 0
    wrong = download("0" * 64)
    assert wrong.returncode != 0 and record["expect"]["error"] in wrong.stderr, wrong.stderr
    # the double refuses a reference that leaves pip nothing to check
    host = double.GpuHostDouble(distro="debian12", gpus=("2684",))
    host.users.add("torch")
    host.files["/opt/v/pyvenv.cfg"] = {"content": "version = 3.11.2\n", "sha256": None, "mode": 0}
    bare = "torch @ https://download.pytorch.org/whl/cu124/torch-2.5.1%2Bcu124-cp311-cp311-linux_x86_64.whl"
    with pytest.raises(double.DoubleError, match="sha256"):
        host._runuser(
            "torch",
            [
                "/opt/v/bin/pip",
                "install",
                "--index-url",
                "https://download.pytorch.org/whl/cu124",
                bare,
            ],
        )


# --- the tests -----------------------------------------------------------------------------------


def test_every_record_is_complete_and_has_one_check():
    ids = [r["id"] for r in RECORDS["record"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(CHECKS)
    for record in RECORDS["record"]:
        for key in ("fact", "source", "at", "expect", "double", "conforms", "verified", "used_by"):
            assert key in record, (record["id"], key)
        assert record["at"] and set(record["at"]) <= set(RECORDS["sources"]), record["id"]
        assert record["conforms"] is True or str(record["conforms"]).startswith("no: ")
        assert record["verified"].startswith(("verified: ", "unverified: ")), record["id"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (the lab's builder)")
@pytest.mark.parametrize("record_id", sorted(r["id"] for r in RECORDS["record"]))
def test_the_double_follows_the_record(record_id: str, tmp_path: Path) -> None:
    CHECKS[record_id](_record(record_id), tmp_path)


# --- the real dkms, where one is at hand --------------------------------------------------------


def _real_dkms() -> str | None:
    """Debian's dkms script: $PROVISIONER_DKMS (e.g. usr/sbin/dkms of an unpacked
    dkms_3.0.10-8+deb12u1_all.deb), else an installed /usr/sbin/dkms."""
    found = os.environ.get("PROVISIONER_DKMS") or shutil.which("dkms", path="/usr/sbin")
    return found if found and Path(found).is_file() else None


@pytest.mark.skipif(_real_dkms() is None, reason="no dkms here (set PROVISIONER_DKMS)")
@pytest.mark.skipif(shutil.which("bash") is None, reason="dkms is a bash script")
def test_the_real_dkms_does_what_the_records_say(tmp_path: Path) -> None:
    """Debian's dkms itself, on throw-away trees (--dkmstree, --sourcetree, --installtree; a
    fake depmod): a module whose dkms.conf asks for /kernel/drivers/video lands in
    updates/dkms/ under its DEST_MODULE_NAME (dkms.module_dir, debian.module_name), and
    `dkms autoinstall -k K` for a kernel without headers fails with exit 11
    (dkms.autoinstall_without_headers). Nothing outside tmp_path is written."""
    release = Path("/etc/os-release").read_text()
    if not re.search(r"^ID=\"?(debian|ubuntu)\"?$", release, re.M):
        pytest.skip("dkms picks updates/dkms on Debian and Ubuntu only")
    dkms = str(_real_dkms())
    source = tmp_path / "src/fake-1.0"
    source.mkdir(parents=True)
    (source / "Makefile").write_text("all:\n\ttrue\n")
    (source / "dkms.conf").write_text(
        'PACKAGE_NAME="fake"\nPACKAGE_VERSION="1.0"\nAUTOINSTALL=yes\n'
        'MAKE[0]="printf x > nvidia.ko"\nCLEAN="true"\nSTRIP[0]=no\n'
        'BUILT_MODULE_NAME[0]="nvidia"\nDEST_MODULE_NAME[0]="nvidia-current"\n'
        'DEST_MODULE_LOCATION[0]="/kernel/drivers/video"\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "depmod").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "depmod").chmod(0o755)
    headers = tmp_path / "headers"
    (headers / "include").mkdir(parents=True)
    (headers / ".config").touch()
    install = tmp_path / "install"
    trees = ["--dkmstree", str(tmp_path / "var"), "--sourcetree", str(tmp_path / "src")]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", dkms, *args, *trees], capture_output=True, text=True, env=env, timeout=120
        )

    (tmp_path / "var").mkdir()
    assert run("add", "-m", "fake", "-v", "1.0").returncode == 0
    kernel = "9.9.9-provisioner-test"
    (install / kernel).mkdir(parents=True)
    built = run(
        "autoinstall", "-k", kernel, "--installtree", str(install), "--kernelsourcedir",
        str(headers),
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    files = [p.relative_to(install / kernel).as_posix() for p in install.rglob("*.ko*")]
    assert files == [f"{_record('dkms.module_dir')['expect']['dir']}/nvidia-current.ko"]
    # a kernel without headers (the real /lib/modules/K/build is checked: K exists nowhere)
    other = "9.9.8-provisioner-test-noheaders"
    assert not Path(f"/lib/modules/{other}").exists()
    (install / other).mkdir()
    failed = run("autoinstall", "-k", other, "--installtree", str(install))
    assert failed.returncode == _record("dkms.autoinstall_without_headers")["expect"]["real_exit"]
    assert (
        f"Your kernel headers for kernel {other} cannot be found" in failed.stderr + failed.stdout
    )
