"""Which models each host serves: the ``provision plan`` shape.

``plan_host(name, facts, data)`` takes one host's facts (the ``provision facts --json`` host
shape) and its resolved host data (``settings.resolve``) and returns::

    {"gpus": [{"index", "name", "uuid", "memory_total_mib", "usable_mib", ...}],
     "vram_mib": total GPU memory, "budget_mib": what models may use,
     "mode": "gpu" | "cpu" | "none", "reason": why this mode and budget,
     "models": [{"tag", "estimated_vram_mib", "gpus": [indexes], "reason", ...}],
     "skipped": [{"tag", "reason"}],
     "profile": profile used or None, "ram_mib": host memory or None,
     "settings": the Ollama settings the estimate assumed}

Mode
  ``gpu``  nvidia-smi lists GPUs (state ``ok``) and data ``gpu`` is not false. Each GPU offers
           ``vram_headroom x (memory - vram_reserve_mib)``; a GPU with MIG enabled is left out
           (Ollama sees its MIG instances, not the GPU). ``budget_mib`` is the sum of the offers.
  ``cpu``  data ``gpu: false``, or no NVIDIA GPU at all (nvidia-smi finds none and ``lspci``
           shows no NVIDIA display controller). Budget ``vram_headroom x (RAM - ram_reserve_mib)``;
           the ``cpu`` profile replaces the default ``general`` profile (any other profile the
           operator chose is kept); models run on CPU, so their ``gpus`` are ``[]``.
  ``none`` NVIDIA hardware but no usable driver yet (``no-driver``, ``driver-mismatch``,
           ``error``), or ``gpu: true`` without a GPU: no models; the reason says what to do.

Models
  * ``models`` set (even empty): exactly those tags, in order. Each is sized and placed; one
    that does not fit goes to ``skipped`` with what it needs and what the host offers. A valid
    Ollama name that is not in the catalog cannot be sized, so it is skipped too, with a hint to
    add it to ``model_catalog_extra`` (an invalid name is skipped as well; inventory validation
    rejects it earlier, ``catalog.check_host_data``).
  * otherwise the profile (``data/profiles.toml``): its ``first`` categories one model each,
    then the strongest remaining models of its categories, up to ``models_max``.
  * then ``models_always`` and ``models_pinned``, each when it fits (else skipped).

Each model is sized and placed on its own: Ollama loads a model on request and evicts the others
when memory is short, so the models of a plan are not summed. The exception is the resident set
(``models_resident``): those models must stay loaded together, so they are placed side by side on
the GPUs (each on the GPU with the most room left, split when none holds it), in order, within
``OLLAMA_MAX_LOADED_MODELS`` (0: Ollama's 3 per GPU); the ones that do not fit are reported in
``resident.left_out``. The other models load on demand: ``cold_load_s`` is their blob read from
the store at ``model_store_read_mb_s``, ``fits_beside_resident`` whether the GPU with the most
room left holds them without evicting a resident model.

Deterministic: candidates sorted by rank (descending), then download size, then tag; GPUs by
offer (descending), then index. Estimates and placements are cached per (model, settings) and
per GPU shape, and a whole selection per (GPU shape, settings), so a fleet of identical hosts
costs one plan (``plan_fleet``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from . import settings
from .catalog import CATEGORIES, ModelEntry, catalog_by_key, catalog_key
from .estimator import (
    Estimate,
    estimate,
    flash_attention_supported,
    largest_offer,
    place,
    rules_for,
    usable_mib,
)
from .model_name import ModelName, ModelNameError, is_valid
from .nvidia_smi import gpus_on_bus

WHAT_IF_MAX_GPUS = 64
WHAT_IF_MAX_MIB = 1024 * 1024  # 1 TiB per GPU
WHAT_IF_EXAMPLE = "2x NVIDIA A100-SXM4-80GB:81920"


class WhatIfError(ValueError):
    """A ``--what-if`` GPU spec is malformed or absurd."""


# --- profiles -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    doc: str
    categories: tuple[str, ...]
    first: tuple[str, ...] = ()
    max_params_b: float | None = None


@cache
def load_profiles() -> dict[str, Profile]:
    """The profiles of ``data/profiles.toml``, by name (checked on load)."""
    text = (resources.files("provisioner") / "data" / "profiles.toml").read_text(encoding="utf-8")
    profiles: dict[str, Profile] = {}
    for name, table in tomllib.loads(text).items():
        unknown = set(table) - {"doc", "categories", "first", "max_params_b"}
        categories = tuple(table.get("categories", ()))
        first = tuple(table.get("first", ()))
        bad = [c for c in categories if c not in CATEGORIES]
        if unknown or not categories or bad or not set(first) <= set(categories):
            raise ValueError(f"data/profiles.toml: profile {name!r} is malformed")
        max_params = table.get("max_params_b")
        profiles[name] = Profile(
            name=name,
            doc=table.get("doc", ""),
            categories=categories,
            first=first,
            max_params_b=float(max_params) if max_params is not None else None,
        )
    return profiles


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    context: int
    parallel: int
    kv_cache_type: str
    batch_size: int
    reserve_mib: int
    version: str
    flash_attention: bool
    margin_mib: int  # free memory the release's fit leaves per GPU (on top of the reserve)
    headroom: float
    ram_reserve_mib: int
    models: tuple[str, ...] | None
    profile: str
    always: tuple[str, ...]
    pinned: tuple[str, ...]
    models_max: int
    resident: tuple[str, ...] = ()
    max_loaded: int = 0  # OLLAMA_MAX_LOADED_MODELS; 0: Ollama's 3 per GPU
    read_mb_s: int = 500  # model store read rate, for cold loads


def _settings(data: Mapping[str, Any]) -> _Settings:
    h = settings.host_settings(data)
    kv_type = h.text("ollama_kv_cache_type")
    if not h.flag("ollama_flash_attention"):
        kv_type = "f16"  # Ollama ignores a quantised KV cache without flash attention
    models = h.optional_list_of("models")
    version = h.text("ollama_version")
    return _Settings(
        context=h.integer("ollama_context_length"),
        parallel=h.integer("ollama_num_parallel"),
        kv_cache_type=kv_type,
        batch_size=h.integer("ollama_batch_size"),
        reserve_mib=h.integer("vram_reserve_mib"),
        version=version,
        flash_attention=h.flag("ollama_flash_attention"),
        margin_mib=rules_for(version).fit_margin_mib,
        headroom=h.number("vram_headroom"),
        ram_reserve_mib=h.integer("ram_reserve_mib"),
        models=tuple(models) if models is not None else None,
        profile=h.text("model_profile"),
        always=tuple(h.list_of("models_always")),
        pinned=tuple(h.list_of("models_pinned")),
        models_max=h.integer("models_max"),
        resident=tuple(h.list_of("models_resident")),
        max_loaded=h.integer("ollama_max_loaded_models"),
        read_mb_s=h.integer("model_store_read_mb_s"),
    )


def _nvidia_pci_gpus(pci: Any) -> int | None:
    """NVIDIA GPUs on the PCI bus (``nvidia_smi.gpus_on_bus``); None when lspci/sysfs gave
    nothing usable."""
    if not isinstance(pci, list):
        return None
    return len(gpus_on_bus(pci))


def _mig_enabled(gpu: Mapping[str, Any]) -> bool:
    mig = gpu.get("mig")
    return mig is True or (isinstance(mig, str) and mig.strip().lower() in ("enabled", "on"))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class _Host:
    mode: str
    reason: str
    gpus: list[dict[str, Any]]
    devices: tuple[tuple[int, int], ...]  # (index, memory_total_mib) the planner may use
    vram_mib: int
    budget_mib: int
    ram_mib: int | None


def _gpu_host(raw_gpus: list[Any], s: _Settings, ram: int | None) -> _Host:
    gpus: list[dict[str, Any]] = []
    devices: list[tuple[int, int]] = []
    left_out: list[str] = []
    for n, gpu in enumerate(raw_gpus):
        gpu = gpu if isinstance(gpu, Mapping) else {}
        index = _int_or_none(gpu.get("index"))
        index = n if index is None else index
        memory = _int_or_none(gpu.get("memory_total_mib"))
        out = {
            "index": index,
            "name": gpu.get("name"),
            "uuid": gpu.get("uuid"),
            "memory_total_mib": memory,
            "usable_mib": 0,
        }
        if _mig_enabled(gpu):
            out["excluded"] = "MIG enabled: Ollama sees its MIG instances, not the whole GPU"
            left_out.append(f"GPU {index} (MIG enabled)")
        elif memory is None or memory <= 0:
            out["excluded"] = "memory.total unknown"
            left_out.append(f"GPU {index} (memory unknown)")
        else:
            out["usable_mib"] = usable_mib(memory, s.reserve_mib + s.margin_mib, s.headroom)
            devices.append((index, memory))
        gpus.append(out)
    gpus.sort(key=lambda g: g["index"])
    devices.sort()
    vram = sum(g["memory_total_mib"] or 0 for g in gpus)
    budget = sum(g["usable_mib"] for g in gpus)
    reason = (
        f"{len(gpus)} NVIDIA GPU(s), {vram} MiB; each GPU offers "
        f"{s.headroom:g} x (memory - {s.reserve_mib} MiB reserve"
        + (f" - {s.margin_mib} MiB llama-server fit margin)" if s.margin_mib else ")")
    )
    if left_out:
        reason += "; left out: " + ", ".join(left_out)
    if not devices:
        return _Host("none", reason + "; no GPU left to plan on", gpus, (), vram, 0, ram)
    return _Host("gpu", reason, gpus, tuple(devices), vram, budget, ram)


def _cpu_host(why: str, s: _Settings, ram: int | None) -> _Host:
    if ram is None or ram <= 0:
        reason = f"CPU-only ({why}); host memory unknown, so nothing can be planned"
        return _Host("cpu", reason, [], (), 0, 0, ram)
    budget = usable_mib(ram, s.ram_reserve_mib, s.headroom)
    reason = (
        f"CPU-only ({why}); models sized to RAM: {s.headroom:g} x "
        f"({ram} MiB - {s.ram_reserve_mib} MiB reserve) = {budget} MiB"
    )
    return _Host("cpu", reason, [], (), 0, budget, ram)


# nvidia-smi states that, with no NVIDIA GPU on the PCI bus, mean "a host without a GPU".
_NO_GPU_STATES = ("no-gpu", "no-driver", "error", "ok")


def _classify(facts: Mapping[str, Any], data: Mapping[str, Any], s: _Settings) -> _Host:
    ram = _int_or_none(facts.get("memory_total_mib"))
    gpu_flag = data.get("gpu")
    state = facts.get("gpu_state")
    raw_gpus = facts.get("gpus") or []
    pci_gpus = _nvidia_pci_gpus(facts.get("pci_devices"))

    def none(reason: str) -> _Host:
        return _Host("none", reason, [], (), 0, 0, ram)

    if not facts:
        return none("no facts were gathered for this host")
    if state == "unreachable":
        return none(f"host unreachable: {facts.get('error') or 'no connection'}")
    if gpu_flag is False:
        return _cpu_host("gpu: false in host data", s, ram)
    if state == "ok" and raw_gpus:
        return _gpu_host(list(raw_gpus), s, ram)
    no_gpu = pci_gpus == 0 and state in _NO_GPU_STATES
    no_gpu = no_gpu or (pci_gpus is None and state == "no-gpu")
    if not no_gpu:
        seen = f"{pci_gpus} NVIDIA PCI GPU(s) found" if pci_gpus else "no lspci device list"
        if state == "no-driver":
            return none(
                f"driver not installed yet: {seen} but nvidia-smi cannot talk to a driver; "
                "run provision apply first, then plan again"
            )
        if state == "driver-mismatch":
            return none(
                f"driver/library version mismatch ({seen}): the loaded kernel module is not the "
                "installed driver; run provision apply (it reboots or reloads), then plan again"
            )
        if state == "error":
            return none(
                f"nvidia-smi failed ({seen}): {facts.get('error') or 'unknown error'}; "
                "run provision apply first, then plan again"
            )
        return none(
            f"{seen} but nvidia-smi lists no GPU (state {state}); "
            "run provision apply first, then plan again"
        )
    if gpu_flag is True:
        return none(f"gpu: true in host data but no NVIDIA GPU found (nvidia-smi: {state})")
    return _cpu_host(f"no NVIDIA GPU: nvidia-smi {state}, lspci shows none", s, ram)


# --- selection ----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _candidates(catalog_key: str, profile: Profile) -> tuple[ModelEntry, ...]:
    wanted = set(profile.categories)
    entries = [
        e
        for e in catalog_by_key(catalog_key).values()
        if wanted.intersection(e.categories)
        and (profile.max_params_b is None or e.params_b <= profile.max_params_b)
    ]
    return tuple(sorted(entries, key=lambda e: (-e.rank, e.size_bytes, e.tag)))


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a selection depends on besides the settings: the devices or the RAM budget."""

    mode: str
    devices: tuple[tuple[int, int], ...]
    budget_mib: int


# (tag, estimated_vram_mib, gpus, reason, via, rank, context) and (tag, reason)
_Model = tuple[str, int, tuple[int, ...], str, str, int, int]
_Skip = tuple[str, str]


class _Selector:
    def __init__(self, shape: _Shape, s: _Settings, catalog_key: str) -> None:
        self.shape, self.s, self.catalog_key = shape, s, catalog_key
        self.catalog = catalog_by_key(catalog_key)
        self.reserve = s.reserve_mib + s.margin_mib
        self.offers = {i: usable_mib(m, self.reserve, s.headroom) for i, m in shape.devices}
        # Ollama steps its automatic batch down against the free memory of the GPU it picks.
        self.available = max((m - s.reserve_mib for _, m in shape.devices), default=0)
        self.models: list[_Model] = []
        self.skipped: list[_Skip] = []
        self.chosen: set[str] = set()

    # sizing
    def estimate(self, entry: ModelEntry) -> Estimate:
        s = self.s
        return estimate(
            entry,
            s.context,
            s.parallel,
            s.kv_cache_type,
            s.batch_size,
            version=s.version,
            flash_attention=s.flash_attention,
            available_mib=self.available,
        )

    def fit(self, entry: ModelEntry) -> tuple[Estimate, list[int] | None]:
        est = self.estimate(entry)
        if self.shape.mode == "gpu":
            s = self.s
            gpus = place(est, list(self.shape.devices), s.reserve_mib, s.headroom, s.margin_mib)
            return est, gpus
        return est, ([] if est.total_mib <= self.shape.budget_mib else None)

    def fit_text(self, est: Estimate, gpus: list[int]) -> str:
        if self.shape.mode != "gpu":
            return f"{est.total_mib} MiB of the {self.shape.budget_mib} MiB RAM budget"
        offers = self.offers
        if len(gpus) == 1:
            return f"{est.total_mib} MiB on GPU {gpus[0]} ({offers[gpus[0]]} MiB usable)"
        usable = sum(offers[i] for i in gpus)
        return (
            f"{est.footprint_mib(len(gpus))} MiB split over GPUs {','.join(map(str, gpus))} "
            f"({usable} MiB usable; {est.total_mib} MiB does not fit one GPU)"
        )

    def need_text(self, entry: ModelEntry, est: Estimate) -> str:
        s = self.s
        vision = f" + vision {est.vision_mib}" if est.vision_mib else ""
        need = (
            f"needs {est.total_mib} MiB (weights {est.weights_mib} + KV cache {est.kv_mib} + "
            f"graph {est.graph_mib}{vision}, at context {est.context} x {s.parallel} parallel, "
            f"{s.kv_cache_type} KV, batch {est.batch})"
        )
        if self.shape.mode == "gpu":
            offer = largest_offer(list(self.shape.devices), self.reserve, s.headroom, est.graph_mib)
            return f"{need}; the largest placement on this host offers {offer} MiB"
        return f"{need}; the RAM budget is {self.shape.budget_mib} MiB"

    # recording
    def take(self, entry: ModelEntry, est: Estimate, gpus: list[int], why: str, via: str) -> None:
        mib = est.footprint_mib(len(gpus)) if gpus else est.total_mib
        reason = f"{why}; {self.fit_text(est, gpus)}"
        self.models.append((entry.tag, mib, tuple(gpus), reason, via, entry.rank, est.context))
        self.chosen.add(entry.tag)

    def skip(self, tag: str, reason: str) -> None:
        if tag not in self.chosen and all(t != tag for t, _ in self.skipped):
            self.skipped.append((tag, reason))

    def unknown_hint(self, tag: str) -> str:
        model = tag.rsplit("/", 1)[-1].split(":", 1)[0]
        known = sorted(
            (e for e in self.catalog.values() if e.tag.split(":", 1)[0] == model),
            key=lambda e: (e.params_b, e.tag),
        )
        if known:
            return f" (the catalog has {', '.join(e.tag for e in known)})"
        return ""

    def wanted(self, raw: Any, why: str, via: str) -> None:
        """An operator-named tag: take it when it fits, else say why not."""
        try:
            tag = ModelName.parse(raw).canonical
        except ModelNameError:
            self.skip(str(raw), "not a valid Ollama model name ([host/][namespace/]model[:tag])")
            return
        if tag in self.chosen:
            return
        entry = self.catalog.get(tag)
        if entry is None:
            self.skip(
                tag,
                "not in the model catalog, so it cannot be sized: add an entry to "
                f"model_catalog_extra{self.unknown_hint(tag)}",
            )
            return
        est, gpus = self.fit(entry)
        if gpus is None:
            self.skip(tag, self.need_text(entry, est))
        else:
            self.take(entry, est, gpus, why, via)

    def profile(self, profile: Profile) -> None:
        candidates = _candidates(self.catalog_key, profile)
        limit = self.s.models_max
        for category in profile.first:
            if len(self.models) >= limit:
                return
            for entry in candidates:
                if category in entry.categories and entry.tag not in self.chosen:
                    est, gpus = self.fit(entry)
                    if gpus is not None:
                        why = (
                            f"profile {profile.name}: strongest {category} model that fits "
                            f"(rank {entry.rank})"
                        )
                        self.take(entry, est, gpus, why, f"profile:{profile.name}")
                        break
        for entry in candidates:
            if len(self.models) >= limit:
                return
            if entry.tag in self.chosen:
                continue
            est, gpus = self.fit(entry)
            if gpus is not None:
                cats = "/".join(c for c in entry.categories if c in profile.categories)
                why = (
                    f"profile {profile.name}: next strongest {cats} model that fits "
                    f"(rank {entry.rank})"
                )
                self.take(entry, est, gpus, why, f"profile:{profile.name}")


@lru_cache(maxsize=4096)
def _select(
    shape: _Shape, s: _Settings, catalog_key: str, profile_name: str | None
) -> tuple[tuple[_Model, ...], tuple[_Skip, ...]]:
    selector = _Selector(shape, s, catalog_key)
    if s.models is not None:
        for raw in s.models:
            selector.wanted(raw, "listed in models", "models")
    elif profile_name is not None:
        selector.profile(load_profiles()[profile_name])
    for raw in s.always:
        selector.wanted(raw, "wanted on top of the plan (models_always)", "models_always")
    for raw in s.pinned:
        selector.wanted(raw, "pinned by the operator (models_pinned)", "models_pinned")
    for raw in s.resident:
        selector.wanted(raw, "must stay loaded (models_resident)", "models_resident")
    return tuple(selector.models), tuple(selector.skipped)


# --- resident set ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resident:
    placed: tuple[tuple[str, int, tuple[int, ...]], ...]  # (tag, footprint MiB, gpus)
    left_out: tuple[tuple[str, str], ...]  # (tag, reason)
    limit: int  # OLLAMA_MAX_LOADED_MODELS in effect
    left: tuple[tuple[int, int], ...]  # (gpu index or -1 for RAM, MiB left beside them)


def _place_beside(est: Estimate, room: dict[int, int]) -> tuple[int, ...] | None:
    """GPUs for ``est`` within what the models already resident left (``room``), or None."""
    order = sorted(room, key=lambda i: (-room[i], i))
    if order and est.total_mib <= room[order[0]]:
        return (order[0],)
    need, chosen = est.weights_mib + est.kv_mib + est.vision_mib, []
    for idx in order:
        if room[idx] <= est.graph_mib:
            break
        chosen.append(idx)
        need -= room[idx] - est.graph_mib
        if len(chosen) >= 2 and need <= 0:
            return tuple(sorted(chosen))
    return None


def _take_room(est: Estimate, gpus: tuple[int, ...], room: dict[int, int]) -> None:
    if len(gpus) == 1:
        room[gpus[0]] -= est.total_mib
        return
    need = est.weights_mib + est.kv_mib + est.vision_mib
    for idx in sorted(gpus, key=lambda i: -room[i]):
        share = min(need, room[idx] - est.graph_mib)
        room[idx] -= share + est.graph_mib
        need -= share


@lru_cache(maxsize=4096)
def _resident(shape: _Shape, s: _Settings, catalog_key: str, planned: tuple[str, ...]) -> _Resident:
    """Place ``models_resident`` side by side, in order, within OLLAMA_MAX_LOADED_MODELS."""
    selector = _Selector(shape, s, catalog_key)
    if shape.mode == "gpu":
        room = dict(selector.offers)
    else:
        room = {-1: shape.budget_mib}
    limit = s.max_loaded or 3 * max(1, len(shape.devices))
    placed: list[tuple[str, int, tuple[int, ...]]] = []
    left_out: list[tuple[str, str]] = []
    for raw in dict.fromkeys(s.resident):
        tag = ModelName.parse(raw).canonical if is_valid(raw) else str(raw)
        if tag not in planned:
            left_out.append((tag, "not in the plan (see skipped)"))
            continue
        if len(placed) >= limit:
            left_out.append((tag, f"OLLAMA_MAX_LOADED_MODELS allows {limit} loaded models"))
            continue
        est = selector.estimate(selector.catalog[tag])
        gpus = _place_beside(est, room)
        if gpus is None:
            left = ", ".join(f"{m} MiB" for m in sorted(room.values(), reverse=True))
            left_out.append(
                (tag, f"needs {est.total_mib} MiB beside the resident models; left: {left}")
            )
            continue
        _take_room(est, gpus, room)
        footprint = est.footprint_mib(len(gpus))
        placed.append((tag, footprint, () if shape.mode != "gpu" else gpus))
    return _Resident(tuple(placed), tuple(left_out), limit, tuple(sorted(room.items())))


def _resident_json(res: _Resident, s: _Settings) -> dict:
    return {
        "models": [tag for tag, _, _ in res.placed],
        "total_mib": sum(mib for _, mib, _ in res.placed),
        "max_loaded_models": res.limit,
        "fits": not res.left_out,
        "left_out": [{"tag": tag, "reason": why} for tag, why in res.left_out],
        "left_mib": {("ram" if i < 0 else str(i)): mib for i, mib in res.left},
        "parallel": s.parallel,
    }


def _model_json(model: _Model, res: _Resident | None, s: _Settings, catalog: dict) -> dict:
    tag, mib, gpus, why, via, rank, context = model
    out = {
        "tag": tag,
        "estimated_vram_mib": mib,
        "gpus": list(gpus),
        "reason": why,
        "via": via,
        "rank": rank,
        "context": context,
        "parallel": s.parallel,
        "resident": False,
    }
    entry = catalog.get(tag)
    placed = {t: (m, g) for t, m, g in res.placed} if res else {}
    if tag in placed:
        out["estimated_vram_mib"], gpus = placed[tag]
        out["gpus"] = list(gpus)
        out["resident"] = True
    elif entry is not None:
        # an on-demand model is read from the store when a request needs it
        out["cold_load_s"] = round(entry.size_bytes / (s.read_mb_s * 1e6), 1)
        if res is not None and res.placed:
            room = max((m for _, m in res.left), default=0)
            out["fits_beside_resident"] = mib <= room
    return out


# --- public -------------------------------------------------------------------------------------


def plan_host(name: str, facts: Mapping[str, Any] | None, data: Mapping[str, Any]) -> dict:
    """The plan of one host (see the module docstring for the shape and the rules).

    ``data`` is host data or ``settings.HostSettings`` (resolved once, here if not before).

    Raises ``catalog.CatalogError`` when the host's ``model_catalog_extra`` is malformed.
    """
    facts = facts or {}
    h = settings.host_settings(data)
    s = _settings(h)
    host = _classify(facts, h, s)
    s = _with_flash_attention(s, host, facts)
    profile: str | None = None
    if s.models is None:
        profile = s.profile
        if host.mode == "cpu" and profile == "general":
            profile = "cpu"
    reason = host.reason
    models: tuple[_Model, ...] = ()
    skipped: tuple[_Skip, ...] = ()
    resident: _Resident | None = None
    key = catalog_key(h.list_of("model_catalog_extra"))
    if host.mode != "none":
        shape = _Shape(host.mode, host.devices, host.budget_mib)
        models, skipped = _select(shape, s, key, profile)
        if s.resident:
            resident = _resident(shape, s, key, tuple(m[0] for m in models))
        if profile is not None and not any(m[4].startswith("profile:") for m in models):
            reason += f"; no model of profile {profile} fits"
    return {
        "gpus": [dict(g) for g in host.gpus],
        "vram_mib": host.vram_mib,
        "budget_mib": host.budget_mib,
        "mode": host.mode,
        "reason": reason,
        "models": [_model_json(m, resident, s, catalog_by_key(key)) for m in models],
        "resident": _resident_json(resident, s) if resident is not None else None,
        "skipped": [{"tag": tag, "reason": why} for tag, why in skipped],
        "profile": profile if host.mode != "none" else None,
        "ram_mib": host.ram_mib,
        "settings": {
            "context_length": s.context,
            "num_parallel": s.parallel,
            "kv_cache_type": s.kv_cache_type,
            "batch_size": s.batch_size,
            "ollama_version": s.version,
            "flash_attention": s.flash_attention,
            "fit_margin_mib": s.margin_mib,
        },
    }


def _with_flash_attention(s: _Settings, host: _Host, facts: Mapping[str, Any]) -> _Settings:
    """Flash attention off (so an f16 KV cache) when a planned GPU's compute capability lacks it."""
    if not s.flash_attention or host.mode != "gpu":
        return s
    used = {index for index, _ in host.devices}
    caps = []
    for n, gpu in enumerate(facts.get("gpus") or []):
        if isinstance(gpu, Mapping):
            index = _int_or_none(gpu.get("index"))
            if (n if index is None else index) in used:
                caps.append(gpu.get("compute_cap"))
    if flash_attention_supported(caps):
        return s
    return replace(s, flash_attention=False, kv_cache_type="f16")


def wanted_models(
    planned: Iterable[str | Mapping[str, Any]], pinned: Iterable[str] = ()
) -> list[str]:
    """The models a host must hold: the plan's models, then the operator's pinned ones.

    ``planned`` is a plan's ``models`` (dicts with a ``tag``) or plain names; ``models_always``
    reaches it through the plan (when it fits), and ``pinned`` (``models_pinned``) is added
    whether it fits or not, since a pinned model is never pruned. Names come out in their
    canonical form (:mod:`provisioner.model_name`), each once, first mention first, so
    ``llama3.1:8b`` and ``Llama3.1:8B`` are one model. This is the one merge of "planned +
    pinned": the models operation, ``provision models sync|update|mirror`` and verify use it.

    Raises ``model_name.ModelNameError`` (a ``ValueError``) for a name Ollama refuses.
    """
    names = [item["tag"] if isinstance(item, Mapping) else item for item in planned]
    names += list(pinned)
    return list(dict.fromkeys(ModelName.parse(name).canonical for name in names))


def plan_fleet(hosts: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict:
    """``{"hosts": {name: plan_host(name, facts, data)}}`` for ``{name: (facts, data)}``.

    Hosts come in natural name order (``web-2`` before ``web-10``).
    """
    ordered = sorted(hosts, key=_natural)
    return {"hosts": {name: plan_host(name, *hosts[name]) for name in ordered}}


def _natural(name: str) -> tuple:
    """Sort key: ``web-2`` before ``web-10`` (runs of digits compare as numbers)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name))


_WHAT_IF = re.compile(
    r"^\s*(?:(?P<count>[+-]?\d+)\s*[x×]\s*)?(?P<name>.*?)\s*:\s*(?P<mib>[^:]*?)\s*$",
    re.IGNORECASE,
)


def parse_what_if(spec: str) -> list[dict]:
    """GPU dicts, shaped like the facts' ``gpus``, for one ``[N x ]GPU-NAME:MiB`` spec.

    Raises ``WhatIfError`` for a malformed spec, a count outside 1..64, or memory that is not a
    whole positive number of MiB up to 1 TiB per GPU. The message does not repeat the spec:
    callers prefix it (``--what-if '2x A100:0': memory must be positive, ...``).
    """
    match = _WHAT_IF.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise WhatIfError(f"expected [N x ]GPU-NAME:MiB, e.g. {WHAT_IF_EXAMPLE!r}")
    name = match["name"]
    if not name:
        raise WhatIfError(f"the GPU name is empty (e.g. {WHAT_IF_EXAMPLE!r})")
    count = int(match["count"]) if match["count"] is not None else 1
    if not 1 <= count <= WHAT_IF_MAX_GPUS:
        raise WhatIfError(f"GPU count must be 1 to {WHAT_IF_MAX_GPUS}, got {count}")
    mib_text = re.sub(r"\s*mib$", "", match["mib"], flags=re.IGNORECASE)
    if not re.fullmatch(r"[+-]?\d+", mib_text):
        raise WhatIfError(
            f"memory must be a whole number of MiB as nvidia-smi reports it "
            f"(e.g. 81920 for an 80 GB card), got {match['mib']!r}"
        )
    mib = int(mib_text)
    if mib <= 0:
        raise WhatIfError(f"memory must be positive, got {mib} MiB")
    if mib > WHAT_IF_MAX_MIB:
        raise WhatIfError(f"{mib} MiB per GPU is absurd (more than 1 TiB = {WHAT_IF_MAX_MIB} MiB)")
    return [
        {
            "index": i,
            "name": name,
            "uuid": f"GPU-what-if-{i}",
            "memory_total_mib": mib,
            "compute_cap": None,
            "pci_bus_id": None,
            "mig": None,
        }
        for i in range(count)
    ]


def what_if_facts(gpus: list[dict]) -> dict:
    """Facts of an imaginary host with these GPUs (the ``provision facts --json`` host shape)."""
    return {
        "gpu_state": "ok",
        "gpus": gpus,
        "driver_version": None,
        "cuda_version": None,
        "os": {},
        "memory_total_mib": None,
        "pci_devices": [],
    }


def plan_what_if(specs: list[str], data: Mapping[str, Any]) -> dict:
    """``plan_fleet`` of one imaginary host per spec, named ``what-if-1``, ``what-if-2``, ..."""
    hosts = {
        f"what-if-{n}": (what_if_facts(parse_what_if(spec)), data)
        for n, spec in enumerate(specs, 1)
    }
    return {"hosts": {name: plan_host(name, *hosts[name]) for name in hosts}}
