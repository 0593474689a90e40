"""A locked fleet's models (``provisioner.lock``): held at the locked manifest digest, placed
from the registry by digest after the tag moved, and a host fails (naming the model) when a
source offers something else or the plan holds a model the lock does not. Same loopback set-up
as tests/unit/test_ollama_sync.py: a real CNCF Distribution registry and the stand-in Ollama."""

# ruff: noqa: F811  (pytest fixtures imported from test_ollama_sync)
from __future__ import annotations

import pytest

from provisioner import lock as lockfile
from tests.unit.test_ollama_sync import (  # noqa: F401  (fixtures)
    _host_data,
    _sync,
    _update,
    as_root,
    pytestmark,
    registry,
    server,
)


@pytest.fixture
def use_lock(tmp_path, monkeypatch):
    """Write a lock of model items and make it this run's lock; returns the writer."""
    path = tmp_path / "fleet.lock.toml"

    def write(models: dict[str, str], hosts=("@local",)) -> None:
        items = [
            lockfile.Item(
                "model",
                {
                    "name": name,
                    "version": name.split(":")[1],
                    "digest": digest,
                    "size": 1,
                    "source": "http://registry/v2/site/x/manifests/tag",
                },
                list(hosts),
            )  # fmt: skip
            for name, digest in models.items()
        ]
        path.write_text(lockfile.render(lockfile.Lock(items)))
        lockfile._load.cache_clear()

    monkeypatch.setenv(lockfile.ENV, str(path))
    yield write
    lockfile._load.cache_clear()


def test_a_locked_model_stays_at_its_digest_after_the_tag_moved(registry, server, use_lock):
    first = registry.push("site/tiny", "1b", seed="lock-1")
    data = _host_data(server, registry.url, ["tiny:1b"])
    use_lock({"tiny:1b": first})
    second = registry.push("site/tiny", "1b", seed="lock-2")  # the tag moves after the lock
    assert second != first

    result = _sync(("@local", data))
    assert result.exit_code == 0, result.to_json()
    assert server.tags()["tiny:1b"] == first.removeprefix("sha256:")
    # update compares with the lock, not with the moved tag: nothing to do
    assert _update(("@local", data)).hosts["@local"].status == "unchanged"

    use_lock({"tiny:1b": second})  # the reviewed lock moves: the host follows
    moved = _update(("@local", data))
    assert moved.exit_code == 0, moved.to_json()
    assert server.tags()["tiny:1b"] == second.removeprefix("sha256:")


def test_a_source_without_the_locked_digest_fails_the_host_by_name(registry, server, use_lock):
    registry.push("site/tiny", "1b", seed="lock-3")
    data = _host_data(server, registry.url, ["tiny:1b"])
    missing = "sha256:" + "0" * 64
    use_lock({"tiny:1b": missing})
    result = _sync(("@local", data))
    assert result.exit_code == 1
    errors = " ".join(result.hosts["@local"].errors)
    assert "model tiny:1b" in errors and missing in errors
    assert "tiny:1b" not in server.tags()


def test_a_planned_model_missing_from_the_lock_fails_the_host(registry, server, use_lock):
    registry.push("site/tiny", "1b", seed="lock-4")
    use_lock({})
    result = _sync(("@local", _host_data(server, registry.url, ["tiny:1b"])))
    assert result.exit_code == 1
    assert any("tiny:1b is planned but not in the lock" in e for e in result.hosts["@local"].errors)
