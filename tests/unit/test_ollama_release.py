"""Which Ollama release may be installed: the CVE floor, the archive per version, where the
checksum comes from, URLs, architectures."""

from __future__ import annotations

import pytest

from provisioner import ollama_release, settings
from provisioner.ollama_release import SUMS_FROM_RELEASE, ReleaseError, resolve

URL = settings.defaults("ollama")["ollama_release_url"]
SHA = "ab" * 32


def test_versions_sort_like_versions():
    order = ["0.1.9", "0.1.29", "0.17.0", "0.17.1-rc1", "0.17.1", "0.32.15", "0.33.0-rc2", "0.33.0"]
    assert sorted(order, key=ollama_release.parse_version) == order
    assert ollama_release.parse_version("v0.32.15") == ollama_release.parse_version("0.32.15")


@pytest.mark.parametrize("bad", ["latest", "0.32", "0.32.15.1", "", "0.32.x"])
def test_a_malformed_version_is_refused(bad):
    with pytest.raises(ReleaseError, match="is not an Ollama version"):
        ollama_release.parse_version(bad)


def test_the_floor_is_the_first_release_after_the_tensor_transfer_advisory():
    assert ollama_release.cve_floor() == "0.20.3"
    assert [c.id for c in ollama_release.cves_affecting("0.20.2")] == ["CVE-2026-7020"]
    assert ollama_release.cves_affecting("0.20.3") == []
    assert ollama_release.cves_affecting(ollama_release.newest_verified()) == []
    assert {c.id for c in ollama_release.cves_affecting("0.17.0")} == {
        "CVE-2026-7482",
        "CVE-2026-7020",
    }
    assert "CVE-2025-51471" in {c.id for c in ollama_release.cves_affecting("0.14.2")}
    assert "CVE-2025-51471" not in {c.id for c in ollama_release.cves_affecting("0.14.3")}


def test_the_default_version_is_the_newest_verified_and_inside_the_range():
    default = settings.defaults("ollama")["ollama_version"]
    assert default == ollama_release.newest_verified()
    assert ollama_release.parse_version(default) >= ollama_release.parse_version(
        ollama_release.cve_floor()
    )


def test_every_advisory_says_how_its_version_was_checked():
    for cve in ollama_release.known_cves():
        assert cve.verified, cve.id
    # advisories without a version (no fix published, missing auth) never decide anything
    for cve_id in ("CVE-2025-63389", "CVE-2025-0315", "CVE-2024-39719"):
        (cve,) = [c for c in ollama_release.known_cves() if c.id == cve_id]
        assert not cve.affects("0.0.1")


def test_an_old_version_is_exposed_to_every_advisory_it_predates():
    ids = {c.id for c in ollama_release.cves_affecting("0.1.30")}
    assert {"CVE-2024-37032", "CVE-2024-45436", "CVE-2024-39722", "CVE-2026-7482"} <= ids
    assert "CVE-2024-28224" not in ids


def test_a_version_below_the_floor_is_refused_with_its_cves():
    with pytest.raises(ReleaseError) as info:
        resolve("0.17.1", "x86_64", URL, SHA)
    message = str(info.value)
    assert "below the CVE floor 0.20.3" in message
    assert "CVE-2026-7020" in message
    assert "ollama_allow_vulnerable_version" in message


def test_the_operator_may_accept_a_vulnerable_version_explicitly():
    release = resolve("0.13.5", "x86_64", URL, SHA, allow_vulnerable=True)
    assert release.version == "0.13.5"


@pytest.mark.parametrize(
    ("version", "asset", "fmt"),
    [
        ("0.13.5", "ollama-linux-amd64.tgz", "tgz"),
        ("0.14.0-rc1", "ollama-linux-amd64.tgz", "tgz"),
        ("0.14.0", "ollama-linux-amd64.tar.zst", "zst"),
        ("0.20.3", "ollama-linux-amd64.tar.zst", "zst"),
        ("0.32.15", "ollama-linux-amd64.tar.zst", "zst"),
    ],
)
def test_the_default_url_names_the_archive_ollama_publishes_for_the_version(version, asset, fmt):
    release = resolve(version, "x86_64", URL, allow_vulnerable=True)
    assert release.url == (f"https://github.com/ollama/ollama/releases/download/v{version}/{asset}")
    assert release.asset == asset
    assert release.format == fmt


def test_without_a_pin_the_sum_comes_from_the_releases_own_sha256sum_txt():
    release = resolve("0.32.15", "x86_64", URL)
    assert release.sha256 is None
    assert release.sha256_source == SUMS_FROM_RELEASE
    assert release.sums_url == (
        "https://github.com/ollama/ollama/releases/download/v0.32.15/sha256sum.txt"
    )


def test_a_mirror_serves_the_sums_next_to_the_archive_or_where_the_operator_says():
    mirror = "http://10.0.0.5:8080/ollama/v{version}/ollama-linux-{arch}.{ext}"
    assert resolve("0.20.3", "x86_64", mirror).sums_url == (
        "http://10.0.0.5:8080/ollama/v0.20.3/sha256sum.txt"
    )
    other = resolve("0.20.3", "x86_64", mirror, sums_url_template="http://s/{version}/sums.txt")
    assert other.sums_url == "http://s/0.20.3/sums.txt"


def test_an_explicit_checksum_wins_over_the_lock_and_the_table(monkeypatch):
    table = {**ollama_release._table(), "sha256": {"0.32.15": {"amd64": "cd" * 32}}}
    monkeypatch.setattr(ollama_release, "_table", lambda: table)
    lock = {"ollama": {"0.32.15": {"amd64": "ef" * 32}}}
    assert resolve("0.32.15", "x86_64", URL, SHA.upper(), lock=lock).sha256 == SHA
    locked = resolve("0.32.15", "x86_64", URL, lock=lock)
    assert (locked.sha256, locked.sha256_source) == ("ef" * 32, "lock file")
    tabled = resolve("0.32.15", "x86_64", URL)
    assert (tabled.sha256, tabled.sha256_source) == ("cd" * 32, "data/ollama_releases.toml")
    # the table knows amd64 only: arm64 falls back to the release's sha256sum.txt
    assert resolve("0.32.15", "aarch64", URL).sha256 is None


def test_a_lock_for_another_version_says_nothing():
    lock = {"ollama": {"0.32.14": {"sha256": {"amd64": "ef" * 32}}}}
    assert ollama_release.sum_from_lock(lock, "0.32.15", "amd64") is None
    assert ollama_release.sum_from_lock(lock, "0.32.14", "amd64") == "ef" * 32
    assert ollama_release.sum_from_lock(None, "0.32.14", "amd64") is None


def test_sums_line_reads_the_release_workflows_format():
    text = (
        f"{'11' * 32}  ./ollama-linux-amd64-rocm.tar.zst\n"
        f"{'22' * 32}  ./ollama-darwin.tgz\n"
        f"{'AB' * 32}  ./ollama-linux-amd64.tar.zst\n"
        f"{'33' * 32}  ./ollama-linux-arm64.tar.zst\n"
    )
    assert ollama_release.sums_line(text, "ollama-linux-amd64.tar.zst") == SHA
    assert ollama_release.sums_line(text, "ollama-linux-arm64.tar.zst") == "33" * 32
    assert ollama_release.sums_line(f"{SHA} *ollama-linux-amd64.tgz\n", "ollama-linux-amd64.tgz")
    assert ollama_release.sums_line(text, "ollama-linux-amd64.tgz") is None
    assert ollama_release.sums_line("nonsense  ./ollama-linux-amd64.tgz", "x") is None


@pytest.mark.parametrize(
    ("machine", "url", "message"),
    [
        ("riscv64", URL, "no Ollama release for architecture 'riscv64'"),
        (
            "x86_64",
            "https://mirror/{version}/{os}.tgz",
            "only {version}, {arch} and {ext} may be used",
        ),
        ("x86_64", "https://mirror/{version}/ollama.zip", "unknown archive type"),
    ],
)
def test_unusable_inputs_are_refused(machine, url, message):
    with pytest.raises(ReleaseError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve("0.32.15", machine, url, SHA)


def test_a_checksum_must_look_like_one():
    with pytest.raises(ReleaseError, match="is not a sha256"):
        resolve("0.32.15", "x86_64", URL, "d41d8cd98f00b204e9800998ecf8427e")


def test_a_fixed_extension_in_the_template_is_kept():
    release = resolve("0.33.0", "x86_64", "https://m/ollama-linux-{arch}.tgz?v={version}", SHA)
    assert release.format == "tgz"
    assert release.sums_url == "https://m/sha256sum.txt?v=0.33.0"
