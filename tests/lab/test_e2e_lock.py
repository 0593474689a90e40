"""`provision lock` on the lab (issue 13): the lock of the lab fleet is written next to a temp
copy of the inventory (never a lock of the lab in the repository); a second run changes
nothing; after a new digest of a planned model is pushed to the lab registry, `apply` still
installs the locked one and `lock --upgrade model` moves it and prints the diff; the same for
a new driver release published to the lab's signed repositories; a lock whose
Ollama sha256 is altered for one host fails that host with its serving version untouched,
while the others converge. The lab's own model is pushed back exactly as the lab pushed it,
and the hosts synced to it, in `finally`.

Run: flock /tmp/provisioner-lab.lock env LAB_HOSTS=gpu3,cpu1 \
     .venv/bin/python -m pytest -q -m lab tests/lab/test_e2e_lock.py
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from tests.doubles.ollama.registry import push_model
from tests.lab.test_e2e import provision

pytestmark = pytest.mark.lab

REGISTRY = "http://169.254.100.1:5000"


def _tags(lab, host: str) -> dict[str, str]:
    tags = json.loads(lab.ssh(host, "curl -s http://127.0.0.1:11434/api/tags").stdout)
    return {m["name"]: "sha256:" + m["digest"] for m in tags["models"]}


@pytest.fixture(scope="module")
def locked(lab, tmp_path_factory):
    """A converged fleet and its lock, next to a temp copy of inventories/."""
    folder = tmp_path_factory.mktemp("lock") / "inventories"
    shutil.copytree(lab.inventory.parent, folder, ignore=shutil.ignore_patterns("*.lock.toml"))
    inventory = folder / "lab.py"
    code, result, err = provision("apply", str(inventory))
    assert code == 0, err
    assert err.count("the fleet is not locked") == 1, err  # said once, on stderr
    code, first, err = provision("lock", str(inventory))
    assert code == 0, err
    return lab, inventory, first


def test_lock_writes_every_kind_and_a_second_run_changes_nothing(locked):
    lab, inventory, first = locked
    path = inventory.with_name("lab.lock.toml")
    assert first["lock"] == str(path)
    kinds = {item["kind"] for item in first["items"]}
    assert {"ollama", "torch", "model"} <= kinds
    if any(lab.info["hosts"][h]["gpus"] for h in lab.hosts):
        assert "driver" in kinds
    for item in first["items"]:
        assert item["source"].startswith("http://169.254.100.1:"), item
        assert set(item["hosts"]) <= set(lab.hosts), item
        assert item.get("sha256") or item.get("digest") or item["kind"] in (
            "driver", "fabricmanager", "toolkit",
        )  # fmt: skip
    for item in first["items"]:  # each model's digest is the one the lab pushed
        if item["kind"] == "model":
            key = item["source"].split("/v2/", 1)[1].replace("/manifests/", ":")
            assert item["digest"] == lab.info["models"][key], item
    before = path.read_bytes()
    tomllib.loads(before.decode())
    code, again, err = provision("lock", str(inventory))
    assert code == 0, err
    assert path.read_bytes() == before
    assert again["items"] == first["items"] and again["changes"] == []


def test_apply_keeps_the_locked_digest_and_upgrade_moves_it(locked):
    lab, inventory, first = locked
    host = lab.hosts[0]
    model = next(i for i in first["items"] if i["kind"] == "model" and host in i["hosts"])
    key = model["source"].split("/v2/", 1)[1].replace("/manifests/", ":")
    repository, tag = key.rsplit(":", 1)
    push = {**lab.info["model_pushes"][key], "seed": "provision-lock-moved"}
    try:
        moved = push_model(REGISTRY, repository, tag, **push)
        assert moved != model["digest"]

        code, result, err = provision("apply", str(inventory), "--limit", host)
        assert code == 0, err
        assert "not locked" not in err
        assert _tags(lab, host)[model["name"]] == model["digest"]

        code, upgraded, err = provision("lock", str(inventory), "--upgrade", "model")
        assert code == 0, err
        assert [c for c in upgraded["changes"] if c["kind"] == "model"] == [
            {
                "kind": "model",
                "item": f"model {model['name']}",
                "old": f"{tag} {model['digest']}",
                "new": f"{tag} {moved}",
            }
        ]
        code, result, err = provision("models", "sync", str(inventory), "--limit", host)
        assert code == 0, err
        assert _tags(lab, host)[model["name"]] == moved
    finally:
        lab.republish_model(repository, tag)
        code, _, err = provision("models", "sync", str(lab.inventory), "--limit", host)
        assert code == 0, err


def test_an_altered_ollama_sum_fails_that_host_only(locked):
    """The victim is given the lab's other Ollama release in the inventory, so the lock holds
    an item of its own; that item's sum is altered: the victim fails at the download, its
    serving version stays, the others converge."""
    lab, inventory, _ = locked
    victim, others = lab.hosts[-1], lab.hosts[:-1]
    path = inventory.with_name("lab.lock.toml")
    releases = lab.info["ollama"]["releases"]
    other = next(v for v in sorted(releases) if v != lab.info["ollama"]["default"])
    source, lock_text = inventory.read_text(), path.read_text()
    inventory.write_text(
        source
        + f"\n_V = ({victim!r}, {other!r})\n"
        + "gpu_hosts = [(n, {**d, 'ollama_version': _V[1]} if n == _V[0] else d) "
        + "for n, d in gpu_hosts]\n"
        + "cpu_hosts = [(n, {**d, 'ollama_version': _V[1]} if n == _V[0] else d) "
        + "for n, d in cpu_hosts]\n"
    )
    try:
        code, _, err = provision("lock", str(inventory), "--upgrade", "model")  # the lab's own
        assert code == 0, err
        lock = tomllib.loads(path.read_text())
        [entry] = [e for e in lock["ollama"] if victim in e["hosts"]]
        assert (entry["version"], entry["hosts"]) == (other, [victim])
        altered = "0" * 64
        path.write_text(path.read_text().replace(entry["sha256"], altered))
        before = lab.ssh(victim, "ollama --version", check=False).stdout.strip()
        code, result, err = provision("apply", str(inventory))
        assert code == 1, err
        assert result["failed_hosts"] == [victim], result
        error = result["hosts"][victim]["error"]
        assert altered in error and "checksum" in error, error
        assert lab.ssh(victim, "ollama --version", check=False).stdout.strip() == before
        for name in others:
            assert result["hosts"][name]["status"] in ("changed", "unchanged"), result
    finally:
        inventory.write_text(source)
        path.write_text(lock_text)


NEW_DRIVER = "580.130.01-1"  # a driver release the lab does not serve: published here, then gone


def _publish_driver(lab, version: str, folder: Path) -> dict[Path, list[Path]]:
    """Build the stand-in packages of driver ``version`` and add them to the lab's signed
    repositories (re-indexed and re-signed as the lab does it); returns what was added."""
    from tests.lab import packages

    mirrors = lab.mirrors
    fingerprint = lab.info["key"]["fingerprint"]
    nvidia = {**mirrors.config["mirror"]["nvidia"], "driver_versions": [version]}
    distros = {d: f"{mirrors.http_url}/cuda/{d}/x86_64/" for d in nvidia["distros"]}
    keyring = mirrors.www / "keys" / "lab-archive-keyring.gpg"
    built = packages.build_debs(nvidia, distros, folder, generated={"keyring.gpg": keyring})
    added: dict[Path, list[Path]] = {}
    for distro, debs in built.items():
        repo = mirrors.www / "cuda" / distro / "x86_64"
        added[repo] = []
        for deb in debs:
            if f"_{version}_" in deb.name and not (repo / deb.name).exists():
                shutil.copy(deb, repo / deb.name)
                added[repo].append(repo / deb.name)
        mirrors.index_and_sign(repo, fingerprint)
    return added


def _withdraw(lab, added: dict[Path, list[Path]]) -> None:
    for repo, debs in added.items():
        for deb in debs:
            deb.unlink(missing_ok=True)
        lab.mirrors.index_and_sign(repo, lab.info["key"]["fingerprint"])


def test_a_new_driver_release_moves_the_lock_only_with_upgrade(locked, tmp_path):
    lab, inventory, first = locked
    drivers = [i for i in first["items"] if i["kind"] == "driver"]
    if not drivers:
        pytest.skip("no GPU host in this lab")
    path = inventory.with_name("lab.lock.toml")
    before = path.read_bytes()
    host = drivers[0]["hosts"][0]
    installed = lab.ssh(host, "dpkg-query -W -f '${Version}' nvidia-open", check=False).stdout
    added = _publish_driver(lab, NEW_DRIVER, tmp_path / "debs")
    try:
        code, again, err = provision("lock", str(inventory))
        assert code == 0, err
        assert path.read_bytes() == before  # a new release moves nothing without --upgrade
        code, result, err = provision("apply", str(inventory), "--limit", host)
        assert code == 0, err
        now = lab.ssh(host, "dpkg-query -W -f '${Version}' nvidia-open", check=False).stdout
        assert now == installed == drivers[0]["version"]  # the locked driver stays
        code, upgraded, err = provision("lock", str(inventory), "--upgrade", "driver")
        assert code == 0, err
        moved = [c for c in upgraded["changes"] if c["kind"] == "driver"]
        assert moved and all(c["new"] == NEW_DRIVER for c in moved), upgraded["changes"]
        assert {c["old"] for c in moved} == {d["version"] for d in drivers}
    finally:
        _withdraw(lab, added)
        path.write_bytes(before)  # the fleet stays on the lab's own driver
