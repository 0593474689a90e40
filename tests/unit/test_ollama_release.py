"""Which Ollama release may be installed: the CVE floor, pinned checksums, URLs, architectures."""

from __future__ import annotations

import pytest

from provisioner import ollama_release
from provisioner.ollama_release import ReleaseError, resolve

URL = "https://github.com/ollama/ollama/releases/download/v{version}/ollama-linux-{arch}.tgz"
SHA = "ab" * 32


def test_versions_sort_like_versions():
    order = ["0.1.9", "0.1.29", "0.17.0", "0.17.1-rc1", "0.17.1", "0.32.15", "0.33.0-rc2", "0.33.0"]
    assert sorted(order, key=ollama_release.parse_version) == order
    assert ollama_release.parse_version("v0.32.15") == ollama_release.parse_version("0.32.15")


@pytest.mark.parametrize("bad", ["latest", "0.32", "0.32.15.1", "", "0.32.x"])
def test_a_malformed_version_is_refused(bad):
    with pytest.raises(ReleaseError, match="is not an Ollama version"):
        ollama_release.parse_version(bad)


def test_the_floor_is_the_bleeding_llama_fix():
    assert ollama_release.cve_floor() == "0.17.1"
    assert [c.id for c in ollama_release.cves_affecting("0.17.0")] == ["CVE-2026-7482"]
    assert ollama_release.cves_affecting("0.17.1") == []
    assert ollama_release.cves_affecting("0.32.15") == []


def test_an_old_version_is_exposed_to_every_advisory_it_predates():
    ids = {c.id for c in ollama_release.cves_affecting("0.1.30")}
    assert ids == {
        "CVE-2024-37032",
        "CVE-2024-45436",
        "CVE-2025-0315",
        "CVE-2025-0317",
        "CVE-2026-7482",
    }
    # advisories without a version (missing auth, token leak) never decide anything
    assert not any(
        c.affects("0.0.1") for c in ollama_release.known_cves() if c.id == "CVE-2025-63389"
    )


def test_a_version_below_the_floor_is_refused_with_its_cves():
    with pytest.raises(ReleaseError) as info:
        resolve("0.16.3", "x86_64", URL, SHA)
    message = str(info.value)
    assert "below the CVE floor 0.17.1" in message
    assert "CVE-2026-7482" in message
    assert "ollama_allow_vulnerable_version" in message


def test_the_operator_may_accept_a_vulnerable_version_explicitly():
    release = resolve("0.16.3", "x86_64", URL, SHA, allow_vulnerable=True)
    assert release.version == "0.16.3"


def test_a_release_needs_a_known_checksum():
    with pytest.raises(ReleaseError, match=r"no sha256 known for Ollama 0\.32\.15 \(amd64\)"):
        resolve("0.32.15", "x86_64", URL, None)


def test_an_explicit_checksum_fills_the_url_template():
    release = resolve("0.32.15", "aarch64", URL, SHA.upper())
    assert release.url.endswith("/v0.32.15/ollama-linux-arm64.tgz")
    assert release.sha256 == SHA
    assert release.arch == "arm64"
    assert release.format == "tgz"


def test_the_table_supplies_checksums(monkeypatch):
    table = {"cve_floor": "0.17.1", "cve": [], "sha256": {"0.32.15": {"amd64": SHA}}}
    monkeypatch.setattr(ollama_release, "_table", lambda: table)
    assert resolve("0.32.15", "x86_64", URL).sha256 == SHA
    with pytest.raises(ReleaseError, match="arm64"):
        resolve("0.32.15", "aarch64", URL)


@pytest.mark.parametrize(
    ("machine", "url", "message"),
    [
        ("riscv64", URL, "no Ollama release for architecture 'riscv64'"),
        ("x86_64", "https://mirror/{version}/{os}.tgz", "only {version} and {arch} may be used"),
        ("x86_64", "https://mirror/{version}/ollama.zip", "unknown archive type"),
    ],
)
def test_unusable_inputs_are_refused(machine, url, message):
    with pytest.raises(ReleaseError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve("0.32.15", machine, url, SHA)


def test_a_checksum_must_look_like_one():
    with pytest.raises(ReleaseError, match="is not a sha256"):
        resolve("0.32.15", "x86_64", URL, "d41d8cd98f00b204e9800998ecf8427e")


def test_zstd_archives_are_recognised():
    release = resolve("0.33.0", "x86_64", "https://m/ollama-linux-{arch}.tar.zst?v={version}", SHA)
    assert release.format == "zst"
