"""``provision lock``: the file format, the diff, every resolver on recorded or format-exact
fixtures (tests/fixtures/lock/README.md), and keep/upgrade semantics."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from provisioner import lock as lockfile
from provisioner import lock_resolve as lr
from provisioner import lock_sources as src
from provisioner import ollama_release
from provisioner.lock_resolve import Need, Sources, resolve_needs

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
A, B, C = "a" * 64, "b" * 64, "c" * 64


def _item(kind: str, hosts: list[str], **fields) -> lockfile.Item:
    return lockfile.Item(kind, fields, hosts)


def _sample() -> lockfile.Lock:
    return lockfile.Lock(
        [
            _item("model", ["gpu2", "gpu1"], name="llama3.2:3b", version="3b",
                  digest="sha256:" + A, size=123, source="http://r:5000/v2/library/llama3.2/manifests/3b"),
            _item("driver", ["gpu1"], name="nvidia-open", version="580.105.08-1", distro="debian12",
                  branch="580", source="http://m/cuda/debian12/x86_64/Packages.gz"),
            _item("ollama", ["gpu1", "gpu2"], name="ollama-linux-amd64.tar.zst", version="0.32.15",
                  arch="amd64", url="http://m/ollama/v0.32.15/ollama-linux-amd64.tar.zst",
                  sha256=B, source="http://m/ollama/v0.32.15/sha256sum.txt"),
        ]
    )  # fmt: skip


# --- format -----------------------------------------------------------------------------------


def test_render_is_stable_sorted_and_reads_back():
    text = lockfile.render(_sample(), "lab.py")
    assert text == lockfile.render(lockfile.Lock(list(reversed(_sample().items))), "lab.py")
    assert text.index("[[driver]]") < text.index("[[ollama]]") < text.index("[[model]]")
    assert 'hosts = ["gpu1", "gpu2"]' in text  # sorted
    back = lockfile.parse(text, "lab.lock.toml")
    assert [i.to_json() for i in back.items] == [i.to_json() for i in _sample().sorted().items]
    assert lockfile.render(back, "lab.py") == text


def test_json_items_carry_the_contract_fields():
    items = [i.to_json() for i in _sample().sorted().items]
    for item in items:
        assert {"kind", "name", "version", "source", "hosts"} <= set(item)
        assert ("sha256" in item) or ("digest" in item) or item["kind"] == "driver"
    assert items[-1]["digest"] == "sha256:" + A


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("lock_version = 1", "lock_version = 9"), "'lock_version' is 9"),
        (lambda t: t.replace(f'sha256 = "{B}"', 'sha256 = "xyz"'), "ollama[0]: key 'sha256'"),
        (lambda t: t.replace('digest = "sha256:', 'digest = "md5:'), "model[0]: key 'digest'"),
        (lambda t: t.replace('branch = "580"', 'branch = "580"\ncolour = "red"'), "'colour'"),
        (lambda t: t + "\n[[gadget]]\nname = 'x'\n", "unknown key 'gadget'"),
        (lambda t: t.replace('hosts = ["gpu1"]', "hosts = 3"), "driver[0]: key 'hosts'"),
        (lambda t: t.replace("size = 123", 'size = "big"'), "key 'size': not a number"),
        (lambda t: t + "[[[", "not TOML"),
        (
            lambda t: t + t[t.index("[[driver]]") : t.index("[[ollama]]")],
            "driver[1] repeats driver[0]",
        ),
    ],
)
def test_a_bad_lock_is_named_by_file_and_key(edit, message):
    text = edit(lockfile.render(_sample(), "lab.py"))
    with pytest.raises(lockfile.LockError) as err:
        lockfile.parse(text, "inventories/lab.lock.toml")
    assert "inventories/lab.lock.toml" in str(err.value)
    assert message in str(err.value)


def test_path_for_an_inventory_file_and_none_for_a_host_string():
    assert lockfile.path_for("inventories/prod.py") == Path("inventories/prod.lock.toml")
    assert lockfile.path_for("@local") is None


def test_diff_names_what_moved_appeared_and_went():
    old = _sample()
    new = lockfile.Lock([lockfile.Item(i.kind, dict(i.fields), list(i.hosts)) for i in old.items])
    new.items[0].fields["digest"] = "sha256:" + C  # the model moved
    new.items[1].fields["version"] = "580.126.09-1"  # the driver moved
    del new.items[2]  # ollama went
    new.items.append(
        _item("toolkit", ["gpu2"], name="cuda-toolkit-13-0", version="13.0.2-1", distro="debian13",
              source="http://m/Packages.gz")
    )  # fmt: skip
    lines = [c.line() for c in lockfile.diff(old, new)]
    assert lines == [
        "driver nvidia-open (debian12): 580.105.08-1 -> 580.126.09-1",
        "toolkit cuda-toolkit-13-0 (debian13): (none) -> 13.0.2-1",
        f"model llama3.2:3b: 3b sha256:{A} -> 3b sha256:{C}",
        f"ollama ollama-linux-amd64.tar.zst (amd64): 0.32.15 {B} -> (none)",
    ]
    assert lockfile.diff(old, old) == []


def test_the_ollama_hook_reads_a_hosts_view_of_the_lock():
    view = lockfile.ollama_view(_sample(), "gpu2")
    assert ollama_release.sum_from_lock(view, "0.32.15", "amd64") == B
    assert ollama_release.sum_from_lock(view, "0.32.15", "arm64") is None
    assert ollama_release.sum_from_lock(view, "0.32.14", "amd64") is None
    assert lockfile.ollama_view(_sample(), "gpu9") == {"ollama": []}
    assert lockfile.ollama_view(None, "gpu1") is None
    release = ollama_release.resolve(
        "0.32.15", "x86_64", "http://m/ollama/v{version}/ollama-linux-{arch}.{ext}", lock=view
    )
    assert (release.sha256, release.sha256_source) == (B, "lock file")
    assert lockfile.ollama_problem(view, release) is None
    unlocked = ollama_release.resolve(
        "0.32.15", "x86_64", "http://m/ollama/v{version}/ollama-linux-{arch}.{ext}",
        lock=lockfile.ollama_view(_sample(), "gpu9"),
    )  # fmt: skip
    assert "the lock holds no Ollama 0.32.15 for amd64" in lockfile.ollama_problem(
        {"ollama": []}, unlocked
    )
    assert lockfile.ollama_problem(None, unlocked) is None


def test_per_host_views_of_models_and_driver():
    lock = _sample()
    assert lockfile.locked_models(lock, "gpu1") == {"llama3.2:3b": "sha256:" + A}
    assert lockfile.locked_models(lock, "gpu9") == {}
    assert lockfile.locked_models(None, "gpu1") is None
    assert lockfile.driver_version(lock, "gpu1") == "580.105.08-1"
    assert lockfile.driver_version(lock, "gpu2") is None


# --- parsers ----------------------------------------------------------------------------------


def test_apt_packages_reads_recorded_debian_stanzas():
    offered = src.apt_packages((FIXTURES / "packages" / "debian-bookworm.txt").read_text())
    assert offered["nvidia-kernel-dkms"] == ["535.261.03-1"]
    assert offered["libcuda1"] == ["535.261.03-1"]


def test_dnf_repomd_and_primary():
    href = src.repomd_primary((FIXTURES / "lock" / "repomd.xml").read_bytes())
    assert href.startswith("repodata/") and href.endswith("-primary.xml.gz")
    offered = src.dnf_primary((FIXTURES / "lock" / "primary.xml").read_bytes())
    assert offered["nvidia-driver"] == [
        "3:580.105.08-1.el9",
        "3:580.126.09-1.el9",
        "3:590.44.01-1.el9",
    ]
    assert offered["nvidia-fabricmanager"] == ["580.105.08-1"]  # epoch 0 is not written
    with pytest.raises(src.SourceError, match="no primary metadata"):
        src.repomd_primary(b'<repomd xmlns="http://linux.duke.edu/metadata/repo"/>', "x")
    with pytest.raises(src.SourceError, match="not XML"):
        src.dnf_primary(b"<metadata", "http://m/primary.xml")


def test_debian_version_order():
    versions = ["580.126.09-1", "1.0~rc1", "580.65.06-1", "1.0", "580.105.08-1", "1:0.1", "1.0a"]
    assert sorted(versions, key=src.debian_version_key) == [
        "1.0~rc1", "1.0", "1.0a", "580.65.06-1", "580.105.08-1", "580.126.09-1", "1:0.1",
    ]  # fmt: skip
    assert src.newest([]) is None
    assert src.upstream_version("3:580.105.08-1.el9") == "580.105.08"


def test_pep503_links_of_the_lab_and_of_pytorch():
    page = (
        '<a href="../torch-2.9.1%2Bcu130-py3-none-any.whl#sha256=' + A + '">'
        "torch-2.9.1+cu130-py3-none-any.whl</a><br/>"
        '<a href="/whl/cu130/torch-2.9.1%2Bcu130-cp311-cp311-manylinux_2_28_x86_64.whl'
        "#sha256=" + B + '">torch-2.9.1+cu130-cp311-cp311-manylinux_2_28_x86_64.whl</a>'
        '<a href="/whl/cu130/torch-2.9.0%2Bcu130-cp311-cp311-win_amd64.whl">'
        "torch-2.9.0+cu130-cp311-cp311-win_amd64.whl</a>"
    )
    files = src.pep503_files(page, "http://m/whl/cu130/torch/")
    assert files[0] == (
        "torch-2.9.1+cu130-py3-none-any.whl",
        "http://m/whl/cu130/torch-2.9.1%2Bcu130-py3-none-any.whl",
        A,
    )
    assert files[1][1] == (
        "http://m/whl/cu130/torch-2.9.1%2Bcu130-cp311-cp311-manylinux_2_28_x86_64.whl"
    )
    assert files[2][2] is None


def test_public_url_drops_credentials_and_query():
    assert src.public_url("https://bob:s3cret@r.example:5000/v2/x?token=t") == (
        "https://r.example:5000/v2/x"
    )
    assert "s3cret" not in str(src.SourceError("https://bob:s3cret@r/x", "HTTP 401"))


def test_fetch_names_the_url_and_gunzips(tmp_path):
    packed = tmp_path / "Packages.gz"
    packed.write_bytes(gzip.compress(b"Package: a\nVersion: 1\n"))
    assert src.fetch(packed.as_uri()) == b"Package: a\nVersion: 1\n"
    with pytest.raises(src.SourceError) as err:
        src.fetch((tmp_path / "missing").as_uri())
    assert "missing" in str(err.value)


# --- resolving --------------------------------------------------------------------------------

CUDA = "http://m/cuda/debian12/x86_64/"
PACKAGES = "\n".join(
    f"Package: {name}\nVersion: {version}\n"
    for name, version in [
        ("nvidia-open", "575.57.08-1"),
        ("nvidia-open", "580.105.08-1"),
        ("nvidia-open", "580.126.09-1"),
        ("nvidia-open", "590.44.01-1"),
        ("nvidia-fabricmanager", "580.105.08-1"),
        ("nvidia-fabricmanager", "580.126.09-1"),
        ("cuda-toolkit-13-0", "13.0.1-1"),
        ("cuda-toolkit-13-0", "13.0.2-1"),
    ]
)
SUMS = f"{A}  ./ollama-linux-amd64.tar.zst\n{C}  ./ollama-linux-arm64.tar.zst\n"
TORCH_PAGE = (
    f'<a href="../torch-2.9.1%2Bcu130-py3-none-any.whl#sha256={A}">'
    "torch-2.9.1+cu130-py3-none-any.whl</a>"
    f'<a href="../torch-2.9.1%2Bcu130-cp311-cp311-manylinux_2_28_x86_64.whl#sha256={B}">'
    "torch-2.9.1+cu130-cp311-cp311-manylinux_2_28_x86_64.whl</a>"
    f'<a href="../torch-2.9.1%2Bcu130-cp313-cp313-manylinux_2_28_x86_64.whl#sha256={C}">'
    "torch-2.9.1+cu130-cp313-cp313-manylinux_2_28_x86_64.whl</a>"
)


class FakeSite:
    """The sources of one site: URL -> body, and a registry of manifests (repository, tag)."""

    def __init__(self) -> None:
        self.files = {
            CUDA + "Packages.gz": PACKAGES.encode(),
            "http://m/ollama/v0.32.15/sha256sum.txt": SUMS.encode(),
            "http://m/whl/cu130/torch/": TORCH_PAGE.encode(),
        }
        self.fetched: list[str] = []
        self.manifests = {("library/llama3.2", "3b"): ("sha256:" + A, 2048)}

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url not in self.files:
            raise src.SourceError(url, "HTTP 404 Not Found")
        return self.files[url]

    def registry(self):
        site = self

        class Manifest:
            def __init__(self, digest: str, size: int) -> None:
                self.digest, self.size = digest, size

        class Registry:
            def manifest(self, repository: str, tag: str):
                from provisioner.ollama_api import RegistryError

                if (repository, tag) not in site.manifests:
                    raise RegistryError(f"GET .../{repository}/manifests/{tag}: HTTP 404")
                return Manifest(*site.manifests[(repository, tag)])

        return Registry()


def _needs(pinned: str = "", nvswitch: bool = True) -> list[Need]:
    common = {"distro": "debian12", "source": CUDA + "Packages.gz"}
    needs = [
        lr._need("driver", {"pinned": pinned, "branch_prefix": "580."}, name="nvidia-open",
                 branch="580", **common),
        lr._need("toolkit", {}, name="cuda-toolkit-13-0", **common),
        lr._need("ollama", {"url": "http://u:pw@m/ollama/v0.32.15/ollama-linux-amd64.tar.zst",
                            "sums_url": "http://m/ollama/v0.32.15/sha256sum.txt", "pinned": ""},
                 name="ollama", version="0.32.15", arch="amd64",
                 source="http://m/ollama/v0.32.15/sha256sum.txt"),
        lr._need("torch", {"local": "2.9.1+cu130"}, source="http://m/whl/cu130/torch/",
                 version="2.9.1", python="cp311", arch="x86_64"),
        lr._need("model", {"registry": "http://r:5000", "repository": "library/llama3.2"},
                 name="llama3.2:3b", version="3b",
                 source="http://r:5000/v2/library/llama3.2/manifests/3b"),
    ]  # fmt: skip
    if nvswitch:
        needs.insert(
            1,
            lr._need("fabricmanager", {"follows": "nvidia-open"}, name="nvidia-fabricmanager",
                     branch="580", **common),
        )  # fmt: skip
    return needs


def _resolve(site: FakeSite, needs, old=None, upgrade=()):
    registry = site.registry()
    return resolve_needs(
        needs, old, upgrade, sources=Sources(site.fetch), registries={"http://r:5000": registry}
    )


def test_every_resolver_on_one_site():
    site = FakeSite()
    lock, errors = _resolve(site, {"gpu1": _needs(nvswitch=False), "gpu2": _needs()})
    assert errors == {}
    got = {item.kind: item for item in lock.items}
    assert got["driver"].fields["version"] == "580.126.09-1"  # newest of branch 580, not 590
    assert got["driver"].hosts == ["gpu1", "gpu2"]
    assert got["fabricmanager"].fields["version"] == "580.126.09-1"  # the driver's version
    assert got["fabricmanager"].hosts == ["gpu2"]
    assert got["toolkit"].fields["version"] == "13.0.2-1"
    ollama = got["ollama"].fields
    assert (ollama["name"], ollama["sha256"]) == ("ollama-linux-amd64.tar.zst", A)
    assert ollama["url"] == "http://m/ollama/v0.32.15/ollama-linux-amd64.tar.zst"  # no u:pw
    torch = got["torch"].fields
    assert torch["name"] == "torch-2.9.1+cu130-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert torch["sha256"] == B
    assert (got["model"].fields["digest"], got["model"].fields["size"]) == ("sha256:" + A, 2048)
    assert site.fetched.count(CUDA + "Packages.gz") == 1  # one fetch for every package need
    assert "pw" not in lockfile.render(lock)


def test_a_pinned_driver_is_checked_against_the_repository():
    lock, errors = _resolve(FakeSite(), {"gpu1": _needs(pinned="580.105.08-1")})
    assert errors == {}
    assert lockfile.driver_version(lock, "gpu1") == "580.105.08-1"
    assert {i.kind: i for i in lock.items}["fabricmanager"].fields["version"] == "580.105.08-1"
    _, errors = _resolve(FakeSite(), {"gpu1": _needs(pinned="580.999.99-1")})
    assert "offers no nvidia-open 580.999.99-1" in errors["gpu1"]
    assert CUDA + "Packages.gz" in errors["gpu1"]


def test_a_second_run_keeps_every_answer_and_upgrade_moves_only_its_kinds():
    site = FakeSite()
    needs = {"gpu1": _needs()}
    first, _ = _resolve(site, needs)
    # the sources move: a new driver, a re-pushed model tag
    site.files[CUDA + "Packages.gz"] = (
        PACKAGES + "\nPackage: nvidia-open\nVersion: 580.130.01-1\n"
    ).encode()
    site.manifests[("library/llama3.2", "3b")] = ("sha256:" + C, 4096)
    site.fetched.clear()
    again, _ = _resolve(site, needs, old=first)
    assert lockfile.render(again) == lockfile.render(first)
    assert site.fetched == []  # nothing kept was asked again
    moved, _ = _resolve(site, needs, old=first, upgrade={"model"})
    assert [c.line() for c in lockfile.diff(first, moved)] == [
        f"model llama3.2:3b: 3b sha256:{A} -> 3b sha256:{C}"
    ]
    everything, _ = _resolve(site, needs, old=first, upgrade=set(lockfile.KINDS))
    changed = {c.kind for c in lockfile.diff(first, everything)}
    assert changed == {"driver", "model"}  # FM has no 580.130.01: it failed, see below


def test_a_source_that_fails_names_host_item_and_url_and_spares_the_others():
    site = FakeSite()
    del site.files["http://m/whl/cu130/torch/"]
    site.manifests.clear()
    other = [n for n in _needs() if n.kind == "driver"]
    lock, errors = _resolve(site, {"gpu1": _needs(), "gpu2": other})
    assert set(errors) == {"gpu1"}
    assert errors["gpu1"].startswith("torch")
    assert "http://m/whl/cu130/torch/" in errors["gpu1"]
    assert lockfile.driver_version(lock, "gpu2") == "580.126.09-1"


def test_a_host_that_could_not_be_planned_keeps_its_old_items():
    site = FakeSite()
    first, _ = _resolve(site, {"gpu1": _needs(), "gpu2": _needs()})
    lock, _ = resolve_needs(
        {"gpu1": _needs()}, first, (), Sources(site.fetch), {"http://r:5000": site.registry()},
        kept_hosts={"gpu2"},
    )  # fmt: skip
    assert lockfile.render(lock) == lockfile.render(first)


def test_torch_without_a_fitting_wheel_says_what_was_looked_for():
    site = FakeSite()
    needs = [n for n in _needs() if n.kind == "torch"]
    arm = [
        Need(
            "torch",
            tuple((k, "aarch64" if k == "arch" else v) for k, v in needs[0].fields),
            needs[0].how,
        )
    ]
    site.files["http://m/whl/cu130/torch/"] = TORCH_PAGE.replace(
        "py3-none-any", "cp39-cp39-linux_x86_64"
    ).encode()
    _, errors = _resolve(site, {"arm": arm})
    assert "offers no torch 2.9.1+cu130 wheel" in errors["arm"]
    assert "cp311 on aarch64" in errors["arm"]


# --- the command's run (hosts' needs stubbed; sources are files) -------------------------------


def test_run_writes_next_to_the_inventory_and_a_second_run_is_byte_identical(tmp_path, monkeypatch):
    from types import SimpleNamespace

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Packages.gz").write_bytes(gzip.compress(PACKAGES.encode()))
    index = repo.as_uri() + "/"
    need = lr._need("driver", {"pinned": "", "branch_prefix": "580."}, name="nvidia-open",
                    branch="580", distro="debian12", source=index + "Packages.gz")  # fmt: skip
    monkeypatch.setattr(lr, "gather_needs", lambda loaded: ({"gpu1": [need]}, {}))
    inventory = tmp_path / "inventories" / "site.py"
    inventory.parent.mkdir()
    inventory.write_text("")
    loaded = SimpleNamespace(source=str(inventory), limit=(), hosts=[])

    first = lr.run(loaded)
    path = inventory.with_name("site.lock.toml")
    assert first.written and first.path == str(path) and first.exit_code == 0
    assert [c.line() for c in first.changes] == [
        "driver nvidia-open (debian12): (none) -> 580.126.09-1"
    ]
    text = path.read_text()
    assert "# Lock of site.py" in text
    (repo / "Packages.gz").write_bytes(
        gzip.compress((PACKAGES + "\nPackage: nvidia-open\nVersion: 580.130.01-1\n").encode())
    )
    again = lr.run(loaded)
    assert not again.written and again.changes == [] and path.read_text() == text
    moved = lr.run(loaded, upgrade=[])  # --upgrade with no COMPONENT: every kind
    assert [c.line() for c in moved.changes] == [
        "driver nvidia-open (debian12): 580.126.09-1 -> 580.130.01-1"
    ]
    assert moved.to_json()["items"][0]["version"] == "580.130.01-1"
    (repo / "Packages.gz").unlink()
    failed = lr.run(loaded, upgrade=["driver"])
    assert failed.exit_code == 1
    assert "driver nvidia-open:" in failed.errors["gpu1"] and "Packages.gz" in failed.errors["gpu1"]
    assert "580.130.01-1" in path.read_text()  # the host keeps what the lock held


def test_the_health_collector_expects_the_locked_digests(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from provisioner.deploys.monitoring import Exporter, collector_config

    path = tmp_path / "fleet.lock.toml"
    path.write_text(lockfile.render(_sample()))
    target = SimpleNamespace(name="gpu1", data=SimpleNamespace(dict=dict, get=lambda k, d=None: d))
    exporter = Exporter("prometheus-node-exporter", "prometheus-node-exporter", "x", "/var/lib/t")
    wanted = ["llama3.2:3b", "nomic-embed-text:v1.5"]
    unlocked = collector_config(target, exporter, wanted)["models"]
    assert [m["digest"] for m in unlocked] == [None, None]
    monkeypatch.setenv(lockfile.ENV, str(path))
    lockfile._load.cache_clear()
    locked = collector_config(target, exporter, wanted)["models"]
    assert locked == [
        {"name": "llama3.2:3b", "digest": "sha256:" + A},
        {"name": "nomic-embed-text:v1.5", "digest": None},
    ]
