"""The Ollama server: a verified release, a locked-down service, and how others may reach it.

``install_ollama`` installs the pinned release (sha256-checked before unpacking, refused below
the CVE floor), the ``ollama`` system user, the model store, the systemd unit and the drop-in
with every server setting from host data, and then, by ``ollama_expose``: nothing more
(loopback), an nginx proxy with TLS and basic auth, an nftables allowlist, or both. The unit,
drop-in and firewall change as a whole (:func:`provisioner.operations.exposure.switch`: the
ruleset is checked with ``nft -c`` first, and a failed step puts the previous files back), the
allowlist is loaded before Ollama opens and removed after it is on loopback again, and removing
an exposure removes what it installed. The service restarts only when the release or its
rendered configuration changed, and the run goes on only once the API answers (an upgrade that
does not is rolled back).

Every key it reads is declared in ``data/keys/ollama.toml``; cross-key rules (no public
address without an allowlist, ...) are checked by :func:`check_settings`, which ``provision``
also runs before connecting to anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from io import StringIO
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import Groups
from pyinfra.operations import files, server, systemd

from provisioner import addresses, fact_cache, gpu_stack, ollama_release, rendering, settings
from provisioner import lock as fleet_lock
from provisioner.facts import ollama_state
from provisioner.facts.system import OsInfo
from provisioner.ollama_api import site_name
from provisioner.operations import exposure, ollama, system
from provisioner.web_server import web_server

__all__ = [
    "DEFAULTS",
    "OllamaSettings",
    "check_settings",
    "install_ollama",
    "render",
    "settings_from",
]

DEFAULTS = settings.defaults("ollama")

USER = "ollama"
HOME = "/var/lib/ollama"
INSTALL_DIR = "/opt/ollama"
UNIT = "/etc/systemd/system/ollama.service"
DROPIN = "/etc/systemd/system/ollama.service.d/10-provisioner.conf"
NGINX_SITE = "/etc/nginx/conf.d/ollama.conf"
NGINX_DIR = "/etc/nginx/ollama"
FIREWALL_TABLE = "provisioner_ollama"
FIREWALL_UNIT = "provisioner-ollama-firewall.service"
FIREWALL_RULES = "/etc/provisioner/ollama.nft"
#: Present when the proxy installed nginx (removing the proxy then stops nginx again).
NGINX_OURS = "/etc/provisioner/ollama-proxy-installed-nginx"

LOOPBACK_NAMES = addresses.LOOPBACK_NAMES
# Variables the keys set; ollama_extra_env may not change them behind the plan's back.
MANAGED_ENV = (
    "OLLAMA_HOST",
    "OLLAMA_MODELS",
    "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_MAX_LOADED_MODELS",
    "OLLAMA_FLASH_ATTENTION",
    "OLLAMA_KV_CACHE_TYPE",
    "CUDA_VISIBLE_DEVICES",
    "HOME",
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class OllamaSettings:
    """The Ollama keys of one host, checked."""

    version: str
    release_url: str
    sha256: str | None
    allow_vulnerable: bool
    start_timeout: int
    models_dir: str
    listen_address: str
    port: int
    context_length: int
    num_parallel: int
    kv_cache_type: str
    flash_attention: bool
    keep_alive: str
    max_loaded_models: int
    cuda_visible_devices: str | None
    extra_env: dict[str, str] = field(default_factory=dict)
    sha256sum_url: str = ""
    expose: str = "loopback"
    allow_networks: tuple[str, ...] = ()
    proxy_port: int = 443
    proxy_server_name: str = "_"
    tls_cert: str | None = None
    tls_key: str | None = None
    htpasswd_file: str | None = None
    htpasswd_env: str | None = None

    @property
    def proxy(self) -> bool:
        return self.expose in ("proxy", "proxy+allowlist")

    @property
    def allowlist(self) -> bool:
        return self.expose in ("allowlist", "proxy+allowlist")

    @property
    def ollama_host(self) -> str:
        return f"{addresses.url_host(self.listen_address)}:{self.port}"

    @property
    def api_url(self) -> str:
        """Where the API answers from the host itself."""
        return addresses.local_url(self.listen_address, self.port)

    def environment(self) -> dict[str, str]:
        env = {
            "OLLAMA_HOST": self.ollama_host,
            "OLLAMA_MODELS": self.models_dir,
            "OLLAMA_CONTEXT_LENGTH": str(self.context_length),
            "OLLAMA_NUM_PARALLEL": str(self.num_parallel),
            "OLLAMA_KEEP_ALIVE": self.keep_alive,
            "OLLAMA_MAX_LOADED_MODELS": str(self.max_loaded_models),
            "OLLAMA_FLASH_ATTENTION": "1" if self.flash_attention else "0",
            "OLLAMA_KV_CACHE_TYPE": self.kv_cache_type,
        }
        if self.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        env.update(sorted(self.extra_env.items()))
        return env

    def networks(self) -> tuple[list[str], list[str]]:
        """The allowlist split into IPv4 and IPv6 networks (normalised)."""
        return addresses.networks_by_family(self.allow_networks)


Problems = list[tuple[str, str]]


def _listen_problems(h: settings.HostSettings) -> Problems:
    listen, expose = h.text("ollama_listen_address").strip(), h.text("ollama_expose")
    problems: Problems = []
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        if listen not in LOOPBACK_NAMES:
            problems.append(("ollama_listen_address", f"{listen!r} is not an IP address"))
    if expose in ("loopback", "proxy") and not addresses.is_loopback(listen):
        problems.append(
            (
                "ollama_listen_address",
                f"{listen} is not loopback, and ollama_expose is {expose!r}: Ollama has no "
                "authentication, so it listens elsewhere only behind an allowlist "
                '(ollama_expose = "allowlist" or "proxy+allowlist")',
            )
        )
    return problems


def _allowlist_problems(h: settings.HostSettings) -> Problems:
    expose, networks = h.text("ollama_expose"), h.list_of("ollama_allow_networks")
    if expose not in ("allowlist", "proxy+allowlist"):
        return []
    problems: Problems = []
    if not networks:
        problems.append(("ollama_allow_networks", f"ollama_expose {expose!r} needs networks"))
    for entry in networks:
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            problems.append(("ollama_allow_networks", f"{entry!r} is not a network (CIDR)"))
    return problems


def _credential_problems(h: settings.HostSettings, expose: str) -> Problems:
    file, env = h.optional_text("ollama_htpasswd_file"), h.optional_text("ollama_htpasswd_env")
    if not file and not env:
        return [
            (
                "ollama_htpasswd_file",
                f"ollama_expose {expose!r} needs ollama_htpasswd_file or ollama_htpasswd_env "
                "(the proxy never runs without authentication)",
            )
        ]
    if file and not os.path.isfile(os.path.expanduser(file)):
        return [("ollama_htpasswd_file", f"{file} does not exist on this machine")]
    if not file and not os.environ.get(str(env)):
        return [("ollama_htpasswd_env", f"environment variable {env} is not set")]
    return []


def _proxy_problems(h: settings.HostSettings) -> Problems:
    expose = h.text("ollama_expose")
    if expose not in ("proxy", "proxy+allowlist"):
        return []
    problems = _credential_problems(h, expose)
    cert, key = h.optional_text("ollama_tls_cert"), h.optional_text("ollama_tls_key")
    if bool(cert) != bool(key):
        problems.append(("ollama_tls_cert", "set both ollama_tls_cert and ollama_tls_key"))
    for name, path in (("ollama_tls_cert", cert), ("ollama_tls_key", key)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            problems.append((name, f"{path} does not exist on this machine"))
    if h.raw("ollama_proxy_port") == h.raw("ollama_port"):
        problems.append(("ollama_proxy_port", "the proxy and Ollama need different ports"))
    return problems


def _env_problems(h: settings.HostSettings) -> Problems:
    problems: Problems = []
    for key, value in h.table("ollama_extra_env").items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            problems.append(("ollama_extra_env", f"{key!r} is not an environment variable name"))
        elif key in MANAGED_ENV:
            problems.append(
                ("ollama_extra_env", f"{key} is set by its own key (docs/data-keys.md)")
            )
        elif not isinstance(value, (str, int, float, bool)) or "\n" in str(value):
            problems.append(("ollama_extra_env", f"{key}: the value must be one line of text"))
    return problems


def _store_problems(h: settings.HostSettings) -> Problems:
    models_dir = h.text("ollama_models_dir")
    if not models_dir.startswith("/") or re.search(r"\s", models_dir):
        return [("ollama_models_dir", f"{models_dir!r} must be an absolute path without spaces")]
    return []


def _format_problems(h: settings.HostSettings) -> Problems:
    problems: Problems = []
    keep_alive = h.text("ollama_keep_alive")
    if not re.fullmatch(r"-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+|-?\d+", keep_alive):
        problems.append(("ollama_keep_alive", f"{keep_alive!r} is not a duration such as 5m"))
    cuda = h.optional_text("ollama_cuda_visible_devices")
    if cuda is not None and re.search(r"\s", cuda):
        problems.append(("ollama_cuda_visible_devices", "no spaces: GPU-uuid,GPU-uuid or -1"))
    return problems


def _version_problems(h: settings.HostSettings) -> Problems:
    try:
        ollama_release.parse_version(h.text("ollama_version"))
    except ollama_release.ReleaseError as exc:
        return [("ollama_version", str(exc))]
    return []


def _registry_problems(h: settings.HostSettings) -> Problems:
    registry = h.optional_text("ollama_registry")
    if not registry:
        return []
    try:
        source = site_name("library/probe:latest", registry)
    except ValueError as exc:
        return [("ollama_registry", str(exc))]
    if source.scheme == "http" and not h.flag("ollama_registry_insecure"):
        return [
            (
                "ollama_registry_insecure",
                f"{registry} is plain HTTP: set ollama_registry_insecure: true",
            )
        ]
    return []


def check_settings(data: Mapping[str, Any] | Any) -> Problems:
    """The Ollama cross-key rules of one host, as ``(key, message)`` problems: ``provision``
    runs them before it connects to anything (exit 2), and :func:`settings_from` refuses a
    host with any. ``data`` is host data, ``host.data`` or ``settings.HostSettings``."""
    h = settings.host_settings(data)
    return [
        *_listen_problems(h),
        *_allowlist_problems(h),
        *_proxy_problems(h),
        *_store_problems(h),
        *_env_problems(h),
        *_format_problems(h),
        *_registry_problems(h),
        *_version_problems(h),
    ]


def settings_from(data: Mapping[str, Any] | Any) -> tuple[OllamaSettings | None, Problems]:
    """Build the host's :class:`OllamaSettings` from its data; return it and the problems.

    ``data`` is a mapping of host data (missing keys take their defaults), pyinfra's
    ``host.data`` or ``settings.HostSettings``. Problems are those of :func:`check_settings`;
    with any problem the settings are None.
    """
    h = settings.host_settings(data)
    problems = check_settings(h)
    if problems:
        return None, problems
    return _build(h), []


def _build(h: settings.HostSettings) -> OllamaSettings:
    cuda = h.optional_text("ollama_cuda_visible_devices")
    return OllamaSettings(
        version=h.text("ollama_version"),
        release_url=h.text("ollama_release_url"),
        sha256=h.optional_text("ollama_sha256"),
        allow_vulnerable=h.flag("ollama_allow_vulnerable_version"),
        start_timeout=h.integer("ollama_start_timeout"),
        models_dir=h.text("ollama_models_dir").rstrip("/") or "/",
        listen_address=h.text("ollama_listen_address").strip(),
        port=h.integer("ollama_port"),
        context_length=h.integer("ollama_context_length"),
        num_parallel=h.integer("ollama_num_parallel"),
        kv_cache_type=h.text("ollama_kv_cache_type"),
        flash_attention=h.flag("ollama_flash_attention"),
        keep_alive=h.text("ollama_keep_alive"),
        max_loaded_models=h.integer("ollama_max_loaded_models"),
        cuda_visible_devices=cuda,
        extra_env={
            k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in h.table("ollama_extra_env").items()
        },
        expose=h.text("ollama_expose"),
        allow_networks=tuple(str(n) for n in h.list_of("ollama_allow_networks")),
        proxy_port=h.integer("ollama_proxy_port"),
        proxy_server_name=h.text("ollama_proxy_server_name"),
        tls_cert=h.optional_text("ollama_tls_cert"),
        tls_key=h.optional_text("ollama_tls_key"),
        htpasswd_file=h.optional_text("ollama_htpasswd_file"),
        htpasswd_env=h.optional_text("ollama_htpasswd_env"),
        sha256sum_url=h.optional_text("ollama_sha256sum_url") or "",
    )


# --- templates --------------------------------------------------------------------------------


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` (:func:`provisioner.rendering.render`)."""
    return rendering.render(template, **context)


def render_unit(cfg: OllamaSettings) -> str:
    return render(
        "ollama/ollama.service.j2",
        user=USER,
        group=USER,
        home=HOME,
        install_dir=INSTALL_DIR,
        models_dir=cfg.models_dir,
        firewall_unit=FIREWALL_UNIT if cfg.allowlist else None,
    )


def render_dropin(cfg: OllamaSettings) -> str:
    return render("ollama/ollama-dropin.conf.j2", environment=cfg.environment())


def render_nginx(cfg: OllamaSettings) -> str:
    return render(
        "ollama/nginx-ollama.conf.j2",
        proxy_port=cfg.proxy_port,
        server_name=cfg.proxy_server_name,
        cert=f"{NGINX_DIR}/tls.crt",
        key=f"{NGINX_DIR}/tls.key",
        htpasswd=f"{NGINX_DIR}/htpasswd",
        upstream=cfg.api_url.removeprefix("http://"),
        upstream_port=cfg.port,
    )


def render_nft(cfg: OllamaSettings) -> str:
    v4, v6 = cfg.networks()
    return render(
        "ollama/ollama.nft.j2",
        table=FIREWALL_TABLE,
        unit=FIREWALL_UNIT,
        port=cfg.proxy_port if cfg.proxy else cfg.port,
        what="the TLS proxy" if cfg.proxy else "Ollama",
        networks_v4=v4,
        networks_v6=v6,
    )


def render_firewall_unit() -> str:
    return render("ollama/ollama-firewall.service.j2", rules=FIREWALL_RULES, table=FIREWALL_TABLE)


def config_digest(*rendered: str) -> str:
    return hashlib.sha256("\0".join(rendered).encode()).hexdigest()


def fetch_helper_path() -> str:
    return str(resources.files("provisioner") / "templates" / "ollama" / "ollama-fetch-model.sh")


def _htpasswd(cfg: OllamaSettings) -> str:
    if cfg.htpasswd_file:
        return _read_local(cfg.htpasswd_file)
    return os.environ.get(cfg.htpasswd_env or "", "")


def _read_local(path: str) -> str:
    with open(os.path.expanduser(path), encoding="utf-8") as handle:
        return handle.read()


# --- the deploy -------------------------------------------------------------------------------


@deploy("Install Ollama", data_defaults=DEFAULTS)
def install_ollama() -> None:
    """Install and configure Ollama from host data (``data/keys/ollama.toml``)."""
    cfg, problems = settings_from(host.data)
    if cfg is None:
        ollama.refuse(
            name="Check the Ollama settings",
            reason="; ".join(f"{key}: {message}" for key, message in problems),
        )
        return
    os_info = host.get_fact(OsInfo)
    locked = fleet_lock.ollama_view(fleet_lock.current(), host.name)
    try:
        release = ollama_release.resolve(
            cfg.version,
            os_info.get("arch"),
            cfg.release_url,
            _pinned_sum(cfg),
            cfg.allow_vulnerable,
            sums_url_template=cfg.sha256sum_url,
            lock=locked,
        )
    except ollama_release.ReleaseError as exc:
        ollama.refuse(name="Check the Ollama release", reason=str(exc))
        return
    unlocked = fleet_lock.ollama_problem(locked, release)
    if unlocked:
        ollama.refuse(name="Check the Ollama release", reason=unlocked)
        return
    _log_release(cfg, release)
    packages = ["curl", "ca-certificates", "tar", "gzip"]
    if release.format == "zst":
        packages.append("zstd")
    packages += _exposure_packages(cfg)
    _register_state(cfg, os_info, packages)
    # the proxy brings nginx: removing the proxy stops it again (no default site on :80 left)
    nginx_is_new = cfg.proxy and not web_server.installed()
    exposure.only(
        name="Record that the Ollama proxy installs nginx",
        wanted=bool(nginx_is_new),
        what="the record of an nginx installed for the proxy",
        then=files.put,
        src=StringIO("nginx was installed for the Ollama proxy by provisioner\n"),
        dest=NGINX_OURS,
        mode="644",
    )
    system.packages(name="Install Ollama's tools", packages=packages)

    server.group(name="Create the ollama group", group=USER, system=True)
    groups = [g for g in ("video", "render") if g in (host.get_fact(Groups) or [])]
    system.user(
        name="Create the ollama user",
        user=USER,
        group=USER,
        groups=groups or None,
        home=HOME,
        shell="/usr/sbin/nologin",
        system=True,
        create_home=False,
    )
    ollama.store(name="Create Ollama's home", path=HOME, user=USER, group=USER)
    ollama.store(name="Create the model store", path=cfg.models_dir, user=USER, group=USER)

    ollama.release(
        name=f"Unpack Ollama {release.version}",
        version=release.version,
        url=release.url,
        sha256=release.sha256,
        install_dir=INSTALL_DIR,
        archive=release.format,
        sums_url=release.sums_url,
        sha256_source=release.sha256_source,
    )
    files.put(
        name="Install the model fetch helper",
        src=fetch_helper_path(),
        dest=ollama.FETCH_HELPER,
        mode="755",
    )

    unit, dropin = render_unit(cfg), render_dropin(cfg)
    exposure.switch(
        name="Install the Ollama unit, settings and allowlist",
        what="the Ollama allowlist" if cfg.allowlist else "the Ollama unit and settings",
        **_serving_change(cfg, unit, dropin),
    )
    exposure.only(
        name="Keep the Ollama allowlist loaded",
        wanted=cfg.allowlist,
        what="the Ollama allowlist",
        then=systemd.service,
        service=FIREWALL_UNIT,
        running=True,
        enabled=True,
    )
    ollama.service(
        name=f"Serve Ollama {release.version}",
        version=release.version,
        release_sha256=release.sha256,
        config_sha256=config_digest(unit, dropin),
        api_url=cfg.api_url,
        start_timeout=cfg.start_timeout,
        install_dir=INSTALL_DIR,
    )
    # tighten before, loosen after: a removed allowlist goes once Ollama listens on loopback
    exposure.removed(
        name="Remove the Ollama allowlist",
        what="the Ollama allowlist",
        paths=[f"/etc/systemd/system/{FIREWALL_UNIT}", FIREWALL_RULES],
        before=[f"systemctl disable --now {FIREWALL_UNIT}"],
        after=["systemctl daemon-reload"],
        wanted=cfg.allowlist,
    )
    _proxy(cfg, os_info)
    exposure.removed(
        name="Remove the Ollama proxy",
        what="the Ollama proxy",
        paths=[NGINX_SITE, NGINX_DIR, NGINX_OURS],
        # nginx goes when the proxy installed it; one that was there before is only reloaded
        before=[f"if [ -e {NGINX_OURS} ]; then systemctl disable --now nginx; fi"],
        after=["systemctl reload nginx 2>/dev/null || true"],
        wanted=cfg.proxy,
    )


def _register_state(cfg: OllamaSettings, os_info: dict[str, Any], packages: list[str]) -> None:
    """Register what the operations below will read, to be read in one remote command
    (``facts/ollama_state.py``)."""
    family = ""
    with contextlib.suppress(Exception):  # an unknown distro: every fact is read alone
        family = gpu_stack.find_distro(os_info).family.name
    serving = [item.dest for item in _serving_change(cfg, "", "")["items"]]
    fact_cache.register(
        ollama_state.operation_keys(
            family=family,
            packages=packages,
            user=USER,
            home=HOME,
            models_dir=cfg.models_dir,
            install_dir=INSTALL_DIR,
            service="ollama",
            fetch_helper=ollama.FETCH_HELPER,
            serving_files=serving,
            removable=[
                [f"/etc/systemd/system/{FIREWALL_UNIT}", FIREWALL_RULES],
                [NGINX_SITE, NGINX_DIR, NGINX_OURS],
            ],
        )
    )


def _pinned_sum(cfg: OllamaSettings) -> str | None:
    """``ollama_sha256``, unless ``--data`` changed the version without giving a sum too: a sum
    written for the inventory's version never checks another version's archive."""
    if not cfg.sha256:
        return None
    overrides = _override_keys()
    if "ollama_version" in overrides and "ollama_sha256" not in overrides:
        host.log_styled(
            f"ollama_sha256 is ignored: --data ollama_version={cfg.version} came without a sum, "
            "and the inventory's sum is for its own version",
            fg="yellow",
            log_func=logger.warning,
        )
        return None
    return cfg.sha256


def _override_keys() -> set[str]:
    inventory = getattr(host, "inventory", None)
    getter = getattr(inventory, "get_override_data", None)
    return set(getter() or {}) if callable(getter) else set()


def _log_release(cfg: OllamaSettings, release: ollama_release.Release) -> None:
    source = (
        f"the release's own sha256sum.txt ({release.sums_url}), fetched on the host"
        if release.sha256 is None
        else release.sha256_source
    )
    host.log_styled(
        f"Ollama {release.version}: {release.url}, sha256 from {source}",
        log_func=logger.info,
    )
    newest = ollama_release.newest_verified()
    if ollama_release.parse_version(cfg.version) > ollama_release.parse_version(newest):
        host.log_styled(
            f"Ollama {cfg.version} is newer than the newest version this toolkit was checked "
            f"against ({newest}): see docs/ollama.md, supported versions",
            fg="yellow",
            log_func=logger.warning,
        )
    exposed = ollama_release.cves_affecting(cfg.version)
    if exposed:  # only reachable with ollama_allow_vulnerable_version: say what was accepted
        host.log_styled(
            f"Ollama {cfg.version} is exposed to "
            + ", ".join(cve.id for cve in exposed)
            + " (accepted by ollama_allow_vulnerable_version)",
            fg="yellow",
            log_func=logger.warning,
        )


def _exposure_packages(cfg: OllamaSettings) -> list[str]:
    """What the exposure mode needs installed (none for loopback)."""
    proxy = [web_server.package, "openssl"] if cfg.proxy else []
    return proxy + (["nftables"] if cfg.allowlist else [])


def _serving_change(cfg: OllamaSettings, unit: str, dropin: str) -> dict[str, Any]:
    """The unit, the drop-in and (allowlist modes) the firewall, as one :func:`exposure.switch`:
    the ruleset first, so that ``nft -c`` checks it before anything changes."""
    items = [exposure.Staged(UNIT, unit), exposure.Staged(DROPIN, dropin)]
    if not cfg.allowlist:
        return {"items": items, "activate": ["systemctl daemon-reload"]}
    firewall_unit = f"/etc/systemd/system/{FIREWALL_UNIT}"
    return {
        "items": [
            exposure.Staged(FIREWALL_RULES, render_nft(cfg)),
            exposure.Staged(firewall_unit, render_firewall_unit()),
            *items,
        ],
        "check": "nft -c -f {0}",
        "activate": [
            "systemctl daemon-reload",
            f"systemctl enable {FIREWALL_UNIT}",
            f"systemctl restart {FIREWALL_UNIT}",
        ],
        "restore": [
            "systemctl daemon-reload",
            f"if [ -e {firewall_unit} ]; then systemctl restart {FIREWALL_UNIT}; "
            f"else rm -f /etc/systemd/system/*.wants/{FIREWALL_UNIT}; systemctl daemon-reload; "
            f"systemctl reset-failed {FIREWALL_UNIT}; fi",
        ],
    }


def _proxy_items(cfg: OllamaSettings, web_group: str) -> list[exposure.Staged]:
    """The proxy's files (none when the mode has no proxy)."""
    if not cfg.proxy:
        return []
    tls = []
    if cfg.tls_cert and cfg.tls_key:
        tls = [
            exposure.Staged(f"{NGINX_DIR}/tls.crt", _read_local(cfg.tls_cert)),
            exposure.Staged(f"{NGINX_DIR}/tls.key", _read_local(cfg.tls_key), mode="600"),
        ]
    return [
        *tls,
        exposure.Staged(f"{NGINX_DIR}/htpasswd", _htpasswd(cfg), mode="640", group=web_group),
        exposure.Staged(NGINX_SITE, render_nginx(cfg)),
    ]


def _proxy(cfg: OllamaSettings, os_info: Mapping[str, Any]) -> None:
    """nginx with TLS and basic auth in front of Ollama; every step skips without a proxy."""
    web_group = web_server.group(os_info)
    wanted = cfg.proxy
    exposure.only(
        name="Create the proxy's directory",
        wanted=wanted,
        what="the Ollama proxy",
        then=files.directory,
        path=NGINX_DIR,
        mode="750",
        user="root",
        group=web_group,
    )
    own_cert = bool(cfg.tls_cert and cfg.tls_key)
    generate = wanted and not own_cert and not host.get_fact(File, path=f"{NGINX_DIR}/tls.key")
    common_name = cfg.proxy_server_name if cfg.proxy_server_name != "_" else host.name
    exposure.only(
        name="Generate a self-signed certificate for the proxy",
        wanted=bool(generate),
        what="a self-signed certificate",
        then=server.shell,
        commands=[
            "openssl req -x509 -newkey rsa:3072 -nodes -days 825 -sha256 "
            f"-subj /CN={_shell_word(common_name)} "
            f"-keyout {NGINX_DIR}/tls.key.new -out {NGINX_DIR}/tls.crt.new "
            f"&& chmod 600 {NGINX_DIR}/tls.key.new "
            f"&& mv -f {NGINX_DIR}/tls.crt.new {NGINX_DIR}/tls.crt "
            f"&& mv -f {NGINX_DIR}/tls.key.new {NGINX_DIR}/tls.key",
        ],
    )
    exposure.switch(
        name="Install the Ollama proxy",
        items=_proxy_items(cfg, web_group),
        what="the Ollama proxy",
        activate=["nginx -t -q", "systemctl enable nginx", "systemctl reload-or-restart nginx"],
        restore=["nginx -t -q && systemctl reload-or-restart nginx"],
    )
    exposure.only(
        name="Run nginx",
        wanted=wanted,
        what="the Ollama proxy",
        then=systemd.service,
        service="nginx",
        running=True,
        enabled=True,
    )


def _shell_word(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", value) or "ollama"
