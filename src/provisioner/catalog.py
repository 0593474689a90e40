"""The model catalog: what the planner knows about each Ollama tag.

The packaged catalog is ``data/models.csv`` (its header comments document every column, the
sources and how ``rank`` is set). Operators add their own models, or other quantisations, with
the host data key ``model_catalog_extra``: a list of dicts with the same column names. An extra
entry whose tag is already in the packaged catalog replaces that row.

Required columns of an extra entry: ``tag``, ``size_bytes``, ``context``, ``layers``,
``kv_heads``, ``head_dim``. The others default to: ``family`` the model part of the tag,
``category`` ``chat``, ``params_b`` 0, ``quant`` ``unknown``, ``rank`` 0 (never preferred over a
packaged model by a profile), ``swa_layers``/``swa_window`` 0, ``vocab`` 152064, ``heads``
4 x ``kv_heads``, ``embd`` heads x head_dim, ``tied`` 0, ``projector_bytes`` 0, ``kind``
``embedding`` when the category says so, ``vision`` when it lists vision, else ``text``,
``num_ctx`` 0 (the model's params set no context), ``source`` ``model_catalog_extra``.

Catalog keys are canonical Ollama names (:mod:`provisioner.model_name`): the short form
``model:tag`` for the library of the default registry, ``namespace/model:tag`` for other
namespaces there, and the full ``host/namespace/model:tag`` otherwise; all lower case, as
Ollama compares names case-insensitively.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from . import model_name

CATEGORIES = ("chat", "code", "reasoning", "vision", "embedding")

COLUMNS = (
    "tag",
    "family",
    "category",
    "params_b",
    "quant",
    "size_bytes",
    "context",
    "rank",
    "layers",
    "kv_heads",
    "head_dim",
    "swa_layers",
    "swa_window",
    "vocab",
    "heads",
    "embd",
    "tied",
    "projector_bytes",
    "kind",
    "num_ctx",
    "source",
)
KINDS = ("text", "vision", "embedding")
# What an extra entry without ``vocab``/``heads`` is sized with: the largest vocabulary of the
# packaged text models below 200k tokens (qwen2.5, 152064) and four query heads per KV head
# (the common GQA ratio); both err towards a larger compute graph.
DEFAULT_VOCAB = 152064
DEFAULT_HEADS_PER_KV_HEAD = 4
REQUIRED_EXTRA = ("tag", "size_bytes", "context", "layers", "kv_heads", "head_dim")

EXTRA_KEY = "model_catalog_extra"
PACKAGED = "data/models.csv"

# Sanity bounds: anything outside is a typo, not a model.
_MAX_SIZE_BYTES = 4 * 10**12  # 4 TB
_MAX_CONTEXT = 16 * 2**20  # 16 Mi tokens
_MAX_LAYERS = 1024
_MAX_HEADS = 1024
_MAX_HEAD_DIM = 4096
_MAX_VOCAB = 4 * 2**20
_MAX_EMBD = 65536


class CatalogError(ValueError):
    """A catalog entry is malformed; ``key`` names the data key (or file) it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One Ollama tag with what the estimator needs to size it."""

    tag: str
    family: str
    categories: tuple[str, ...]
    params_b: float
    quant: str
    size_bytes: int
    context: int
    rank: int
    layers: int
    kv_heads: int
    head_dim: int
    swa_layers: int = 0
    swa_window: int = 0
    vocab: int = DEFAULT_VOCAB
    heads: int = 0  # query heads; 0: DEFAULT_HEADS_PER_KV_HEAD x kv_heads
    embd: int = 0  # embedding length (hidden size); 0: heads x head_dim
    tied: bool = False  # the output layer reuses the token embeddings
    projector_bytes: int = 0  # vision projector (part of size_bytes)
    kind: str = "text"  # text | vision | embedding
    num_ctx: int = 0  # num_ctx of the model's params layer; 0 when it sets none
    source: str = ""

    @property
    def attention_heads(self) -> int:
        """Query heads (the catalog's ``heads``, or 4 per KV head when unknown)."""
        return self.heads or DEFAULT_HEADS_PER_KV_HEAD * self.kv_heads

    @property
    def hidden(self) -> int:
        """Embedding length (the catalog's ``embd``, or heads x head_dim when unknown)."""
        return self.embd or self.attention_heads * self.head_dim

    @property
    def full_layers(self) -> int:
        """Layers that cache the whole context (the others cache a sliding window)."""
        return self.layers - self.swa_layers


# --- Ollama names -------------------------------------------------------------------------------


def is_valid_ollama_name(name: object) -> bool:
    """True when ``name`` is a valid ``[host[:port]/][namespace/]model[:tag]`` Ollama name
    (:func:`provisioner.model_name.is_valid`)."""
    return model_name.is_valid(name)


def normalise_tag(name: str) -> str:
    """The catalog key of an Ollama name (``llama3.1`` -> ``llama3.1:latest``): its canonical
    form (:func:`provisioner.model_name.canonical`).

    Raises ``ValueError`` when ``name`` is not a valid Ollama name.
    """
    return model_name.canonical(name)


# --- entries ------------------------------------------------------------------------------------


def _int(value: Any, column: str, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{column} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{column} must be between {low} and {high}, got {value}")
    return value


def _float(value: Any, column: str, low: float, high: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{column} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{column} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{column} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _str(value: Any, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{column} must be a non-empty string, got {value!r}")
    return value.strip()


def _categories(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [c.strip() for c in value.split(";")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"category must be a string like 'chat;vision' or a list, got {value!r}")
    cats: list[str] = []
    for item in items:
        if item not in CATEGORIES:
            raise ValueError(f"category {item!r} is not one of {', '.join(CATEGORIES)}")
        if item not in cats:
            cats.append(item)
    if not cats:
        raise ValueError("category is empty")
    return tuple(cats)


def _kind(value: Any, categories: tuple[str, ...]) -> str:
    if value is None or value == "":
        if "embedding" in categories:
            return "embedding"
        return "vision" if "vision" in categories else "text"
    if value not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {value!r}")
    return str(value)


def entry_from_mapping(row: Mapping[str, Any], *, packaged: bool = False) -> ModelEntry:
    """Build and check one entry; raises ``ValueError`` with a message naming the column."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(
            f"unknown column(s) {', '.join(map(repr, unknown))} (columns: {', '.join(COLUMNS)})"
        )
    required = COLUMNS if packaged else REQUIRED_EXTRA
    missing = [c for c in required if c not in row or row[c] is None or row[c] == ""]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    raw_tag = row["tag"]
    if not is_valid_ollama_name(raw_tag):
        raise ValueError(f"tag {raw_tag!r} is not a valid Ollama model name")
    tag = normalise_tag(raw_tag)
    model_part = tag.rsplit("/", 1)[-1].split(":", 1)[0]
    layers = _int(row["layers"], "layers", 1, _MAX_LAYERS)
    swa_layers = _int(row.get("swa_layers", 0) or 0, "swa_layers", 0, layers)
    swa_window = _int(row.get("swa_window", 0) or 0, "swa_window", 0, _MAX_CONTEXT)
    if swa_layers and not swa_window:
        raise ValueError("swa_window must be set (tokens) when swa_layers is not 0")
    categories = _categories(row.get("category") or "chat")
    size_bytes = _int(row["size_bytes"], "size_bytes", 1, _MAX_SIZE_BYTES)
    projector = _int(row.get("projector_bytes") or 0, "projector_bytes", 0, size_bytes)
    return ModelEntry(
        tag=tag,
        family=_str(row.get("family") or model_part, "family"),
        categories=categories,
        params_b=_float(row.get("params_b") or 0, "params_b", 0, 100_000),
        quant=_str(row.get("quant") or "unknown", "quant"),
        size_bytes=size_bytes,
        context=_int(row["context"], "context", 1, _MAX_CONTEXT),
        rank=_int(row.get("rank") or 0, "rank", 0, 100),
        layers=layers,
        kv_heads=_int(row["kv_heads"], "kv_heads", 1, _MAX_HEADS),
        head_dim=_int(row["head_dim"], "head_dim", 1, _MAX_HEAD_DIM),
        swa_layers=swa_layers,
        swa_window=swa_window,
        vocab=_int(row.get("vocab") or DEFAULT_VOCAB, "vocab", 1, _MAX_VOCAB),
        heads=_int(row.get("heads") or 0, "heads", 0, _MAX_HEADS),
        embd=_int(row.get("embd") or 0, "embd", 0, _MAX_EMBD),
        tied=bool(_int(row.get("tied") or 0, "tied", 0, 1)),
        projector_bytes=projector,
        kind=_kind(row.get("kind"), categories),
        num_ctx=_int(row.get("num_ctx") or 0, "num_ctx", 0, _MAX_CONTEXT),
        source=_str(row.get("source") or EXTRA_KEY, "source"),
    )


def _csv_rows(text: str) -> Iterable[tuple[int, dict[str, str]]]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if not line.startswith("#")]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        return
    reader = csv.reader(io.StringIO("\n".join(line for _, line in lines)))
    header = next(reader)
    if tuple(header) != COLUMNS:
        raise CatalogError(PACKAGED, f"header must be {','.join(COLUMNS)}")
    for (lineno, _), values in zip(lines[1:], reader, strict=True):
        if len(values) != len(header):
            raise CatalogError(
                PACKAGED, f"line {lineno}: {len(values)} fields, expected {len(header)}"
            )
        yield lineno, dict(zip(header, values, strict=True))


@cache
def _packaged() -> dict[str, ModelEntry]:
    text = (resources.files("provisioner") / "data" / "models.csv").read_text(encoding="utf-8")
    entries: dict[str, ModelEntry] = {}
    for lineno, row in _csv_rows(text):
        try:
            entry = entry_from_mapping(row, packaged=True)
        except ValueError as exc:
            raise CatalogError(PACKAGED, f"line {lineno}: {exc}") from None
        if entry.tag in entries:
            raise CatalogError(PACKAGED, f"line {lineno}: tag {entry.tag!r} listed twice")
        entries[entry.tag] = entry
    return entries


def load_catalog(extra: list[dict] | None = None) -> dict[str, ModelEntry]:
    """The packaged catalog plus the operator's ``model_catalog_extra`` entries, by tag.

    Raises ``CatalogError("model_catalog_extra", message)`` for a malformed extra entry.
    """
    catalog = dict(_packaged())
    if not extra:
        return catalog
    if not isinstance(extra, (list, tuple)):
        raise CatalogError(EXTRA_KEY, f"expected a list of dicts, got {type(extra).__name__}")
    seen: set[str] = set()
    for i, item in enumerate(extra):
        label = f"entry {i}"
        if isinstance(item, Mapping) and isinstance(item.get("tag"), str):
            label += f" (tag {item['tag']!r})"
        if not isinstance(item, Mapping):
            raise CatalogError(EXTRA_KEY, f"{label}: expected a dict, got {type(item).__name__}")
        try:
            entry = entry_from_mapping(item)
        except ValueError as exc:
            raise CatalogError(EXTRA_KEY, f"{label}: {exc}") from None
        if entry.tag in seen:
            raise CatalogError(EXTRA_KEY, f"{label}: tag {entry.tag!r} is listed twice")
        seen.add(entry.tag)
        catalog[entry.tag] = entry
    return catalog


# The one cache of catalogs: one entry per distinct ``model_catalog_extra`` content.
_catalog_cache: dict[str, dict[str, ModelEntry]] = {}


def catalog_key(extra: list[dict] | None) -> str:
    """A hashable name for the catalog of ``extra`` ("" for the packaged one), loading it
    into the cache; raises ``CatalogError`` for a malformed ``extra``."""
    if not extra:
        return ""
    key = json.dumps(extra, sort_keys=True, default=repr)
    if key not in _catalog_cache:
        _catalog_cache[key] = load_catalog(extra)
    return key


def catalog_by_key(key: str) -> dict[str, ModelEntry]:
    """The catalog :func:`catalog_key` named; the result must not be mutated."""
    return _catalog_cache[key] if key else _packaged()


def cached_catalog(extra: list[dict] | None) -> dict[str, ModelEntry]:
    """``load_catalog`` memoised on the content of ``extra``; the result must not be mutated."""
    return catalog_by_key(catalog_key(extra))


MODEL_LIST_KEYS = ("models", "models_always", "models_pinned", "models_resident")


def check_host_data(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for each model-related problem in one host's data.

    Checks ``model_catalog_extra`` and that every tag in ``models``, ``models_always``,
    ``models_pinned`` and ``models_resident`` is either in the catalog or a valid Ollama name (an
    unknown but valid name is not an error here: the planner reports it as skipped, since it
    cannot be sized).
    """
    problems: list[tuple[str, str]] = []
    try:
        catalog = cached_catalog(data.get(EXTRA_KEY) or None)
    except CatalogError as exc:
        problems.append((exc.key, exc.message))
        catalog = _packaged()
    for key in MODEL_LIST_KEYS:
        for item in data.get(key) or ():
            problem = _list_item_problem(item, catalog)
            if problem:
                problems.append((key, problem))
    return problems


def _list_item_problem(item: Any, catalog: Mapping[str, ModelEntry]) -> str | None:
    if isinstance(item, str) and "://" in item:
        return (
            f"{item!r}: a model list names models without a scheme; a plain-HTTP registry is "
            "set with ollama_registry and ollama_registry_insecure"
        )
    if item in catalog or is_valid_ollama_name(item):
        return None
    return f"{item!r} is neither in the model catalog nor a valid Ollama model name"
