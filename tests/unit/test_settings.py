"""The host data key declarations: loading, validation, and the generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_is_documented_and_has_a_valid_type():
    keys = settings.all_keys()
    assert "ollama_context_length" in keys and "models" in keys
    for spec in keys.values():
        assert spec.doc, f"{spec.name} has no doc"
        assert spec.type in settings._TYPES, spec.name
        assert spec.check(spec.default) is None, f"default of {spec.name} fails its own check"


def test_docs_data_keys_is_up_to_date():
    assert (ROOT / "docs" / "data-keys.md").read_text() == settings.markdown(), (
        "docs/data-keys.md is stale: run `python -m provisioner.settings`"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"ollama_num_parallel": 4}, []),
        ({"ollama_num_parallel": 0}, [("ollama_num_parallel", "0 is below the minimum 1")]),
        ({"ollama_num_parallel": True}, [("ollama_num_parallel", "expected int, got bool True")]),
        ({"gpu": "yes"}, [("gpu", "expected bool, got str 'yes'")]),
        ({"models": ["a:1", 3]}, [("models", "item 1 is int 3, expected str")]),
        ({"ssh_hostname": "x", "_sudo": True, "vagrant_x": 1}, []),
        (
            {"nosuchkey": 1},
            [("nosuchkey", "unknown data key (documented keys: docs/data-keys.md)")],
        ),
    ],
)
def test_validate(data, expected):
    assert settings.validate(data) == expected


def test_resolve_applies_defaults_under_host_data():
    resolved = settings.resolve({"ollama_num_parallel": 3})
    assert resolved["ollama_num_parallel"] == 3
    assert resolved["ollama_context_length"] == settings.all_keys()["ollama_context_length"].default


def test_host_settings_resolves_once_with_the_declared_defaults():
    h = settings.HostSettings({"ollama_port": 8080, "ollama_expose": None, "ssh_user": "x"})
    assert h.integer("ollama_port") == 8080
    assert h.text("ollama_expose") == "loopback"  # None means "the default"
    assert h.number("vram_headroom") == settings.all_keys()["vram_headroom"].default
    assert h.flag("ollama_flash_attention") is True
    assert h.list_of("models_pinned") == [] and h.table("ollama_extra_env") == {}
    assert h.optional_list_of("models") is None  # unset differs from empty
    assert h.optional_text("ollama_sha256") is None
    assert h.optional_flag("gpu") is None
    assert h["ssh_user"] == "x"  # pyinfra's keys pass through
    assert dict(h) == settings.resolve({"ollama_port": 8080, "ssh_user": "x"})
    assert settings.host_settings(h) is h


def test_host_settings_read_pyinfra_host_data():
    class HostData:  # pyinfra's host.data: not a mapping, has .dict()
        def dict(self):
            return {"models_pinned": ["a:1"]}

    assert settings.host_settings(HostData()).list_of("models_pinned") == ["a:1"]


def test_host_settings_refuse_undeclared_keys_and_wrong_types():
    h = settings.HostSettings({})
    with pytest.raises(KeyError, match="not a declared data key"):
        h.text("ollama_prot")
    with pytest.raises(TypeError, match="declared as int"):
        h.text("ollama_port")
    with pytest.raises(KeyError, match="unset and has no default"):
        h.text("ollama_sha256")
    returned = h.list_of("models_always")
    returned.append("x:1")
    assert h.list_of("models_always") == []  # a copy: the settings stay as resolved


def test_every_declared_format_is_known():
    formats = {s.extra["format"] for s in settings.all_keys().values() if "format" in s.extra}
    assert formats <= set(settings.FORMATS)
    assert {"absolute_path", "ollama_namespace"} <= formats


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("ollama_models_dir", "/srv/ollama/models", True),
        ("ollama_models_dir", "/srv/..", False),
        ("pytorch_venv", "/opt/torch..venv", True),  # '..' inside a name is a name
        ("pytorch_venv", "./venv", False),
        ("ollama_registry_namespace", "team_1-x", True),
        # Ollama refuses "." in a namespace (types/model/name.go isValidPart, issue 17)
        ("ollama_registry_namespace", "team_1.x", False),
        ("ollama_registry_namespace", "..", False),
        ("ollama_registry_namespace", "", False),
    ],
)
def test_path_and_namespace_formats(key, value, ok):
    assert (settings.validate({key: value}) == []) is ok
