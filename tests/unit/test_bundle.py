"""``provision bundle``: export every locked artefact (checked against the lock and the apt
index), import it into a site mirror folder and a second real registry, and a tampered or
mismatching artefact named. Sources are files (``file://``) and a real CNCF Distribution
registry (tests/unit/test_ollama_sync.py)."""

# ruff: noqa: F811  (pytest fixtures imported from test_ollama_sync)
from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from provisioner import bundle
from provisioner import lock as lockfile
from provisioner import lock_sources as src
from provisioner.ollama_api import Registry
from tests.unit.test_ollama_sync import (  # noqa: F401
    DistributionRegistry,
    pytestmark,
    registry,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site_registry(tmp_path):
    (tmp_path / "site-registry").mkdir()
    reg = DistributionRegistry(tmp_path / "site-registry")
    reg.start()
    yield reg
    reg.stop()


def _source_site(root: Path, registry) -> tuple[Path, dict[str, str]]:
    """An apt repository (driver + its library dependency + a package nobody needs), an Ollama
    release, a wheel index, and one model in ``registry``; returns the lock and the digests."""
    repo = root / "cuda" / "debian12" / "x86_64"
    repo.mkdir(parents=True)
    debs = {
        ("nvidia-open", "580.126.09-1"): "Depends: libnvidia-ml1 (= 580.126.09-1), dkms",
        ("libnvidia-ml1", "580.126.09-1"): "",
        ("libnvidia-ml1", "580.105.08-1"): "",
        ("unrelated", "1.0-1"): "",
    }
    stanzas = []
    for (name, version), depends in debs.items():
        data = f"{name} {version}".encode()
        file = f"{name}_{version}_amd64.deb"
        (repo / file).write_bytes(data)
        stanzas.append(
            f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
            + (f"{depends}\n" if depends else "")
            + f"Filename: ./{file}\nSize: {len(data)}\nSHA256: {_sha(data)}\n"
        )
    (repo / "Packages.gz").write_bytes(gzip.compress("\n".join(stanzas).encode()))
    archive = b"ollama archive"
    (root / "ollama").mkdir()
    (root / "ollama" / "ollama-linux-amd64.tar.zst").write_bytes(archive)
    wheel = b"a torch wheel"
    (root / "whl" / "cu130" / "torch").mkdir(parents=True)
    (root / "whl" / "cu130" / "torch-2.9.1+cu130-py3-none-any.whl").write_bytes(wheel)
    digest = registry.push("library/tiny", "1b", seed="bundle")
    base = root.as_uri()
    items = [
        lockfile.Item("driver", {"name": "nvidia-open", "version": "580.126.09-1",
                                 "distro": "debian12", "branch": "580",
                                 "source": f"{base}/cuda/debian12/x86_64/Packages.gz"}, ["g"]),
        lockfile.Item("ollama", {"name": "ollama-linux-amd64.tar.zst", "version": "0.32.15",
                                 "arch": "amd64",
                                 "url": f"{base}/ollama/ollama-linux-amd64.tar.zst",
                                 "sha256": _sha(archive), "source": f"{base}/ollama/sums"}, ["g"]),
        lockfile.Item("torch", {"name": "torch-2.9.1+cu130-py3-none-any.whl", "version": "2.9.1",
                                "python": "cp311", "arch": "x86_64",
                                "url": f"{base}/whl/cu130/torch-2.9.1%2Bcu130-py3-none-any.whl",
                                "sha256": _sha(wheel), "source": f"{base}/whl/cu130/torch/"},
                      ["g"]),
        lockfile.Item("model", {"name": "tiny:1b", "version": "1b", "digest": digest, "size": 1,
                                "source": f"{registry.url}/v2/library/tiny/manifests/1b"}, ["g"]),
    ]  # fmt: skip
    lock = root / "site.lock.toml"
    lock.write_text(lockfile.render(lockfile.Lock(items)))
    return lock, {"model": digest}


def test_export_then_import_gives_a_site_mirror_and_registry(tmp_path, registry, site_registry):
    lock, digests = _source_site(tmp_path / "src", registry)
    out = tmp_path / "fleet.bundle"
    done = bundle.export(lock, out)
    paths = {e.path for e in done.entries}
    assert {
        "cuda/debian12/x86_64/nvidia-open_580.126.09-1_amd64.deb",
        "cuda/debian12/x86_64/libnvidia-ml1_580.126.09-1_amd64.deb",  # its exact dependency
        "ollama/v0.32.15/ollama-linux-amd64.tar.zst",
        "whl/cu130/torch-2.9.1+cu130-py3-none-any.whl",
        "models/library/tiny/manifests/1b",
    } <= paths
    assert not any("unrelated" in p or "580.105.08" in p for p in paths)
    assert out.with_name("fleet.bundle.sha256").read_text().split()[0] == done.sha256
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[:2] == ["manifest.json", "lock.toml"]
    assert all(n.startswith("sha256/") for n in names[2:])  # content-addressed, one copy each

    site = tmp_path / "site"
    result = bundle.import_bundle(out, site, site_registry.url)
    packages = src.apt_packages(
        gzip.decompress((site / "cuda/debian12/x86_64/Packages.gz").read_bytes()).decode()
    )
    assert packages == {"libnvidia-ml1": ["580.126.09-1"], "nvidia-open": ["580.126.09-1"]}
    sums = (site / "ollama/v0.32.15/sha256sum.txt").read_text()
    assert sums == f"{_sha(b'ollama archive')}  ./ollama-linux-amd64.tar.zst\n"
    page = (site / "whl/cu130/torch/index.html").read_text()
    [(name, url, sha)] = src.pep503_files(page, (site / "whl/cu130/torch/").as_uri() + "/")
    assert sha == _sha(b"a torch wheel") and src.fetch(url) == b"a torch wheel"
    assert result.models == [f"library/tiny:1b@{digests['model']}"]
    served = Registry(site_registry.url).manifest("library/tiny", "1b")
    assert served.digest == digests["model"]
    # a second export of the same lock gives the same bytes
    again = bundle.export(lock, tmp_path / "again.bundle")
    assert again.sha256 == done.sha256


def test_an_artefact_that_does_not_match_the_lock_is_named(tmp_path, registry):
    lock, _ = _source_site(tmp_path / "src", registry)
    (tmp_path / "src" / "ollama" / "ollama-linux-amd64.tar.zst").write_bytes(b"tampered")
    with pytest.raises(bundle.BundleError) as err:
        bundle.export(lock, tmp_path / "out.bundle")
    assert "ollama ollama-linux-amd64.tar.zst" in str(err.value)
    assert f"is {_sha(b'tampered')}, the lock holds" in str(err.value)


def test_a_tampered_bundle_is_refused_before_anything_is_laid_out(tmp_path, registry):
    lock, _ = _source_site(tmp_path / "src", registry)
    out = tmp_path / "fleet.bundle"
    bundle.export(lock, out)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out) as tar:
        tar.extractall(unpacked, filter="data")
    manifest = json.loads((unpacked / "manifest.json").read_text())
    victim = next(f for f in manifest["files"] if f["kind"] == "torch")
    (unpacked / "sha256" / victim["sha256"]).write_bytes(b"evil")
    with tarfile.open(tmp_path / "bad.bundle", "w") as tar:
        for name in [
            "manifest.json",
            "lock.toml",
            *sorted(p.name for p in (unpacked / "sha256").iterdir()),
        ]:
            tar.add(unpacked / name if "." in name else unpacked / "sha256" / name,
                    arcname=name if "." in name else f"sha256/{name}")  # fmt: skip
    with pytest.raises(bundle.BundleError, match="does not match its sha256"):
        bundle.import_bundle(tmp_path / "bad.bundle", tmp_path / "site", None)
    assert not (tmp_path / "site" / "whl").exists()


def test_package_closure_takes_exact_versions_and_first_present_alternative():
    stanzas = bundle.apt_stanzas(
        "Package: a\nVersion: 2\nDepends: b (= 1), c | d, e:any (>= 3)\n\n"
        "Package: b\nVersion: 1\n\nPackage: b\nVersion: 2\n\n"
        "Package: d\nVersion: 5\n\nPackage: e\nVersion: 3\nPre-Depends: b (>= 1)\n"
    )
    got = [(s["Package"], s["Version"]) for s in bundle.package_closure(stanzas, [("a", "2")])]
    assert got == [("a", "2"), ("b", "1"), ("b", "2"), ("d", "5"), ("e", "3")]
    with pytest.raises(bundle.BundleError, match="no a 9"):
        bundle.package_closure(stanzas, [("a", "9")])


@pytest.fixture
def site_key(tmp_path, monkeypatch):
    """A throwaway ed25519 signing key of the "site" in its own GnuPG home ($GNUPGHOME); yields
    its fingerprint and stops the home's gpg-agent afterwards."""
    import subprocess

    home = tmp_path / "gnupg"
    monkeypatch.setenv("GNUPGHOME", str(home))
    yield _site_key(home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def _site_key(home: Path) -> str:
    import subprocess

    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--quiet", "--homedir", str(home)]
    subprocess.run([*gpg, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                    "site key (TEST ONLY) <site@provisioner.invalid>", "ed25519", "sign", "never"],
                   check=True)  # fmt: skip
    listing = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def test_import_writes_a_release_and_signs_it_with_the_sites_key(
    tmp_path, registry, site_registry, site_key
):
    import subprocess

    lock, _ = _source_site(tmp_path / "src", registry)
    out = tmp_path / "fleet.bundle"
    bundle.export(lock, out)
    fingerprint = site_key
    result = bundle.import_bundle(out, tmp_path / "site", site_registry.url, fingerprint[-16:])
    assert result.signed_by == fingerprint
    repo = tmp_path / "site/cuda/debian12/x86_64"
    release = (repo / "Release").read_text()
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        assert f" {_sha(data)} {len(data):>16} {name}\n" in release
    public = repo / f"{fingerprint[-8:].lower()}.pub"
    keyring = tmp_path / "site.gpg"
    subprocess.run(["gpg", "--batch", "--homedir", str(tmp_path / "gnupg"), "--dearmor",
                    "-o", str(keyring), str(public)], check=True)  # fmt: skip
    for args in (["InRelease"], ["Release.gpg", "Release"]):  # what apt checks, with gpgv
        files = [str(repo / a) for a in args]
        checked = subprocess.run(["gpgv", "--keyring", str(keyring), *files],
                                 capture_output=True, text=True)  # fmt: skip
        assert checked.returncode == 0, checked.stderr
    assert "site key (TEST ONLY)" in checked.stderr
    # a Release altered after signing fails gpgv
    (repo / "Release").write_text(release.replace("amd64 all", "amd64"))
    altered = subprocess.run(["gpgv", "--keyring", str(keyring), str(repo / "Release.gpg"),
                              str(repo / "Release")], capture_output=True)  # fmt: skip
    assert altered.returncode != 0


def test_an_unknown_signing_key_is_refused_before_anything_is_written(tmp_path, registry, site_key):
    lock, _ = _source_site(tmp_path / "src", registry)
    out = tmp_path / "fleet.bundle"
    bundle.export(lock, out)
    with pytest.raises(bundle.SigningKeyError, match="--sign-key nobody@nowhere"):
        bundle.import_bundle(out, tmp_path / "site", None, "nobody@nowhere")
    assert not (tmp_path / "site").exists()


def test_the_branch_pinning_package_goes_with_a_locked_driver():
    """The driver deploy installs ``nvidia-driver-pinning-<branch>`` (data/distros.toml) before
    the driver, unversioned, and nothing depends on it: the bundle takes it at the driver's
    version where the index has that, else the newest; an index without it gives nothing."""
    fields = {"version": "580.126.09-1", "distro": "debian12", "branch": "580", "source": "x"}
    driver = lockfile.Item("driver", {"name": "nvidia-open", **fields})
    toolkit = lockfile.Item("toolkit", {"name": "cuda-toolkit-13-0", **fields})

    def pins(*versions: str) -> list[dict[str, str]]:
        return [{"Package": "nvidia-driver-pinning-580", "Version": v} for v in versions]

    other = [{"Package": "nvidia-driver-pinning-575", "Version": "575.64.05-1"}]
    # the driver's own version, though a newer one is offered
    index = pins("580.126.09-1", "580.130.01-1") + other
    wanted = bundle.companions([driver, toolkit], index)
    assert wanted == [("nvidia-driver-pinning-580", "580.126.09-1")]
    assert [s["Version"] for s in bundle.package_closure(index, wanted)] == ["580.126.09-1"]
    # not at the driver's version: the newest, as the deploy's unversioned install takes
    index = pins("580.105.08-1", "580.130.01-1")
    wanted = bundle.companions([driver], index)
    assert wanted == [("nvidia-driver-pinning-580", "")]
    assert [s["Version"] for s in bundle.package_closure(index, wanted)] == ["580.130.01-1"]
    assert bundle.companions([driver], other) == []
    assert bundle.companions([toolkit], index) == []
