"""The bundle round trip on the lab (issue 13): provision the lab fleet from the lab's sources
and lock it (where the sources are reachable), export the bundle, wipe the lab's mirror and
registry, import the bundle into them (the apt ``Release`` signed with a key
of the "site" made here, not the lab's), make the hosts fresh again, and ``apply`` converges and
``verify`` passes with no other source there.

What "no other source" means here: the hosts reach nothing but the service address (their
network namespaces have no other route) and the lab's other hosts. At that address, after the
wipe, the HTTP mirror serves exactly what the import laid out (asserted file by file), the
registry holds exactly the bundle's models (asserted through its catalog), and apt-cacher-ng
is the site's Debian mirror: its log is checked to hold Debian's archive only. Debian's own
packages (``dkms``, ``curl``, ``python3-venv``...) are the one thing the bundle leaves to the
site, as docs/lock.md says. The running kernel's headers are Debian's too, but the lab machine's
kernel is not Debian's: its stand-in headers package (which the lab's CUDA repository serves in
the distribution's place) is installed on the fresh GPU hosts with ``dpkg -i`` before ``apply``.

It wipes the mirrors and remakes its hosts, so it runs only when asked, in a lab of its own:
``LAB_BUNDLE=1`` with a small ``LAB_HOSTS`` (one GPU host, one CPU host), under the lab lock:
``flock /tmp/provisioner-lab.lock env LAB_BUNDLE=1 LAB_HOSTS=gpu3,cpu1 python -m pytest -m lab
tests/lab/test_bundle_lab.py``. The bundle's size and the times are printed and written to
``$LAB_RUN/bundle-times.json``; the mirror and registry content is put back at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.lab.test_e2e import failing_checks, provision

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        os.environ.get("LAB_BUNDLE") != "1",
        reason="bundle round trip: a lab of its own (LAB_BUNDLE=1 LAB_HOSTS=gpu3,cpu1)",
    ),
]

REGISTRY = "http://169.254.100.1:5000"
MEASURED: dict[str, float | int] = {}
# the apt indexes and signatures an import writes next to the .deb files
APT_INDEXES = {"Packages", "Packages.gz", "Release", "InRelease", "Release.gpg"}


def record(name: str, value: float | int, unit: str = "s") -> None:
    MEASURED[name] = round(value, 1) if isinstance(value, float) else value
    print(f"MEASURED {name}: {MEASURED[name]} {unit}")
    out = Path(os.environ.get("LAB_RUN", "/var/tmp/provisioner-lab")) / "bundle-times.json"
    out.write_text(json.dumps(MEASURED, indent=2))


def timed(name: str, *args: str, env: dict[str, str] | None = None):
    started = time.monotonic()
    code, payload, err = provision(*args, env=env)
    record(name, time.monotonic() - started)
    assert code == 0, err
    return payload, err


def site_key(home: Path) -> str:
    """The site's own signing key (a throwaway, in its own GnuPG home); its fingerprint."""
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--quiet", "--homedir", str(home)]
    subprocess.run([*gpg, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                    "bundle site key (TEST ONLY) <site@provisioner.invalid>", "ed25519", "sign",
                    "never"], check=True)  # fmt: skip
    listing = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


class Wiped:
    """The lab's mirror folder and registry storage moved aside and both services restarted
    empty; ``restore()`` puts the lab's own content back."""

    def __init__(self, lab) -> None:
        self.mirrors = lab.mirrors
        self.www, self.storage = lab.mirrors.www, lab.mirrors.run / "registry"
        self.aside = {p: p.with_name(p.name + ".before-bundle") for p in (self.www, self.storage)}
        self.mirrors.stop("http")
        self.mirrors.stop("registry")
        for path, aside in self.aside.items():
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            path.mkdir()
        self.mirrors.start_http()
        self.mirrors.start_registry()

    def restore(self) -> None:
        self.mirrors.stop("http")
        self.mirrors.stop("registry")
        for path, aside in self.aside.items():
            if aside.exists():
                shutil.rmtree(path, ignore_errors=True)
                aside.rename(path)
        self.mirrors.start_http()
        self.mirrors.start_registry()


def fresh_hosts(lab) -> None:
    """Every host of the lab made again from the base rootfs: nothing of an earlier run left."""
    for name in lab.hosts:
        host = lab.host(name)
        assert not lab.fleet.destroy_host(host)
        lab.fleet.create_host(host)
        lab.fleet.boot_host(host)
    for name in lab.hosts:
        lab.fleet.wait_ssh(lab.host(name))


def install_kernel_headers(lab, www: Path) -> None:
    """The running kernel's headers on each GPU host, as a real server's Debian mirror gives
    them: the lab machine's kernel is not Debian's, so the lab's stand-in headers package (which
    its CUDA repository serves in the distribution's place) is installed from the lab's own
    mirror content, moved aside by the wipe; it is no locked artefact and not in the bundle."""
    kernel = lab.ssh(lab.hosts[0], "uname -r").stdout.strip()
    for name in lab.hosts:
        spec = lab.info["hosts"][name]
        if not spec["gpus"]:
            continue
        [deb] = (www / "cuda" / spec["distro"] / "x86_64").glob(f"linux-headers-{kernel}_*.deb")
        shutil.copy(deb, lab.fleet.root(lab.host(name)) / "root" / deb.name)
        lab.ssh(name, f"dpkg -i /root/{deb.name} && rm /root/{deb.name}")


def acng_log(lab) -> Path:
    return lab.mirrors.services / "acng-log" / "apt-cacher.log"


def acng_urls(lab, offset: int) -> list[str]:
    """The URLs apt-cacher-ng served after ``offset`` of its log (``time|I/O|size|client|URL``;
    the log stays open in apt-cacher-ng, so it is read from an offset, never removed)."""
    with acng_log(lab).open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [line.rsplit("|", 1)[-1] for line in lines if line.count("|") >= 4]


def served_models(lab, host: str) -> dict:
    """Ollama's /api/tags on ``host`` (read with the base system's python3: no curl needed)."""
    url = "http://127.0.0.1:11434/api/tags"
    proc = lab.ssh(host, f"python3 -c \"import urllib.request as u; "
                         f"print(u.urlopen('{url}').read().decode())\"", check=False)  # fmt: skip
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"models": [], "error": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def roundtrip(lab, tmp_path_factory):
    """Lock, export, wipe, import, fresh hosts, apply, verify: each step's result."""
    if lab.attached:
        pytest.skip(
            "the bundle round trip wipes the mirrors and remakes the hosts: it needs a lab of its "
            "own, and a lab is up already (`python -m tests.lab down` if it is yours)"
        )
    work = tmp_path_factory.mktemp("bundle")
    folder = work / "inventories"
    shutil.copytree(lab.inventory.parent, folder,
                    ignore=shutil.ignore_patterns("*.lock.toml", "__pycache__"))  # fmt: skip
    inventory = folder / "lab.py"
    bundle = work / "lab.bundle"
    steps: dict = {"inventory": inventory, "bundle": bundle}
    # the lock is made where the fleet runs and the sources are reachable: on provisioned hosts
    # (on a GPU host without a driver the planner plans no models, so none would be locked)
    timed("apply before the lock (lab sources)", "apply", str(inventory))
    steps["lock"], _ = timed("lock", "lock", str(inventory))
    steps["export"], _ = timed("export", "bundle", "export", str(inventory), "-o", str(bundle))
    record("bundle size", bundle.stat().st_size, "bytes")
    record("bundle files", len(steps["export"]["files"]), "files")

    wiped = Wiped(lab)
    try:
        home = work / "site-gnupg"
        fingerprint = site_key(home)
        steps["fingerprint"] = fingerprint
        steps["import"], _ = timed(
            "import", "bundle", "import", str(bundle), "--to", str(lab.mirrors.www),
            "--registry", REGISTRY, "--sign-key", fingerprint, env={"GNUPGHOME": str(home)},
        )  # fmt: skip
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        # the site's inventory: the lab's, with the site's key for the apt repository
        key = next(p for p in steps["import"]["files"] if p.startswith("cuda/"))
        key_url = f"{lab.mirrors.http_url}/{key.rsplit('/', 1)[0]}/{fingerprint[-8:].lower()}.pub"
        with (folder / "group_data" / "lab.py").open("a") as data:
            data.write(f"\n# the site's own key (test_bundle_lab.py)\n"
                       f"nvidia_repo_key_url = {key_url!r}\n"
                       f"nvidia_repo_key_fingerprint = {fingerprint!r}\n")  # fmt: skip
        started = time.monotonic()
        fresh_hosts(lab)
        record("fresh hosts", time.monotonic() - started)
        install_kernel_headers(lab, wiped.aside[wiped.www])
        log = acng_log(lab)
        offset = log.stat().st_size if log.exists() else 0
        steps["www"] = sorted(
            str(p.relative_to(lab.mirrors.www)) for p in lab.mirrors.www.rglob("*") if p.is_file()
        )
        with urllib.request.urlopen(f"{REGISTRY}/v2/_catalog", timeout=10) as response:
            steps["catalog"] = json.load(response)["repositories"]
        started = time.monotonic()
        steps["apply"] = provision("apply", str(inventory))
        record("apply", time.monotonic() - started)
        started = time.monotonic()
        steps["verify"] = provision("verify", str(inventory))
        record("verify", time.monotonic() - started)
        started = time.monotonic()
        steps["again"] = provision("apply", str(inventory))
        record("apply again (converged)", time.monotonic() - started)
        steps["acng"] = acng_urls(lab, offset)
        steps["tags"] = {h: served_models(lab, h) for h in lab.hosts}
        yield steps
    finally:
        wiped.restore()


def test_the_bundle_holds_every_locked_item(roundtrip):
    lock = tomllib.loads(roundtrip["inventory"].with_name("lab.lock.toml").read_text())
    files = roundtrip["export"]["files"]
    by_path = {f["path"]: f for f in files}
    for item in lock.get("ollama", []) + lock.get("torch", []):
        [entry] = [f for f in files if f["path"].endswith("/" + item["name"])]
        assert entry["sha256"] == item["sha256"], entry
    for item in lock.get("driver", []) + lock.get("toolkit", []):
        debs = [p for p in by_path if p.startswith(f"cuda/{item['distro']}/")]
        assert any(f"/{item['name']}_{item['version']}_" in p for p in debs), (item, debs)
    for item in lock.get("model", []):
        repository, tag = item["source"].split("/v2/", 1)[1].split("/manifests/")
        assert by_path[f"models/{repository}/manifests/{tag}"]["source"] == item["source"]
    assert (
        roundtrip["bundle"].with_name("lab.bundle.sha256").read_text().split()[0]
        == (roundtrip["export"]["sha256"])
    )


def test_the_site_serves_only_what_the_import_laid_out(roundtrip):
    """After the wipe the mirror holds the import's files and the indexes it wrote, nothing of
    the lab's own (no lab key, no other Ollama release, no other wheel index)."""
    placed = set(roundtrip["import"]["files"])
    folders = {p.rsplit("/", 1)[0] for p in placed}
    key = f"{roundtrip['fingerprint'][-8:].lower()}.pub"
    extra = {p for p in roundtrip["www"] if p not in placed}
    for path in extra:
        folder, name = path.rsplit("/", 1)
        allowed = APT_INDEXES | {key, "sha256sum.txt"}
        assert (folder in folders and name in allowed) or path.endswith("/torch/index.html"), path
    assert not any(p.startswith("keys/") for p in roundtrip["www"])
    models = {m.split("@", 1)[0].rsplit(":", 1)[0] for m in roundtrip["import"]["models"]}
    assert sorted(roundtrip["catalog"]) == sorted(models)
    assert roundtrip["import"]["signed_by"] == roundtrip["fingerprint"]


def test_apply_on_fresh_hosts_converges_from_the_site(lab, roundtrip):
    code, result, err = roundtrip["apply"]
    assert code == 0, err
    assert result["failed_hosts"] == []
    assert "not locked" not in err
    for host in lab.hosts:
        assert result["hosts"][host]["status"] == "changed", (host, result["hosts"][host])
    lock = tomllib.loads(roundtrip["inventory"].with_name("lab.lock.toml").read_text())
    for item in lock.get("model", []):  # each host serves the locked digest, from the site
        for host in item["hosts"]:
            tags = {m["name"]: "sha256:" + m["digest"] for m in roundtrip["tags"][host]["models"]}
            assert tags.get(item["name"]) == item["digest"], (host, item, tags)


def test_a_second_apply_from_the_site_changes_nothing(lab, roundtrip):
    code, result, err = roundtrip["again"]
    assert code == 0, err
    for host in lab.hosts:
        assert result["hosts"][host]["status"] == "unchanged", (host, result["hosts"][host])


def test_verify_passes(lab, roundtrip):
    code, report, err = roundtrip["verify"]
    assert report is not None, err
    failing = {h: failing_checks(report, h) for h in lab.hosts}
    assert code == 0 and not any(failing.values()), (failing, err[-3000:])


def test_apt_cacher_ng_served_debian_only(lab, roundtrip):
    """apt-cacher-ng is the site's Debian mirror: every URL it served the hosts during the
    apply is Debian's archive (the NVIDIA repository is the site mirror, direct)."""
    urls = roundtrip["acng"]
    base = lab.config["base"]
    archives = [u.split("://", 1)[1].rstrip("/") for u in (base["mirror"], base["security_mirror"])]
    assert urls, "apt-cacher-ng logged nothing: the check would prove nothing"
    strangers = [u for u in urls if not any(u.startswith(a + "/") for a in archives)]
    assert not strangers, strangers[:20]
