"""Conformance of ``provisioner.model_name`` with Ollama's name grammar, and the one canonical
form of a model name in the plan, the sync's wanted list and verify.

Records: every case below is copied from ollama/ollama ``types/model/name_test.go`` at commit
``fb30760996871fa9460115c753afd2c60d4ab0f7`` (``TestParseNameParts``, ``testCases`` of
``TestNameIsValid``, ``TestNameIsValidPart``, ``TestParseNameFromFilepath``,
``TestDisplayShortest``), checked against ``types/model/name.go`` at the same commit. Case-
insensitive identity: ``Name.EqualFold`` (name.go) and ``getExistingName`` (server/routes.go,
same commit), which maps a request's name onto the store's spelling for pull, delete and copy.
Our own restrictions, not Ollama's: the scheme must be http or https, ``@digest`` is refused.
"""

from __future__ import annotations

import pytest

from provisioner import catalog, model_name, ollama_api
from provisioner.model_name import ModelName, ModelNameError

PART80 = "8" * 80
PART350 = "3" * 350

# TestParseNameParts: (input, host, namespace, model, tag, scheme) of ParseNameBare
BARE = [
    (
        "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K",
        "registry.ollama.ai",
        "library",
        "dolphin-mistral",
        "7b-v2.6-dpo-laser-q6_K",
        "",
    ),
    ("scheme://host:port/namespace/model:tag", "host:port", "namespace", "model", "tag", "scheme"),
    ("host/namespace/model:tag", "host", "namespace", "model", "tag", ""),
    ("host:port/namespace/model:tag", "host:port", "namespace", "model", "tag", ""),
    ("host/namespace/model", "host", "namespace", "model", "", ""),
    ("host:port/namespace/model", "host:port", "namespace", "model", "", ""),
    ("namespace/model", "", "namespace", "model", "", ""),
    ("model", "", "", "model", "", ""),
    ("h/nn/mm:t", "h", "nn", "mm", "t", ""),
    (f"{PART80}/{PART80}/{PART80}:{PART80}", PART80, PART80, PART80, PART80, ""),
    (f"{PART350}/{PART80}/{PART80}:{PART80}", PART350, PART80, PART80, PART80, ""),
]

# testCases of TestNameIsValid: name -> valid, for ParseNameBare(name).IsValid() (no defaults)
VALID_BARE = {
    "": False,
    "_why/_the/_lucky:_stiff": True,
    "h/n/m:t": True,
    "host/namespace/model:tag": True,
    "host/namespace/model": False,
    "namespace/model": False,
    "model": False,
    f"{PART80}/{PART80}/{PART80}:{PART80}": True,
    f"{PART350}/{PART80}/{PART80}:{PART80}": True,
    "h/nn/mm:t": True,
    "m": False,
    "n/m:": False,
    "h/n/m": False,
    "@t": False,
    "m@d": False,
    "^": False,
    "mm:": False,
    "/nn/mm": False,
    "//": False,
    "//mm": False,
    "hh//": False,
    "//mm:@": False,
    "00@": False,
    "@": False,
    "-hh/nn/mm:tt": False,
    "hh/-nn/mm:tt": False,
    "hh/nn/-mm:tt": False,
    "hh/nn/mm:-tt": False,
    "host:https/namespace/model:tag": True,
    "host/name:space/model:tag": False,
}

# TestParseNameFromFilepath: path (filepath.Join of the Go case) -> parts, or None when refused
FILEPATHS = {
    "host/namespace/model/tag": ("host", "namespace", "model", "tag"),
    "host:port/namespace/model/tag": ("host:port", "namespace", "model", "tag"),
    "namespace/model/tag": None,
    "model/tag": None,
    "model": None,
    "../../model/tag": None,
    "namespace/tag": None,  # filepath.Join("", "namespace", ".", "tag")
    ".": None,  # filepath.Join(".", ".", ".", ".")
    "/path/to/random/file": None,
}

# TestDisplayShortest
SHORTEST = {
    "registry.ollama.ai/library/model:latest": "model:latest",
    "registry.ollama.ai/library/model:tag": "model:tag",
    "registry.ollama.ai/namespace/model:tag": "namespace/model:tag",
    "host/namespace/model:tag": "host/namespace/model:tag",
    "host/library/model:tag": "host/library/model:tag",
}


@pytest.mark.parametrize(("text", "host", "namespace", "model", "tag", "scheme"), BARE)
def test_bare_parse_splits_as_ollama(text, host, namespace, model, tag, scheme):
    bare = ModelName.bare(text)
    assert (bare.host, bare.namespace, bare.model, bare.tag, bare.scheme) == (
        host,
        namespace,
        model,
        tag,
        scheme,
    )


@pytest.mark.parametrize(("text", "valid"), sorted(VALID_BARE.items()))
def test_fully_qualified_validity_matches_ollama(text, valid):
    bare = ModelName.bare(text)
    # IsValid ignores the scheme; ours is checked separately (http/https only)
    qualified = ModelName(bare.host, bare.namespace, bare.model, bare.tag)
    assert (qualified.problem() is None) is valid


@pytest.mark.parametrize(
    ("kind", "part", "valid"),
    [
        ("host", "", False),
        ("host", "a", True),
        ("host", "a.", True),
        ("host", "a.b", True),
        ("host", "a:123", True),
        ("host", "a:123/aa/bb", False),
        ("namespace", "bb", True),
        ("namespace", "a.", False),
        ("model", "-h", False),
        # a bad character after good ones: every character is checked, not only the first
        ("model", "llama$3", False),
        ("tag", "q4_K_M!", False),
        ("namespace", "team:x", False),
        ("host", "mirror.example:5000?", False),
    ],
)
def test_part_rules_match_is_valid_part(kind, part, valid):
    assert (model_name._part_problem(kind, part) is None) is valid


def test_an_empty_promised_part_is_named_empty():
    # cutPromised: ":7b" promises a model before the ":" and leaves it empty
    for text in (":7b", "/model", "ns/:7b"):
        with pytest.raises(ModelNameError, match="is empty"):
            ModelName.parse(text)


@pytest.mark.parametrize(("path", "parts"), sorted(FILEPATHS.items()))
def test_manifest_paths_parse_as_ollama(path, parts):
    if parts is None:
        with pytest.raises(ModelNameError) as caught:
            ModelName.from_manifest_path(path)
        assert repr(path) in str(caught.value)  # the message names the file
    else:
        name = ModelName.from_manifest_path(path)
        assert (name.host, name.namespace, name.model, name.tag) == parts


@pytest.mark.parametrize(("text", "shortest"), sorted(SHORTEST.items()))
def test_display_shortest(text, shortest):
    assert ModelName.parse(text).display == shortest


def test_defaults_fill_the_missing_parts():
    # TestNameparseNameDefault: "xx" -> registry.ollama.ai/library/xx:latest
    name = ModelName.parse("xx")
    assert (name.host, name.namespace, name.model, name.tag, name.scheme) == (
        "registry.ollama.ai",
        "library",
        "xx",
        "latest",
        "https",
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("x" * 81, "longer than 80"),
        ("ns/" + "m" * 81, "longer than 80"),
        ("model:" + "t" * 81, "longer than 80"),
        ("n" * 81 + "/model", "longer than 80"),
        ("h" * 351 + "/ns/model", "longer than 350"),
        ("name.space/model", "namespace"),  # no "." in a namespace
        ("llama 3", "may not contain ' '"),
        (" llama3", "must start with"),
        ("ftp://h/n/m:t", "unknown scheme"),
        ("model@sha256:abc", "digest"),
        ("a/b/c/d", "may not contain '/'"),  # the host takes "a/b"
        ("[::1]:5000/ns/model", "must start with"),
    ],
)
def test_names_ollama_refuses_say_why(text, why):
    with pytest.raises(ModelNameError, match="not a valid Ollama model name") as caught:
        ModelName.parse(text)
    assert why in str(caught.value)
    assert repr(text) in str(caught.value)  # the message names what was written
    assert not model_name.is_valid(text)


def test_limits_are_inclusive():
    assert model_name.is_valid("m" * 80 + ":" + "t" * 80)
    assert model_name.is_valid("h" * 350 + "/" + "n" * 80 + "/m")
    assert model_name.is_valid("mirror.example.com:5000/team/model.v2:q4.k")


def test_case_insensitive_identity_and_one_canonical_form():
    upper = ModelName.parse("Registry.Ollama.AI/Library/Llama3.1:8B")
    lower = ModelName.parse("llama3.1:8b")
    assert upper == lower and hash(upper) == hash(lower)
    assert upper.display == "Llama3.1:8B"  # as /api/tags prints a store spelled that way
    assert upper.canonical == lower.canonical == "llama3.1:8b"
    assert ModelName.parse("http://h:5000/n/m:t") == ModelName.parse("h:5000/n/m:t")
    assert ModelName.parse("a/m:t") != ModelName.parse("b/m:t")


def test_scheme_marks_a_plain_http_registry():
    name = ModelName.parse("http://10.0.0.5:5000/Site/Qwen2.5:7b")
    assert name.scheme == "http"
    assert name.pull_name == "http://10.0.0.5:5000/Site/Qwen2.5:7b"
    assert name.canonical == "10.0.0.5:5000/site/qwen2.5:7b"
    assert name.registry_url == "http://10.0.0.5:5000"


def test_every_module_uses_the_one_grammar():
    for text in ["Qwen3:8B", "hf.co/Org/Repo:Q4_K_M", "myorg/model", "mirror:5000/t/m"]:
        expected = model_name.canonical(text)
        assert catalog.normalise_tag(text) == expected
        assert ollama_api.normalise(text) == expected
        assert catalog.is_valid_ollama_name(text)
    for bad in ["name.space/model", "m" * 81, "a b"]:
        assert not catalog.is_valid_ollama_name(bad)
        with pytest.raises(ValueError):
            ollama_api.ModelName.parse(bad)
    assert ollama_api.ModelName is ModelName


# --- one model, one name: plan, wanted list, verify -----------------------------------------


MIXED_CASE = {"gpu": False, "models": ["llama3.1:8b"], "models_pinned": ["Llama3.1:8B"]}


def _cpu_facts() -> dict:
    return {"gpu_state": "no-gpu", "gpus": [], "pci_devices": [], "memory_total_mib": 65536}


def test_mixed_case_pinned_model_is_one_model_in_the_plan_and_the_wanted_list():
    from provisioner.planner import plan_host, wanted_models
    from provisioner.settings import resolve

    plan = plan_host("h", _cpu_facts(), resolve(MIXED_CASE))
    assert [m["tag"] for m in plan["models"]] == ["llama3.1:8b"]
    assert plan["skipped"] == []
    assert wanted_models(plan["models"], MIXED_CASE["models_pinned"]) == ["llama3.1:8b"]


def test_wanted_models_is_canonical_deduplicated_and_stable():
    from provisioner.planner import wanted_models

    planned = [{"tag": "qwen3:8b"}, {"tag": "nomic-embed-text:v1.5"}]
    pinned = ["Library/Qwen3:8B", "myorg/Model", "registry.ollama.ai/myorg/model:latest"]
    assert wanted_models(planned, pinned) == [
        "qwen3:8b",
        "nomic-embed-text:v1.5",
        "myorg/model:latest",
    ]
    assert wanted_models(["B:1", "a:1", "b:1"]) == ["b:1", "a:1"]
    with pytest.raises(ModelNameError):
        wanted_models([], ["name.space/model"])


class _Backend:
    def get_pytest_id(self) -> str:
        return "local"


class _TestinfraHost:
    backend = _Backend()


def test_mixed_case_pinned_model_is_one_model_for_verify():
    from provisioner.planner import plan_host
    from provisioner.settings import resolve
    from provisioner.verify.context import HostContext

    plan = plan_host("h", _cpu_facts(), resolve(MIXED_CASE))
    context = HostContext(_TestinfraHost(), {"name": "h", "data": MIXED_CASE, "plan": plan})
    planned = context.planned_models()
    assert [item["tag"] for item in planned] == ["llama3.1:8b"]
    assert planned[0]["estimated_vram_mib"] == plan["models"][0]["estimated_vram_mib"]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("name.space/model:1b", "neither in the model catalog nor a valid Ollama model name"),
        ("m" * 81, "neither in the model catalog nor a valid Ollama model name"),
        ("http://10.0.0.5:5000/site/m:1b", "without a scheme"),
    ],
)
def test_inventory_validation_refuses_names_ollama_refuses(value, needle):
    from pyinfra.api import Inventory

    from provisioner.inventory import InventoryError, LoadedInventory, validate

    inventory = Inventory(([("good-1", {}), ("bad-1", {"models_pinned": [value]})], {}))
    loaded = LoadedInventory(source="site.py", inventory=inventory, hosts=list(inventory))
    with pytest.raises(InventoryError) as caught:
        validate(loaded)
    assert len(caught.value.problems) == 1
    problem = caught.value.problems[0]
    assert problem.startswith("site.py: host bad-1: key models_pinned: ")
    assert needle in problem


def test_the_health_collector_spells_names_as_model_name_does(monkeypatch):
    """The collector runs on the host without the package, so it keeps a copy of the
    canonical form; this is the check that the copy and the one definition agree."""
    import importlib.util
    import sys
    from importlib import resources

    package = resources.files("provisioner")
    monkeypatch.syspath_prepend(str(package))  # the collector imports nvidia_smi beside it
    monkeypatch.delitem(sys.modules, "nvidia_smi", raising=False)
    path = package / "templates" / "monitoring" / "provisioner_metrics.py"
    spec = importlib.util.spec_from_file_location("provisioner_metrics_copy", str(path))
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)
    names = [
        "llama3.1:8b",
        "Llama3.1:8B",
        "llama3.2",
        "library/Qwen3:8B",
        "registry.ollama.ai/library/qwen3:8b",
        "Registry.Ollama.AI/MyOrg/Model",
        "myorg/model:v2",
        "mirror.example.com:5000/library/qwen3:8b",
        "169.254.100.1:5000/site/tiny:1b",
        "hf.co/Org/Repo:Q4_K_M",
    ]
    for name in names:
        assert collector.canonical(name) == model_name.canonical(name), name
