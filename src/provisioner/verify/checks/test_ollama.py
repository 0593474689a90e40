"""Ollama layer: the service, the pinned binary, the API, where it listens, the planned
models, and a generation with the smallest of them fully on the GPU (on CPU hosts: on CPU)."""

from __future__ import annotations

import pytest

from provisioner import addresses
from provisioner.deploys.ollama import FIREWALL_TABLE
from provisioner.verify import parse
from provisioner.verify.context import HostContext, normalise

pytestmark = pytest.mark.layer("ollama")

SERVICE = "ollama"
# ollama_expose values under which Ollama itself may listen beyond loopback.
EXPOSED_DIRECTLY = ("allowlist", "proxy+allowlist")


def test_service(target: HostContext, request: pytest.FixtureRequest) -> None:
    """``ollama.service`` is enabled and active."""
    state = target.unit_state(f"{SERVICE}.service")
    if state != "enabled, active":
        target.fail(f"{SERVICE}.service", "enabled, active", state)
    target.passed(request, f"{SERVICE}.service enabled and active")


def test_binary_version(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The ``ollama`` binary on the PATH is the pinned ``ollama_version``."""
    wanted = target.data.text("ollama_version")
    result = target.run('PATH="$PATH:/usr/local/bin:/usr/bin"; ollama --version 2>&1')
    version = parse.ollama_version(result.stdout)
    if version is None:
        target.fail(
            "ollama --version",
            wanted or "a version",
            (result.stdout.strip() or f"exit {result.rc}")[:200],
        )
    if wanted and version != wanted:
        target.fail("ollama binary version", wanted, version)
    target.passed(request, f"ollama {version}")


def test_api_answers(target: HostContext, request: pytest.FixtureRequest) -> None:
    """``GET /api/version`` answers at the configured address with the pinned version (an
    old version here means the service was not restarted after an upgrade)."""
    url = target.ollama_url("/api/version")
    answer = target.http("GET", url)
    document = answer.json() if answer.status == 200 else None
    if not isinstance(document, dict) or "version" not in document:
        target.fail(f"GET {url}", "HTTP 200 with a version", answer.describe())
    wanted = target.data.text("ollama_version")
    if wanted and document["version"] != wanted:
        target.fail("version of the running server", wanted, document["version"], "restart ollama")
    target.passed(request, f"{url} answers, version {document['version']}")


def test_listen_address(target: HostContext, request: pytest.FixtureRequest) -> None:
    """Ollama listens only on ``ollama_listen_address``; beyond loopback only when
    ``ollama_expose`` puts an allowlist in front of it."""
    bind, port = target.ollama_bind()
    expose = target.data.text("ollama_expose")
    table = target.output("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true")
    listening = sorted({address for address, p in parse.tcp_listeners(table) if p == port})
    shown = ", ".join(f"{a}:{port}" for a in listening) or "nothing"
    if not listening:
        target.fail(f"listener on port {port}", f"{bind}:{port}", "nothing listens there")
    if expose not in EXPOSED_DIRECTLY:
        public = [a for a in listening if not addresses.is_loopback(a)]
        if public:
            target.fail(
                f"listeners on port {port}",
                f"loopback only (ollama_expose: {expose})",
                shown,
                "Ollama has no authentication; anyone who reaches it can use and replace models",
            )
    others = [a for a in listening if not addresses.same_listener(bind, a)]
    if others:
        target.fail(f"listeners on port {port}", f"{bind}:{port} only", shown)
    target.passed(request, f"listening on {shown} (ollama_expose: {expose})")


def test_proxy_requires_auth(target: HostContext, request: pytest.FixtureRequest) -> None:
    """With ``ollama_expose`` proxy modes, the HTTPS proxy refuses a request without
    credentials (401)."""
    expose = target.data.text("ollama_expose")
    if not expose.startswith("proxy"):
        target.skip(f"no proxy (ollama_expose: {expose})")
    port = target.data.integer("ollama_proxy_port")
    url = f"https://127.0.0.1:{port}/api/tags"
    answer = target.http("GET", url, insecure_tls=True)
    if answer.status != 401:
        target.fail(f"GET {url} without credentials", "HTTP 401", answer.describe())
    target.passed(request, f"{url} refuses requests without credentials (401)")


def test_allowlist(target: HostContext, request: pytest.FixtureRequest) -> None:
    """With ``ollama_expose`` allowlist modes, the nftables ruleset names every client
    network of ``ollama_allow_networks``."""
    expose = target.data.text("ollama_expose")
    if not expose.endswith("allowlist"):
        target.skip(f"no allowlist (ollama_expose: {expose})")
    result = target.run("nft list ruleset 2>&1")
    if result.rc != 0:
        target.skip(f"cannot read the nftables ruleset as this user: {result.stdout.strip()[:120]}")
    networks = [str(n) for n in target.data.list_of("ollama_allow_networks")]
    ruleset = result.stdout
    if f"table inet {FIREWALL_TABLE}" not in ruleset:
        target.fail("nftables allowlist", f"table {FIREWALL_TABLE}", "not in the ruleset")
    missing = [n for n in networks if n not in ruleset]
    if not networks or missing:
        target.fail(
            "nftables allowlist",
            "every network of ollama_allow_networks",
            "missing: " + (", ".join(missing) or "(none configured)"),
        )
    target.passed(request, "allowlist: " + ", ".join(networks))


def _planned(target: HostContext) -> list[dict]:
    planned = target.planned_models()
    if not planned:
        target.skip("no models planned for this host")
    return planned


def test_models_present(target: HostContext, request: pytest.FixtureRequest) -> None:
    """Every planned (and pinned) model is in ``/api/tags``, with the expected digest when
    the expectations carry one."""
    planned = _planned(target)
    installed = target.installed_models()
    if installed is None:
        target.fail("GET /api/tags", "HTTP 200 with the models", target.ollama_tags().describe())
    missing = [m["tag"] for m in planned if m["tag"] not in installed]
    if missing:
        present = ", ".join(sorted(installed)) or "none"
        target.fail(
            "planned models in /api/tags", ", ".join(missing), f"missing (present: {present})"
        )
    wrong = []
    for model in planned:
        have = parse.digest_hex(installed[model["tag"]].get("digest"))
        if model["digest"] and have != model["digest"]:
            wrong.append(
                f"{model['tag']} {have[:12] if have else '?'} (expected {model['digest'][:12]})"
            )
    if wrong:
        target.fail(
            "model digests", "the planned digests", ", ".join(wrong), "run provision models update"
        )
    target.passed(request, ", ".join(m["tag"] for m in planned))


def test_generate(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The smallest planned model answers ``/api/generate`` with text."""
    _planned(target)
    model = target.smallest_planned_model()
    answer = target.generation(model)
    document = answer.json() if answer.status == 200 else None
    text = document.get("response") if isinstance(document, dict) else None
    if not isinstance(text, str) or not text.strip():
        target.fail(f"POST /api/generate with {model}", "HTTP 200 with text", answer.describe())
    target.passed(request, f"{model} answered {text.strip()[:40]!r}")


def test_model_on_gpu(target: HostContext, request: pytest.FixtureRequest) -> None:
    """Loaded, the smallest planned model sits fully in GPU memory (``/api/ps``:
    ``size_vram == size``); on a CPU-only host fully in RAM (``size_vram == 0``)."""
    _planned(target)
    model = target.smallest_planned_model()
    answer = target.generation(model)
    if answer.status != 200:
        target.fail(f"loading {model}", "a loaded model", answer.describe())
    ps = target.http("GET", target.ollama_url("/api/ps"))
    document = ps.json() if ps.status == 200 else None
    if not isinstance(document, dict):
        target.fail("GET /api/ps", "HTTP 200 with the loaded models", ps.describe())
    loaded = {
        normalise(str(m.get("name"))): m
        for m in document.get("models") or []
        if isinstance(m, dict)
    }
    entry = loaded.get(model)
    if entry is None:
        target.fail(
            f"{model} in /api/ps", "loaded", f"not loaded (loaded: {', '.join(loaded) or 'none'})"
        )
    size, vram = int(entry.get("size") or 0), int(entry.get("size_vram") or 0)
    gpu_expected, reason = target.gpu_expected()
    if (target.data.optional_text("ollama_cuda_visible_devices") or "").strip() == "-1":
        gpu_expected, reason = False, "ollama_cuda_visible_devices: -1"
    if gpu_expected:
        if vram != size:
            where = (
                "on CPU only" if vram == 0 else f"{round(100 * vram / size) if size else 0}% on GPU"
            )
            target.fail(
                f"{model} placement",
                f"fully on GPU (size_vram == size == {size})",
                f"size_vram {vram} of {size} ({where})",
                "Ollama fell back to CPU: check the driver layer"
                if vram == 0
                else "the model does not fit the GPUs",
            )
        target.passed(request, f"{model} fully on GPU ({parse.human_bytes(size)})")
    else:
        if vram != 0:
            target.fail(
                f"{model} placement", f"on CPU ({reason}): size_vram 0", f"size_vram {vram}"
            )
        target.passed(request, f"{model} on CPU ({reason})")


def _loaded(target: HostContext) -> list[dict]:
    """``/api/ps``'s models (fails the check when it does not answer)."""
    ps = target.http("GET", target.ollama_url("/api/ps"))
    document = ps.json() if ps.status == 200 else None
    if not isinstance(document, dict):
        target.fail("GET /api/ps", "HTTP 200 with the loaded models", ps.describe())
    return [m for m in document.get("models") or [] if isinstance(m, dict)]


def _loaded_models(target: HostContext) -> dict[str, dict]:
    """``/api/ps`` by normalised name (fails the check when it does not answer)."""
    return {normalise(str(m.get("name"))): m for m in _loaded(target)}


def test_resident_models_loaded_together(
    target: HostContext, request: pytest.FixtureRequest
) -> None:
    """The plan's resident set (``models_resident``) stays loaded together: after a generation
    with each, ``/api/ps`` lists them all at once, fully on the GPU where one is expected."""
    resident = target.resident_models()
    if not resident:
        target.skip("no resident set planned (models_resident)")
    for model in resident:
        answer = target.generation(model)
        if answer.status != 200:
            target.fail(f"loading {model}", "a loaded model", answer.describe())
    loaded = _loaded_models(target)
    missing = [m for m in resident if m not in loaded]
    if missing:
        target.fail(
            "resident models in /api/ps",
            f"all of {', '.join(resident)} loaded together",
            f"{', '.join(missing)} not loaded (loaded: {', '.join(loaded) or 'none'})",
            "Ollama evicted them: check OLLAMA_MAX_LOADED_MODELS and the GPU memory",
        )
    gpu_expected, _ = target.gpu_expected()
    partial = [
        m
        for m in resident
        if int(loaded[m].get("size_vram") or 0) != int(loaded[m].get("size") or 0)
    ]
    if gpu_expected and partial:
        target.fail(
            "resident models placement",
            "each fully on GPU (size_vram == size)",
            f"{', '.join(partial)} partly on CPU",
            "the resident set does not fit the GPUs together",
        )
    target.passed(request, f"{', '.join(resident)} loaded together")


def test_loaded_context_within_plan(target: HostContext, request: pytest.FixtureRequest) -> None:
    """No loaded model runs with a larger context than the plan assumed for it (``/api/ps``
    ``context_length``). ``OLLAMA_CONTEXT_LENGTH`` is only a default: a model's own
    ``num_ctx`` and a client's ``options.num_ctx`` win over it (server/routes.go), and a larger
    context grows the KV cache beyond what the VRAM plan budgeted."""
    loaded = _loaded(target)
    if not loaded:
        target.skip("no model loaded (/api/ps is empty)")
    over, shown = [], []
    for entry in loaded:
        name = normalise(str(entry.get("name") or entry.get("model") or "?"))
        context = entry.get("context_length")
        if not isinstance(context, int) or context <= 0:
            continue  # a version that does not report it: nothing to compare
        planned = target.planned_context(name)
        shown.append(f"{name} {context}")
        if planned is not None and context > planned:
            over.append(f"{name}: context {context} > planned {planned}")
    if over:
        target.fail(
            "loaded contexts (/api/ps context_length)",
            "at most the context the plan assumed",
            "; ".join(over),
            "a client sent options.num_ctx, or the model sets its own num_ctx: "
            "see docs/ollama.md (Context)",
        )
    target.passed(request, ", ".join(shown) or "no context reported")
