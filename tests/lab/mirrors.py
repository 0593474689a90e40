"""The lab's services on the machine's side, all at the service address 169.254.100.1.

* apt-cacher-ng, port 3142: Debian's packages for the hosts (they have no route out).
* The lab mirror, port 8080 (Python's threaded `http.server`):
  `/cuda/<distro>/x86_64/` a signed apt repository of stand-in NVIDIA packages (NVIDIA's layout);
  `/keys/` its key; `/whl/<tag>/` a PEP 503 wheel index; `/ollama/v<version>/` stand-in releases.
* docker-registry (CNCF Distribution), port 5000: test models in Ollama's manifest and media types.

`Mirrors.up()` builds the content under `$LAB_RUN/www`, starts the three services (their PIDs in
`$LAB_RUN/services/*.pid`) and pushes the test models; `Mirrors.down()` stops them by PID.
The repository signing key is a throwaway GnuPG key generated once into `$LAB_CACHE/gpg`
(never committed); hosts trust it through `signed-by`, never `[trusted=yes]`.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from . import packages
from .fleet import LabError, cache_dir, load_config, pid_alive, read_pid, run_dir, sh, tcp_open

DOUBLES = Path(__file__).resolve().parent.parent / "doubles"
DISTROS = {"bookworm": "debian12", "trixie": "debian13"}  # release -> NVIDIA's repository name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize(project: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", project).lower()


def import_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Mirrors:
    config: dict = field(default_factory=load_config)
    cache: Path = field(default_factory=cache_dir)
    run: Path = field(default_factory=run_dir)

    def __post_init__(self) -> None:
        self.address = self.config["network"]["service_address"]
        m = self.config["mirror"]
        self.http_url = f"http://{self.address}:{m['http_port']}"
        self.registry = f"{self.address}:{m['registry_port']}"
        self.info: dict = {}

    @property
    def www(self) -> Path:
        return self.run / "www"

    @property
    def services(self) -> Path:
        return self.run / "services"

    # ---- the service address -------------------------------------------------------------------
    def add_service_address(self) -> None:
        """169.254.100.1/32 on `lo` (this machine has no `dummy` module), and an `unreachable`
        route for the whole lab range, so that no lab packet ever takes the default route (to a
        stopped or cut host, or to an address nobody has): only the hosts' own /30s are routed."""
        if f"inet {self.address}/32" not in sh("ip", "-4", "addr", "show", "dev", "lo").stdout:
            sh("ip", "addr", "add", f"{self.address}/32", "dev", "lo")
        sh("ip", "route", "replace", "unreachable", self.config["network"]["lab_routes"])

    def remove_service_address(self) -> None:
        if f"inet {self.address}/32" in sh("ip", "-4", "addr", "show", "dev", "lo").stdout:
            sh("ip", "addr", "del", f"{self.address}/32", "dev", "lo")
        routes = self.config["network"]["lab_routes"]
        if routes in sh("ip", "route", "show", "type", "unreachable").stdout:
            sh("ip", "route", "del", "unreachable", routes)

    # ---- the signing key -----------------------------------------------------------------------
    @property
    def gnupghome(self) -> Path:
        return self.cache / "gpg"

    def gpg(self, *args: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
        return sh("gpg", "--batch", "--quiet", "--homedir", self.gnupghome, *args, **kw)

    def ensure_key(self) -> str:
        """The lab's throwaway signing key (made once per cache); returns its fingerprint."""
        self.gnupghome.mkdir(parents=True, exist_ok=True, mode=0o700)
        listing = self.gpg("--with-colons", "--list-secret-keys", check=False).stdout
        if "fpr:" not in listing:
            self.gpg("--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                     "provisioner lab repository key (TEST ONLY) <lab@provisioner.invalid>",
                     "ed25519", "sign", "never")  # fmt: skip
            listing = self.gpg("--with-colons", "--list-secret-keys").stdout
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def stop_gpg_agent(self) -> None:
        sh("gpgconf", "--homedir", self.gnupghome, "--kill", "all", check=False)

    # ---- the signed apt repositories -----------------------------------------------------------
    def build_apt_repos(self, fingerprint: str) -> None:
        keys = self.www / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        gpg_key, asc_key = keys / "lab-archive-keyring.gpg", keys / "lab-archive-keyring.asc"
        gpg_key.write_bytes(self.gpg("--export", fingerprint, text=False).stdout)
        asc_key.write_text(self.gpg("--armor", "--export", fingerprint).stdout)
        nvidia = self.config["mirror"]["nvidia"]
        distros = {d: f"{self.http_url}/cuda/{d}/x86_64/" for d in nvidia["distros"]}
        built = packages.build_debs(
            nvidia, distros, self.run / "debs", generated={"keyring.gpg": gpg_key}
        )
        self.info["key"] = {
            "fingerprint": fingerprint,
            "url_gpg": f"{self.http_url}/keys/{gpg_key.name}",
            "url_asc": f"{self.http_url}/keys/{asc_key.name}",
            "sha256_gpg": sha256(gpg_key),
            "sha256_asc": sha256(asc_key),
        }
        self.info["cuda_repos"] = {}
        for distro, debs in built.items():
            repo = self.www / "cuda" / distro / "x86_64"
            repo.mkdir(parents=True, exist_ok=True)
            for deb in debs:
                os.link(deb, repo / deb.name)
            # NVIDIA publishes the repository key next to the packages as <short key id>.pub
            shutil.copy(asc_key, repo / f"{fingerprint[-8:].lower()}.pub")
            self.index_and_sign(repo, fingerprint)
            keyring = next(repo.glob("cuda-keyring_*_all.deb"))
            self.info["cuda_repos"][distro] = {
                "url": distros[distro],
                "keyring_deb": distros[distro] + keyring.name,
                "keyring_sha256": sha256(keyring),
            }

    def index_and_sign(self, repo: Path, fingerprint: str) -> None:
        """A flat repository like NVIDIA's: Packages(.gz), Release, InRelease, Release.gpg."""
        packages_text = sh("apt-ftparchive", "packages", ".", cwd=repo).stdout
        (repo / "Packages").write_text(packages_text)
        sh("gzip", "-9nkf", repo / "Packages")
        release = sh(
            "apt-ftparchive",
            "-o", "APT::FTPArchive::Release::Origin=NVIDIA",
            "-o", "APT::FTPArchive::Release::Label=NVIDIA CUDA (provisioner lab TEST DOUBLE)",
            "-o", "APT::FTPArchive::Release::Architectures=amd64 all",
            "release", ".", cwd=repo,
        ).stdout  # fmt: skip
        (repo / "Release").write_text(release)
        user = ("--local-user", fingerprint)
        self.gpg(*user, "--yes", "--clearsign", "-o", repo / "InRelease", repo / "Release")
        self.gpg(*user, "--yes", "--armor", "--detach-sign", "-o", repo / "Release.gpg",
                 repo / "Release")  # fmt: skip

    # ---- the wheel index -----------------------------------------------------------------------
    def build_wheel_index(self, real_torch: bool) -> None:
        torch = self.config["mirror"]["torch"]
        self.info["wheels"] = {}
        for tag, cuda in torch["indexes"].items():
            folder = self.www / "whl" / tag
            packages.build_torch_wheel(torch["version"], tag, cuda, folder)
            self.write_simple_index(folder)
            self.info["wheels"][tag] = f"{self.http_url}/whl/{tag}"
        if real_torch:
            # the same <index url>/<tag>/ layout as the product expects: <url>=/whl-real, tag cpu
            folder = self.www / "whl-real" / "cpu"
            folder.mkdir(parents=True, exist_ok=True)
            for wheel in self.download_real_torch():
                (folder / wheel.name).symlink_to(wheel)
            self.write_simple_index(folder)
            self.info["wheels"]["real"] = f"{self.http_url}/whl-real"

    def download_real_torch(self) -> list[Path]:
        """The real CPU torch wheel and its dependencies, with pip, into the cache (once)."""
        requirements = self.config["mirror"]["torch"]["real_requirements"]
        dest = self.cache / "wheels-real"
        stamp = dest / ".requirements"
        if not stamp.exists() or stamp.read_text() != "\n".join(requirements):
            dest.mkdir(parents=True, exist_ok=True)
            sh(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
               "--dest", dest, *requirements, timeout=1800)  # fmt: skip
            stamp.write_text("\n".join(requirements))
        return sorted(dest.glob("*.whl"))

    @staticmethod
    def write_simple_index(folder: Path) -> None:
        """PEP 503 pages for the wheels in `folder`: /<project>/ with #sha256= links."""
        projects: dict[str, list[Path]] = {}
        for wheel in sorted(folder.glob("*.whl")):
            projects.setdefault(normalize(wheel.name.split("-")[0]), []).append(wheel)
        root = ["<!DOCTYPE html>\n<html><body>\n"]
        for project, wheels in sorted(projects.items()):
            root.append(f'<a href="{project}/">{project}</a><br/>\n')
            page = ["<!DOCTYPE html>\n<html><body>\n"]
            for w in wheels:
                href = "../" + urllib.parse.quote(w.name) + "#sha256=" + sha256(w)
                page.append(f'<a href="{html.escape(href)}">{html.escape(w.name)}</a><br/>\n')
            page.append("</body></html>\n")
            (folder / project).mkdir(exist_ok=True)
            (folder / project / "index.html").write_text("".join(page))
        root.append("</body></html>\n")
        (folder / "index.html").write_text("".join(root))

    # ---- Ollama releases and models (stand-ins from tests/doubles/ollama) ---------------------
    def publish_ollama_releases(self) -> None:
        release_py = DOUBLES / "ollama" / "release.py"
        versions = self.config["mirror"]["ollama"]["releases"]
        self.info["ollama"] = {
            "base_url": f"{self.http_url}/ollama",
            "default": self.config["mirror"]["ollama"]["default"],
            "releases": {},
        }
        if not release_py.exists():  # HOOK: tests/doubles/ollama/release.py not written yet
            self.info["ollama"]["missing"] = str(release_py)
            return
        release = import_by_path("lab_ollama_release", release_py)
        for version in versions:
            folder = self.www / "ollama" / f"v{version}"
            folder.mkdir(parents=True, exist_ok=True)
            tarball = Path(release.build_release(folder, version))
            self.info["ollama"]["releases"][version] = {
                "url": f"{self.http_url}/ollama/v{version}/{tarball.name}",
                "path": str(tarball),  # on the machine: the e2e tampers with it and restores it
                "sha256": sha256(tarball),
                "sha256sum_url": f"{self.http_url}/ollama/v{version}/sha256sum.txt",
            }

    def push_models(self) -> None:
        registry_py = DOUBLES / "ollama" / "registry.py"
        self.info["models"] = {}
        self.info["model_pushes"] = {}  # how each was pushed: a test restores it exactly
        if not registry_py.exists():  # HOOK: tests/doubles/ollama/registry.py not written yet
            self.info["models_missing"] = str(registry_py)
            return
        registry = import_by_path("lab_ollama_registry", registry_py)
        from provisioner.catalog import load_catalog

        catalog = load_catalog()
        for m in self.config["mirror"]["ollama"]["models"]:
            # the stand-in has the catalog model's trained context, so Ollama's cap applies alike
            entry = catalog.get(f"{m['name'].removeprefix('library/')}:{m['tag']}")
            push = {"seed": m["seed"]}
            if entry is not None:
                push["context_length"] = entry.context
            digest = registry.push_model(self.registry, m["name"], m["tag"], **push)
            self.info["models"][f"{m['name']}:{m['tag']}"] = digest
            self.info["model_pushes"][f"{m['name']}:{m['tag']}"] = push

    # ---- processes -----------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], port: int) -> None:
        """Start a service in its own session, record its PID, wait until its port answers."""
        self.services.mkdir(parents=True, exist_ok=True)
        pidfile = self.services / f"{name}.pid"
        pid = read_pid(pidfile)
        if pid and pid_alive(pid, str(self.run)):
            return
        log = (self.services / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + 20
        while not tcp_open(self.address, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.services / f"{name}.log").read_text(errors="replace")[-2000:]
                raise LabError(f"{name} did not start listening on {self.address}:{port}\n{tail}")
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        pidfile = self.services / f"{name}.pid"
        pid = read_pid(pidfile)
        if pid and pid_alive(pid, str(self.run)):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid, str(self.run)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid, str(self.run)):
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)

    def start_acng(self) -> None:
        conf = self.services / "acng"
        conf.mkdir(parents=True, exist_ok=True)
        (self.cache / "acng").mkdir(parents=True, exist_ok=True)
        (self.services / "acng-log").mkdir(exist_ok=True)
        # a minimal configuration: no Remap-* lines (Debian's defaults redirect to ftp.debian.org)
        (conf / "acng.conf").write_text(
            f"CacheDir: {self.cache / 'acng'}\n"
            f"LogDir: {self.services / 'acng-log'}\n"
            "SupportDir: /usr/lib/apt-cacher-ng\n"
            f"SocketPath: {self.services / 'acng.socket'}\n"
            f"Port: {self.config['mirror']['acng_port']}\n"
            f"BindAddress: {self.address}\n"
            "ExThreshold: 4\n"
        )
        self.start("acng", ["apt-cacher-ng", "-c", str(conf), "ForeGround=1"],
                   self.config["mirror"]["acng_port"])  # fmt: skip

    def start_http(self) -> None:
        port = self.config["mirror"]["http_port"]
        self.start("http", [sys.executable, "-m", "http.server", str(port), "--bind", self.address,
                            "--directory", str(self.www)], port)  # fmt: skip

    def start_registry(self) -> None:
        port = self.config["mirror"]["registry_port"]
        storage = self.run / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        conf = self.services / "registry.yml"
        conf.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {storage}\n"
            "  delete:\n    enabled: true\n"
            "http:\n"
            f"  addr: {self.address}:{port}\n"
            "  secret: provisioner-lab-not-a-secret\n"
        )
        self.start("registry", ["docker-registry", "serve", str(conf)], port)

    # ---- up / down -----------------------------------------------------------------------------
    def up(self, real_torch: bool = False) -> dict[str, float]:
        """Build the content, start the services, push the models; returns timings."""
        timings: dict[str, float] = {}
        t = time.monotonic()
        self.add_service_address()
        shutil.rmtree(self.www, ignore_errors=True)
        shutil.rmtree(self.run / "debs", ignore_errors=True)
        try:
            self.build_apt_repos(self.ensure_key())
        finally:
            self.stop_gpg_agent()
        timings["apt repository"] = time.monotonic() - t
        t = time.monotonic()
        self.build_wheel_index(real_torch)
        self.publish_ollama_releases()
        timings["wheels and releases"] = time.monotonic() - t
        t = time.monotonic()
        self.start_acng()
        self.start_http()
        self.start_registry()
        self.push_models()
        timings["services"] = time.monotonic() - t
        self.info.update(
            {
                "service_address": self.address,
                "apt_proxy": f"http://{self.address}:{self.config['mirror']['acng_port']}",
                "mirror": self.http_url,
                "cuda_repo_base": f"{self.http_url}/cuda",
                "registry": self.registry,
                "nvidia": self.config["mirror"]["nvidia"],
                "torch_version": self.config["mirror"]["torch"]["version"],
            }
        )
        return timings

    def down(self) -> None:
        for name in ("registry", "http", "acng"):
            self.stop(name)
        self.stop_gpg_agent()
        self.remove_service_address()
        for sub in ("www", "debs", "registry", "services"):
            shutil.rmtree(self.run / sub, ignore_errors=True)

    def leftovers(self) -> list[str]:
        found = []
        for name in ("registry", "http", "acng"):
            pid = read_pid(self.services / f"{name}.pid")
            if pid and pid_alive(pid, str(self.run)):
                found.append(f"{name} pid {pid}")
        if f"inet {self.address}/32" in sh("ip", "-4", "addr", "show", "dev", "lo").stdout:
            found.append(f"address {self.address} on lo")
        routes = self.config["network"]["lab_routes"]
        if routes in sh("ip", "route", "show", "type", "unreachable").stdout:
            found.append(f"route unreachable {routes}")
        return found
