"""provisioner.rendering: the one Jinja environment of the GPU and Ollama templates."""

from __future__ import annotations

from importlib import resources

import jinja2
import pytest

from provisioner import rendering
from provisioner.deploys import ollama as ollama_deploy
from provisioner.operations import nvidia


def _source(name: str) -> str:
    return (resources.files("provisioner") / "templates" / name).read_text("utf-8")


def test_a_template_renders_byte_for_byte_with_its_trailing_newline():
    text = rendering.render("gpu/blacklist-nouveau.conf.j2")
    assert text.endswith("options nouveau modeset=0\n")
    assert text == _source("gpu/blacklist-nouveau.conf.j2")


def test_a_missing_value_is_an_error_not_a_blank():
    with pytest.raises(jinja2.UndefinedError, match="bin_dir"):
        rendering.render("gpu/cuda-profile.sh.j2", version="12.4")


def test_values_are_not_html_escaped():
    text = rendering.render("gpu/cuda-profile.sh.j2", version="12.4", bin_dir="/opt/a&b<c>")
    assert "*:/opt/a&b<c>:*) ;;" in text


@pytest.mark.parametrize("name", ["gpu/nope.j2", "../pyproject.toml", "gpu/../../x", ""])
def test_an_unknown_or_escaping_name_is_not_found(name):
    with pytest.raises(jinja2.TemplateNotFound):
        rendering.render(name)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("OLLAMA_HOST=127.0.0.1:11434", '"OLLAMA_HOST=127.0.0.1:11434"'),
        ('A="b"', '"A=\\"b\\""'),
        ("P=50%", '"P=50%%"'),
        ("W=C:\\x", '"W=C:\\\\x"'),
    ],
)
def test_systemd_quote(value, quoted):
    assert rendering.systemd_quote(value) == quoted
    assert rendering.environment().filters["systemd_quote"] is rendering.systemd_quote


def test_the_gpu_operations_and_the_ollama_deploy_share_the_one_environment(monkeypatch):
    seen = []
    real = rendering.render

    def spy(template, **context):
        seen.append(template)
        return real(template, **context)

    monkeypatch.setattr(rendering, "render", spy)
    assert "modeset=0" in nvidia._render("blacklist-nouveau.conf.j2")
    assert "[Service]" in ollama_deploy.render("ollama/ollama-dropin.conf.j2", environment={})
    assert seen == ["gpu/blacklist-nouveau.conf.j2", "ollama/ollama-dropin.conf.j2"]
