"""Rendering the packaged Jinja templates (``provisioner/templates/``): one environment for
every deploy and operation.

- undefined names are errors (``StrictUndefined``): a template never renders a silent blank;
- the trailing newline of a template is kept (config files end in one);
- no HTML autoescaping (these are config files and shell, not web pages);
- templates are read through ``importlib.resources``, so this works from a zipped package too;
- filters: ``systemd_quote`` (a value quoted for a systemd unit's ``Environment=`` line).

Template names are paths below ``templates/``: ``render("gpu/cuda-profile.sh.j2", ...)``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jinja2

__all__ = ["environment", "render", "systemd_quote"]


def systemd_quote(value: str) -> str:
    """``value`` as one double-quoted word of a systemd unit file (``%`` is a specifier there,
    so it is doubled; backslash and double quote are escaped)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _source(name: str) -> str:
    path = resources.files("provisioner") / "templates"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise jinja2.TemplateNotFound(name)
        path = path / part
    try:  # read_text only: no stat (pyinfra's operation tests patch it)
        return path.read_text(encoding="utf-8")
    except OSError as exc:  # absent, a directory...
        raise jinja2.TemplateNotFound(name) from exc


@cache
def environment() -> jinja2.Environment:
    """The one Jinja environment of the provisioner's templates."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_source),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["systemd_quote"] = systemd_quote
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``; a name the template uses but
    ``context`` lacks raises ``jinja2.UndefinedError``."""
    return environment().get_template(template).render(**context)
