"""Host data keys: their types, defaults and documentation, read from ``data/keys/*.toml``.

Every key an inventory or ``group_data`` file may set is declared once, in the TOML file of
the component that reads it (``core.toml``, ``ollama.toml``, ...). This module loads those
declarations, gives each component its defaults (for ``@deploy(data_defaults=...)``) and
validates an inventory's host data before any connection is opened.

Declaration format (one TOML table per key)::

    [ollama_num_parallel]
    type = "int"            # str | int | float | bool | list | dict | any
    default = 1             # omitted: the key defaults to None (unset)
    min = 1                 # optional bounds for int/float
    max = 256
    choices = ["f16", "q8_0", "q4_0"]   # optional, for str
    items = "str"           # optional, element type of a list
    format = "absolute_path"   # optional, for str: absolute_path | ollama_namespace
    doc = "What the key does, in one sentence."
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from provisioner.model_name import namespace_problem

# Data keys that belong to pyinfra itself (connectors, global arguments): never validated here.
PYINFRA_KEY_PREFIXES = (
    "_",
    "ssh_",
    "local_",
    "fake_",
    "vagrant_",
    "chroot_",
    "docker_",
    "dockerssh_",
    "podman_",
    "terraform_",
    "winrm_",
)

_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list, tuple),
    "dict": (dict,),
    "any": (object,),
}


def _absolute_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} is not an absolute path"
    if ".." in value.split("/"):
        return f"{value!r}: '..' is not allowed in the path"
    if any(c in value for c in "\n\r\0"):
        return f"{value!r}: the path holds a line break or NUL"
    return None


#: ``format = "..."`` of a str key: the check, and how docs/data-keys.md names it.
FORMATS: dict[str, tuple[Callable[[str], str | None], str]] = {
    "absolute_path": (_absolute_path, "absolute path, no `..`"),
    "ollama_namespace": (namespace_problem, "Ollama namespace"),
}


@dataclass(frozen=True)
class KeySpec:
    """One documented host data key."""

    name: str
    component: str
    type: str
    doc: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    items: str | None = None
    min: float | None = None
    max: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, value: Any) -> str | None:
        """Return a human message when ``value`` does not fit this key, else None."""
        if value is None:
            if self.default is not None:
                return f"None is not allowed (leave the key out for the default {self.default!r})"
            return None
        expected = _TYPES[self.type]
        if self.type in ("int", "float") and isinstance(value, bool):
            return f"expected {self.type}, got bool {value!r}"
        if not isinstance(value, expected):
            return f"expected {self.type}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(repr, self.choices))}"
        if self.min is not None and value < self.min:
            return f"{value!r} is below the minimum {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{value!r} is above the maximum {self.max:g}"
        if self.items and isinstance(value, (list, tuple)):
            allowed = tuple(t for name in self.items.split("|") for t in _TYPES[name])
            for i, item in enumerate(value):
                if not isinstance(item, allowed) or isinstance(item, bool) and bool not in allowed:
                    return f"item {i} is {type(item).__name__} {item!r}, expected {self.items}"
        if "format" in self.extra and isinstance(value, str):
            return FORMATS[self.extra["format"]][0](value)
        return None


@cache
def all_keys() -> dict[str, KeySpec]:
    """Every declared key, by name, from every ``data/keys/*.toml`` file."""
    keys: dict[str, KeySpec] = {}
    folder = resources.files("provisioner") / "data" / "keys"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".toml"):
            continue
        component = entry.name[: -len(".toml")]
        table = tomllib.loads(entry.read_text(encoding="utf-8"))
        for name, spec in table.items():
            if name in keys:
                raise ValueError(
                    f"data key {name!r} declared twice ({component}, {keys[name].component})"
                )
            spec = dict(spec)
            choices = spec.pop("choices", None)
            keys[name] = KeySpec(
                name=name,
                component=component,
                type=spec.pop("type"),
                doc=spec.pop("doc", ""),
                default=spec.pop("default", None),
                choices=tuple(choices) if choices is not None else None,
                items=spec.pop("items", None),
                min=spec.pop("min", None),
                max=spec.pop("max", None),
                extra=spec,
            )
    return keys


def defaults(component: str) -> dict[str, Any]:
    """The defaults of one component's keys, for ``@deploy(data_defaults=...)``."""
    return {k.name: k.default for k in all_keys().values() if k.component == component}


def all_defaults() -> dict[str, Any]:
    """The defaults of every declared key."""
    return {k.name: k.default for k in all_keys().values()}


def is_pyinfra_key(name: str) -> bool:
    return name.startswith(PYINFRA_KEY_PREFIXES)


def validate(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Check host data against the declarations; return ``(key, message)`` pairs."""
    keys = all_keys()
    problems: list[tuple[str, str]] = []
    for name, value in sorted(data.items()):
        if is_pyinfra_key(name):
            continue
        spec = keys.get(name)
        if spec is None:
            problems.append((name, "unknown data key (documented keys: docs/data-keys.md)"))
            continue
        message = spec.check(value)
        if message:
            problems.append((name, message))
    return problems


def resolve(data: dict[str, Any]) -> dict[str, Any]:
    """Host data merged over every declared default (the values a deploy will see)."""
    merged = all_defaults()
    merged.update({k: v for k, v in data.items() if v is not None or k not in merged})
    return merged


class HostSettings(Mapping[str, Any]):
    """One host's data keys, resolved once: every declared key, the host's value or else its
    declared default (``data/keys/*.toml``), and typed getters that check the declared type.

    The one way code reads a host's settings: no reader keeps a default of its own. It is a
    read-only mapping, so code that takes "resolved host data" takes it unchanged; ``data`` is
    a mapping of host data, pyinfra's ``host.data`` (anything with ``.dict()``) or another
    ``HostSettings`` (then nothing is resolved again). Reading an undeclared key raises
    ``KeyError``; asking a key for a type it is not declared with raises ``TypeError``: both
    are programming errors, found by the first test that reads the key.
    """

    __slots__ = ("_values",)

    def __init__(self, data: Mapping[str, Any] | Any = None) -> None:
        if isinstance(data, HostSettings):
            self._values: dict[str, Any] = data._values
        elif data is not None and not isinstance(data, Mapping) and hasattr(data, "dict"):
            self._values = resolve(data.dict())
        else:
            self._values = resolve(dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"HostSettings({self._values!r})"

    def _typed(self, key: str, *kinds: str) -> Any:
        spec = all_keys().get(key)
        if spec is None:
            raise KeyError(f"{key} is not a declared data key (data/keys/*.toml)")
        if spec.type not in kinds:
            raise TypeError(f"data key {key} is declared as {spec.type}, not {'/'.join(kinds)}")
        return self._values.get(key)

    def text(self, key: str) -> str:
        """A ``str`` key with a default (``KeyError`` when it is unset: use
        :meth:`optional_text` for a key without a default)."""
        value = self._typed(key, "str")
        if value is None:
            raise KeyError(f"data key {key} is unset and has no default")
        return str(value)

    def optional_text(self, key: str) -> str | None:
        """A ``str`` key that may be unset (None)."""
        value = self._typed(key, "str")
        return None if value is None else str(value)

    def integer(self, key: str) -> int:
        """An ``int`` key (its default when unset)."""
        return int(self._typed(key, "int"))

    def optional_integer(self, key: str) -> int | None:
        """An ``int`` key that may be unset."""
        value = self._typed(key, "int")
        return None if value is None else int(value)

    def number(self, key: str) -> float:
        """A ``float`` key."""
        return float(self._typed(key, "float"))

    def flag(self, key: str) -> bool:
        """A ``bool`` key."""
        return bool(self._typed(key, "bool"))

    def optional_flag(self, key: str) -> bool | None:
        """A ``bool`` key whose "unset" means something (``gpu``: decide from the facts)."""
        value = self._typed(key, "bool")
        return None if value is None else bool(value)

    def list_of(self, key: str) -> list[Any]:
        """A ``list`` key as a new list (``[]`` when unset)."""
        return list(self._typed(key, "list") or ())

    def optional_list_of(self, key: str) -> list[Any] | None:
        """A ``list`` key whose "unset" differs from empty (``models``)."""
        value = self._typed(key, "list")
        return None if value is None else list(value)

    def table(self, key: str) -> dict[str, Any]:
        """A ``dict`` key as a new dict (``{}`` when unset)."""
        return dict(self._typed(key, "dict") or {})

    def raw(self, key: str) -> Any:
        """A key of any declared type, as given (``any`` keys, values shown in messages)."""
        return self._typed(key, *_TYPES)


def host_settings(data: Mapping[str, Any] | Any) -> HostSettings:
    """:class:`HostSettings` of ``data`` (host data, ``host.data`` or settings already)."""
    return data if isinstance(data, HostSettings) else HostSettings(data)


def markdown() -> str:
    """The data key reference (docs/data-keys.md), generated from the declarations."""
    lines = [
        "# Host data keys",
        "",
        "Generated from `src/provisioner/data/keys/*.toml` by `python -m provisioner.settings`;",
        "do not edit by hand. Set these in an inventory (per host or per group) or in",
        "`group_data/<group>.py`. Keys starting with `_`, `ssh_`, `local_`, `vagrant_`... are",
        "pyinfra's and are passed through. Any other key not listed here is an error (exit 2).",
    ]
    component = None
    for spec in sorted(all_keys().values(), key=lambda k: (k.component, k.name)):
        if spec.component != component:
            component = spec.component
            lines += [
                "",
                f"## {component}",
                "",
                "| key | type | default | meaning |",
                "| --- | --- | --- | --- |",
            ]
        kind = spec.type + (f" of {spec.items}" if spec.items else "")
        if spec.choices:
            kind += ": " + " / ".join(f"`{c}`" for c in spec.choices)
        if spec.min is not None or spec.max is not None:
            low = "" if spec.min is None else f"{spec.min:g}"
            high = "" if spec.max is None else f"{spec.max:g}"
            kind += f" ({low}..{high})"
        if "format" in spec.extra:
            kind += f" ({FORMATS[spec.extra['format']][1]})"
        default = "unset" if spec.default is None else f"`{spec.default!r}`"
        doc = spec.doc.replace("|", "\\|")
        lines.append(f"| `{spec.name}` | {kind} | {default} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/data-keys.md")
    target.write_text(markdown(), encoding="utf-8")
    print(f"wrote {target}")
