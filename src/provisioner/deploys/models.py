"""The models each host serves: the planner's choice, synced into the host's Ollama store.

``ollama_models`` is the last step of ``provision apply`` and the whole of ``provision models
sync|update``. The plan is made when the operation runs, from facts gathered at that moment,
so a host whose driver was installed earlier in the same run is planned with its GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from provisioner import lock as fleet_lock
from provisioner import settings
from provisioner.deploys.ollama import settings_from
from provisioner.operations import ollama, system

__all__ = ["DEFAULTS", "ollama_models", "planned_models", "source_settings"]

DEFAULTS = {**settings.defaults("core"), **settings.defaults("ollama")}


def planned_models(target: Any) -> list[str]:
    """The tags the planner chooses for ``target`` (a connected pyinfra host), from live facts."""
    from provisioner.gather import host_facts
    from provisioner.planner import plan_host

    facts = host_facts(target, cuda_version=False)  # the plan needs no CUDA version
    plan = plan_host(target.name, facts, settings.host_settings(target.data))
    return [entry["tag"] for entry in plan.get("models", [])]


def source_settings(data: Any) -> dict[str, Any]:
    """The ``ollama.models`` arguments that say where models come from, from host data
    (a mapping, ``host.data`` or ``settings.HostSettings``)."""
    h = settings.host_settings(data)
    cfg, _ = settings_from(h)
    return {
        "registry": h.optional_text("ollama_registry") or None,
        "namespace": h.text("ollama_registry_namespace"),
        "insecure": h.flag("ollama_registry_insecure"),
        "transport": h.text("ollama_registry_transport"),
        "api": cfg.api_url if cfg is not None else ollama.DEFAULT_API,
        "models_dir": cfg.models_dir if cfg is not None else h.text("ollama_models_dir"),
    }


@deploy("Ollama models", data_defaults=DEFAULTS)
def ollama_models(
    models: list[str] | None = None,
    prune: bool | None = None,
    refresh: bool | None = None,
) -> None:
    """Make each host hold the models planned for it.

    + models: the tags to serve; None (the default) asks the planner, per host, at run time
    + prune: remove unplanned, unpinned models (None: data key ``ollama_models_prune``)
    + refresh: re-pull tags whose registry digest changed (None: ``ollama_models_refresh``)
    """
    h = settings.host_settings(host.data)
    wanted: list[str] | Callable[[], list[str]]
    wanted = list(models) if models is not None else (lambda: planned_models(host))
    # one run per host at a time (`models sync` on its own; within `apply`, already held)
    system.run_lock(name="Hold the host lock")
    ollama.models(
        name="Sync the planned models",
        models=wanted,
        pinned=h.list_of("models_pinned"),
        prune=h.flag("ollama_models_prune") if prune is None else bool(prune),
        refresh=h.flag("ollama_models_refresh") if refresh is None else bool(refresh),
        locked=fleet_lock.locked_models(fleet_lock.current(), host.name),
        **source_settings(h),
    )
