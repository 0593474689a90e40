"""provisioner.addresses: the one answer to "loopback? wildcard? where does a local client
connect?", shared by the Ollama deploy and verify."""

from __future__ import annotations

import pytest

from provisioner import addresses
from provisioner.deploys.ollama import settings_from


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("fe80::1", False),
        ("gpu1.example", False),
        ("", False),
    ],
)
def test_is_loopback(address, loopback):
    assert addresses.is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("bind", "port", "url"),
    [
        ("127.0.0.1", 11434, "http://127.0.0.1:11434"),
        ("0.0.0.0", 11434, "http://127.0.0.1:11434"),
        ("*", 8080, "http://127.0.0.1:8080"),
        ("", 11434, "http://127.0.0.1:11434"),
        ("::", 11434, "http://[::1]:11434"),
        ("::1", 11434, "http://[::1]:11434"),
        ("10.0.0.5", 11434, "http://10.0.0.5:11434"),
        ("fd00::5", 1, "http://[fd00::5]:1"),
    ],
)
def test_local_url(bind, port, url):
    assert addresses.local_url(bind, port) == url
    assert addresses.local_url(bind, port, "/api/tags") == url + "/api/tags"


@pytest.mark.parametrize(
    ("bind", "listener", "same"),
    [
        ("0.0.0.0", "0.0.0.0", True),
        ("0.0.0.0", "::", True),  # a dual-stack wildcard shows as either
        ("0.0.0.0", "127.0.0.1", False),
        ("localhost", "127.0.0.1", True),
        ("localhost", "::1", True),
        ("localhost", "10.0.0.5", False),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("10.0.0.5", "10.0.0.6", False),
    ],
)
def test_same_listener(bind, listener, same):
    assert addresses.same_listener(bind, listener) is same


@pytest.mark.parametrize(
    ("listen", "api_url", "ollama_host"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434", "127.0.0.1:11434"),
        ("::1", "http://[::1]:11434", "[::1]:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434", "0.0.0.0:11434"),
        ("::", "http://[::1]:11434", "[::]:11434"),
    ],
)
def test_the_ollama_deploy_uses_the_same_answers(listen, api_url, ollama_host):
    expose = "loopback" if addresses.is_loopback(listen) else "allowlist"
    data = {
        "ollama_listen_address": listen,
        "ollama_expose": expose,
        "ollama_allow_networks": ["10.0.0.0/8"],
    }
    cfg, problems = settings_from(data)
    assert not problems and cfg is not None
    assert cfg.api_url == api_url
    assert cfg.environment()["OLLAMA_HOST"] == ollama_host


def test_networks_by_family():
    v4, v6 = addresses.networks_by_family(["10.1.2.3/8", "fd00::1/64", "192.168.0.0/24"])
    assert v4 == ["10.0.0.0/8", "192.168.0.0/24"] and v6 == ["fd00::/64"]
    with pytest.raises(ValueError):
        addresses.networks_by_family(["not-a-network"])
