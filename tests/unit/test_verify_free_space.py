"""host/models_dir_free_space sizes a model by its real blobs (store manifest, else the
registry's manifest) and falls back to the catalog's estimate only when neither is readable."""

from __future__ import annotations

from typing import Any

from provisioner.facts.ollama import OllamaRegistryManifest
from provisioner.settings import HostSettings
from provisioner.verify.context import HostContext


class Host(HostContext):
    """A HostContext whose Ollama and registry answers are given (no testinfra host)."""

    def __init__(self, installed: dict[str, Any], manifests: dict[str, Any], **data: Any):
        self.name = self.id = "h"
        # the host's data keys resolved once, as HostContext.__init__ does
        self.data, self.plan, self.facts, self._cache = HostSettings(data), {}, None, {}
        self._installed, self._manifests = installed, manifests
        self.asked: list[str] = []

    def installed_models(self) -> dict[str, dict[str, Any]] | None:
        return self._installed

    def fact(self, fact_class: type, *args: Any) -> Any:
        assert fact_class is OllamaRegistryManifest
        self.asked.append(args[0])
        return self._manifests.get(args[0], {"error": "curl: (22) 404"})


SITE = "http://10.0.0.5:5000/v2/library/qwen2.5/manifests/7b"


def test_the_store_manifest_size_comes_first():
    host = Host({"qwen2.5:7b": {"size": 4_683_087_332}}, {})
    assert host.model_bytes("qwen2.5:7b") == (4_683_087_332, "store manifest")
    assert host.asked == []


def test_a_model_not_in_the_store_is_sized_by_the_registry_manifest_it_would_fetch():
    host = Host({}, {SITE: {"size": 4_683_087_555}}, ollama_registry="http://10.0.0.5:5000")
    assert host.model_bytes("qwen2.5:7b") == (4_683_087_555, "registry manifest")
    assert host.asked == [SITE]


def test_the_catalog_estimate_only_when_no_manifest_can_be_read():
    host = Host({}, {}, ollama_registry="http://10.0.0.5:5000")
    assert host.model_bytes("qwen2.5:7b") == (4_700_000_000, "catalog estimate")
    assert host.model_bytes("nothing-known:1b") == (None, "unknown")
    assert host.model_size("qwen2.5:7b") == 4_700_000_000
