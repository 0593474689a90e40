"""Model distribution: one model onto N hosts, each host from upstream vs through the site mirror.

Two counting proxies (:mod:`bench.registry_proxy`) stand in front of the lab's registry on the
service address: ``upstream`` (the public library as a site sees it, ``library/...``) and
``site`` (the site registry, namespace ``site``). Every repetition pushes the model anew with a
fresh seed, so no blob is cached anywhere (not on the hosts, not in the site namespace), then:

* **direct**: the hosts' ``ollama_registry`` is the upstream; ``provision models sync``.
* **mirror**: ``provision models mirror --from <upstream>`` into the site, then the hosts (whose
  ``ollama_registry`` is the site) run ``provision models sync``.

The upstream's blob bytes are the figure of the issue ("= 1 x model size" through the mirror);
the site's bytes and both wall times are reported beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL = "llama3.2:1b"
REPOSITORY, TAG = "library/llama3.2", "1b"
UPSTREAM_PORT, SITE_PORT = 5001, 5002
SITE_NAMESPACE = "site"


def registry_double() -> Any:
    """tests/doubles/ollama/registry.py (the lab's stand-in model builder and pusher)."""
    from tests.doubles.ollama import registry

    return registry


def push_fresh_model(registry: str, seed: str, size: int) -> tuple[str, int]:
    """Push a stand-in of ``MODEL`` of ``size`` weight bytes; returns (digest, bytes of all its
    blobs, config included: what one host must fetch)."""
    double = registry_double()
    digest = double.push_model(registry, REPOSITORY, TAG, seed=seed, size=size, chunk_size=None)
    _, manifest = double.fetch_manifest(registry, REPOSITORY, TAG)
    total = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    return digest, total


def distribution_overrides(registry_url: str, namespace: str) -> dict[str, Any]:
    """Group data for a distribution run: only ``MODEL``, from ``registry_url``."""
    return {
        "ollama_registry": registry_url,
        "ollama_registry_namespace": namespace,
        "ollama_registry_insecure": True,
    }


def distribution_role() -> dict[str, Any]:
    return {"models": [MODEL], "models_always": []}


def bytes_summary(counters: dict[str, dict[str, int]]) -> dict[str, int]:
    """Blob, manifest and total bytes served, from a proxy's counters snapshot."""
    served = counters.get("served", {})
    return {
        "blob_bytes": served.get("blob", 0),
        "manifest_bytes": served.get("manifest", 0),
        "total_bytes": sum(served.values()),
        "requests": sum(counters.get("requests", {}).values()),
    }


def workdir_inventory_paths(work: Path, scenario: str, n: int) -> Path:
    return work / "inventories" / f"models-{scenario}-{n}"
