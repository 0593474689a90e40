"""Ollama model names: the one grammar and the one canonical form every module uses.

The grammar is Ollama's own, ``types/model/name.go`` of ollama/ollama at commit
``fb30760996871fa9460115c753afd2c60d4ab0f7`` (``ParseNameBare``, ``Merge`` with
``DefaultName``, ``isValidPart``, ``DisplayShortest``, ``EqualFold``)::

    [scheme://][host/][namespace/]model[:tag]

* defaults: host ``registry.ollama.ai``, namespace ``library``, tag ``latest``, scheme
  ``https``;
* every part starts with a letter, a digit or ``_``; then letters, digits, ``_`` and ``-``,
  plus ``.`` everywhere but in the namespace, plus ``:`` in the host only (a port);
* a part is 1 to 80 characters long, the host 1 to 350;
* ``@digest`` references are not accepted (the digest check is commented out upstream, and
  no caller here needs one), and neither is whitespace anywhere;
* the scheme is ``http`` or ``https``: ``http://`` marks a plain-HTTP registry, which is how
  ``/api/pull`` is told to use one (a scheme is only ever seen with all three leading parts).

Names compare case-insensitively, as Ollama's ``Name.EqualFold`` does (the scheme is not part
of a name's identity), and the server maps a request's name onto the spelling already in its
store (``getExistingName`` in ``server/routes.go``, used by pull, delete and copy). So the
**canonical form** of a name is its shortest display form (``DisplayShortest``), lower-cased:
``llama3.1:8b``, ``myorg/model:v2``, ``mirror.example:5000/team/model:latest``. The catalog's
keys, the plan's tags, the sync's wanted list, the installed-model facts and verify all use
it, so one model has one name everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SCHEME",
    "DEFAULT_TAG",
    "HOST_MAX",
    "PART_MAX",
    "SCHEMES",
    "ModelName",
    "ModelNameError",
    "canonical",
    "is_valid",
    "namespace_problem",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"
SCHEMES = ("http", "https")
HOST_MAX = 350
PART_MAX = 80
GRAMMAR = "[scheme://][host/][namespace/]model[:tag]"

# name.go's cutPromised puts this in a part that a separator promised but the name left empty;
# it fails isValidPart, so "llama3:" or "/model" are refused.
_MISSING = "!MISSING!"


class ModelNameError(ValueError):
    """A name Ollama would refuse; the message names the name and the part at fault."""


def _word_char(ch: str) -> bool:
    # isAlphanumericOrUnderscore: ASCII letters, digits and "_" only.
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _part_problem(kind: str, part: str) -> str | None:
    """Why ``part`` is not a valid ``kind`` part (``isValidPart``), or None when it is."""
    limit = HOST_MAX if kind == "host" else PART_MAX
    if part == _MISSING or not part:
        return f"the {kind} is empty"
    if len(part) > limit:
        return f"the {kind} is longer than {limit} characters"
    if not _word_char(part[0]):
        return f"the {kind} {part!r} must start with a letter, a digit or _"
    for ch in part[1:]:
        if _word_char(ch) or ch in "_-":
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":
            continue
        return f"the {kind} {part!r} may not contain {ch!r}"
    return None


def _cut_promised(text: str, sep: str) -> tuple[str, str, bool]:
    """name.go's ``cutPromised``: split at the last ``sep``; an empty side becomes missing."""
    i = text.rfind(sep)
    if i < 0:
        return text, "", False
    return text[:i] or _MISSING, text[i + len(sep) :] or _MISSING, True


def _parse_bare(text: str) -> tuple[str, str, str, str, str]:
    """name.go's ``ParseNameBare``: ``(scheme, host, namespace, model, tag)``, "" if absent."""
    scheme = host = namespace = tag = ""
    if text.rfind(":") > text.rfind("/"):  # "/" is not a tag character
        text, tag, _ = _cut_promised(text, ":")
    text, model, promised = _cut_promised(text, "/")
    if not promised:
        return scheme, host, namespace, text, tag
    text, namespace, promised = _cut_promised(text, "/")
    if not promised:
        return scheme, host, text, model, tag
    scheme, sep, host = text.partition("://")
    if not sep:
        scheme, host = "", scheme
    return scheme, host, namespace, model, tag


@dataclass(frozen=True, eq=False)
class ModelName:
    """One Ollama model name, split the way Ollama splits it, with every part checked.

    Two names are equal when Ollama would take them for the same model: parts compared
    case-insensitively, the scheme ignored (``Name.EqualFold``).
    """

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @classmethod
    def parse(cls, name: str) -> ModelName:
        """Parse ``name`` as Ollama does; raise :class:`ModelNameError` for a name it refuses."""
        if not isinstance(name, str):
            raise ModelNameError(f"{name!r} is not a valid Ollama model name ({GRAMMAR})")
        if "@" in name:
            raise ModelNameError(
                f"{name!r} is not a valid Ollama model name: digest references are not "
                "supported, use a tag"
            )
        bare = cls.bare(name)
        parsed = cls(  # name.go's Merge with DefaultName
            host=bare.host or DEFAULT_HOST,
            namespace=bare.namespace or DEFAULT_NAMESPACE,
            model=bare.model,
            tag=bare.tag or DEFAULT_TAG,
            scheme=bare.scheme or DEFAULT_SCHEME,
        )
        problem = parsed.problem()
        if problem:
            raise ModelNameError(
                f"{name!r} is not a valid Ollama model name ({GRAMMAR}): {problem}"
            )
        return parsed

    @classmethod
    def bare(cls, name: str) -> ModelName:
        """The parts written in ``name``, no defaults filled in and nothing checked
        (``ParseNameBare``); an absent part is "" and an empty promised one ``!MISSING!``."""
        scheme, host, namespace, model, tag = _parse_bare(name)
        return cls(host=host, namespace=namespace, model=model, tag=tag, scheme=scheme)

    def problem(self) -> str | None:
        """Why this name is not fully qualified and valid (``IsFullyQualified``), or None."""
        if self.scheme not in SCHEMES:
            return f"unknown scheme {self.scheme!r} (http or https)"
        for kind in ("host", "namespace", "model", "tag"):
            problem = _part_problem(kind, getattr(self, kind))
            if problem:
                return problem
        return None

    @classmethod
    def from_manifest_path(cls, path: str) -> ModelName:
        """The name of a manifest file from its path under ``manifests/``
        (``ParseNameFromFilepath``: exactly ``host/namespace/model/tag``)."""
        parts = path.split("/")
        if len(parts) != 4:
            raise ModelNameError(f"{path!r} is not host/namespace/model/tag")
        name = cls(*parts)
        problem = name.problem()
        if problem:
            raise ModelNameError(f"{path!r} is not a manifest of a valid name: {problem}")
        return name

    # -- identity -------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies the model: the four parts, case-folded."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelName):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def is_default_host(self) -> bool:
        return self.host.lower() == DEFAULT_HOST

    @property
    def is_default_namespace(self) -> bool:
        return self.namespace.lower() == DEFAULT_NAMESPACE

    @property
    def display(self) -> str:
        """The shortest form with the case as written, as ``/api/tags`` and ``ollama list``
        print it (``DisplayShortest``)."""
        if not self.is_default_host:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if not self.is_default_namespace:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def canonical(self) -> str:
        """The one spelling used everywhere: the shortest form, lower case."""
        return self.display.lower()

    # -- where it lives -------------------------------------------------------------------

    @property
    def pull_name(self) -> str:
        """The name to send to ``/api/pull`` (with ``http://`` for a plain-HTTP registry)."""
        if self.scheme == "http":
            return f"http://{self.host}/{self.namespace}/{self.model}:{self.tag}"
        return self.display

    @property
    def manifest_path(self) -> str:
        """Where the manifest lives under ``$OLLAMA_MODELS/manifests/`` (``Filepath``)."""
        return f"{self.host}/{self.namespace}/{self.model}/{self.tag}"

    @property
    def repository(self) -> str:
        """``namespace/model``: the repository in a Docker v2 registry."""
        return f"{self.namespace}/{self.model}"

    @property
    def registry_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def manifest_url(self) -> str:
        return f"{self.registry_url}/v2/{self.repository}/manifests/{self.tag}"

    def blob_url(self, digest: str) -> str:
        return f"{self.registry_url}/v2/{self.repository}/blobs/{digest}"


def is_valid(name: object) -> bool:
    """True when ``name`` is a string Ollama accepts as a model name."""
    try:
        ModelName.parse(name)  # type: ignore[arg-type]
    except ModelNameError:
        return False
    return True


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` cannot be a namespace part of a name, or None (``isValidPart``)."""
    if not isinstance(namespace, str):
        return f"{namespace!r} is not a namespace"
    problem = _part_problem("namespace", namespace)
    if problem is None:
        return None
    return (
        f"{namespace!r} is not a namespace: {problem} (letters, digits, _ and -, starting with "
        "a letter, a digit or _; no '/' and no '.')"
    )


def canonical(name: str) -> str:
    """The canonical form of ``name`` (``Llama3.1`` -> ``llama3.1:latest``).

    Raises :class:`ModelNameError` (a ``ValueError``) for a name Ollama refuses.
    """
    return ModelName.parse(name).canonical
