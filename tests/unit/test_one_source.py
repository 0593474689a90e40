"""Issue 17, one source for each concept (model and Ollama-data side): the Ollama cross-key
rules are one function that inventory validation runs (exit 2) and the deploy runs again; host
settings are resolved once and every reader agrees with the declared defaults; one catalog
cache."""

from __future__ import annotations

import pytest
from pyinfra.api import Inventory

from provisioner import catalog, planner, settings
from provisioner.deploys import models as models_deploy
from provisioner.deploys.ollama import check_settings, settings_from
from provisioner.inventory import InventoryError, LoadedInventory, validate


def _loaded(data: dict) -> LoadedInventory:
    inventory = Inventory(([("good-1", {}), ("bad-1", data)], {}))
    return LoadedInventory(source="site.py", inventory=inventory, hosts=list(inventory))


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"ollama_listen_address": "0.0.0.0"}, "ollama_listen_address", "is not loopback"),
        ({"ollama_expose": "allowlist"}, "ollama_allow_networks", "needs networks"),
        ({"ollama_expose": "proxy"}, "ollama_htpasswd_file", "never runs without"),
        (
            {"ollama_registry": "http://10.0.0.5:5000"},
            "ollama_registry_insecure",
            "plain HTTP",
        ),
        ({"ollama_extra_env": {"OLLAMA_HOST": "x"}}, "ollama_extra_env", "set by its own key"),
    ],
)
def test_cross_key_rules_are_part_of_inventory_validation(data, key, fragment):
    with pytest.raises(InventoryError) as caught:
        validate(_loaded(data))
    problems = caught.value.problems
    assert problems, "a cross-key problem must fail validation (exit 2)"
    assert all(p.startswith("site.py: host bad-1: ") for p in problems)
    assert any(f"key {key}: " in p and fragment in p for p in problems), problems
    # the deploy refuses the host with the very same problems
    cfg, deploy_problems = settings_from(data)
    assert cfg is None and deploy_problems == check_settings(data)


def test_cross_key_problems_keep_their_order():
    data = {
        "ollama_listen_address": "0.0.0.0",
        "ollama_models_dir": "relative",
        "ollama_keep_alive": "soon",
        "ollama_version": "not-a-version",
    }
    keys = [key for key, _ in check_settings(data)]
    assert keys == [
        "ollama_listen_address",
        "ollama_models_dir",
        "ollama_keep_alive",
        "ollama_version",
    ]


def test_every_reader_sees_the_declared_defaults():
    declared = settings.all_defaults()
    cfg, problems = settings_from({})
    assert problems == [] and cfg is not None
    assert cfg.port == declared["ollama_port"]
    assert cfg.expose == declared["ollama_expose"]
    assert cfg.context_length == declared["ollama_context_length"]
    source = models_deploy.source_settings({})
    assert source["namespace"] == declared["ollama_registry_namespace"]
    assert source["transport"] == declared["ollama_registry_transport"]
    assert source["registry"] is None and source["insecure"] is declared["ollama_registry_insecure"]
    plan = planner.plan_host("h", {}, {})
    assert plan["settings"]["context_length"] == declared["ollama_context_length"]
    assert plan["settings"]["num_parallel"] == declared["ollama_num_parallel"]


def test_readers_agree_on_a_host_value_given_once():
    data = {"ollama_context_length": 4096, "ollama_registry_namespace": "site"}
    h = settings.host_settings(data)
    cfg, _ = settings_from(h)
    assert cfg is not None and cfg.context_length == 4096
    assert planner.plan_host("h", {}, h)["settings"]["context_length"] == 4096
    assert models_deploy.source_settings(h)["namespace"] == "site"


def test_one_catalog_cache():
    extra = [
        {
            "tag": "MyOrg/Tiny:1B",
            "size_bytes": 1000,
            "context": 2048,
            "layers": 2,
            "kv_heads": 1,
            "head_dim": 8,
        }
    ]
    key = catalog.catalog_key(extra)
    assert catalog.catalog_by_key(key) is catalog.cached_catalog(list(extra))
    assert "myorg/tiny:1b" in catalog.catalog_by_key(key)  # keyed by canonical name
    assert catalog.catalog_key([]) == "" and catalog.catalog_by_key("") is catalog.cached_catalog(
        None
    )
