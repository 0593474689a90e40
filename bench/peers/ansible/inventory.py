"""The inventory of the Ansible peer: every value the play needs, per host.

Values come from provisioner's own plan and templates (``gpu_stack.plan_stack``,
``planner.plan_host``, the Ollama renderers) for the host as it is before the first run, so the
play asks for exactly the state ``provision apply`` makes, and a host converged by one is
converged for the other. The inventory is JSON, which Ansible's YAML inventory plugin reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provisioner import gpu_stack, ollama_release, planner, settings
from provisioner.ollama_api import site_name

CONTRIB_HEADER = "# Managed by provisioner: archive components the NVIDIA packages need.\n"


def before_install_facts(host: Mapping[str, Any], kernel: str) -> dict[str, Any]:
    """GPU stack facts (``_gpu_plan.gather_facts`` keys) of a lab host before any run.

    + host: the host's entry in the lab's lab.json (``release``, ``gpus``)
    + kernel: ``uname -r`` (lab hosts run the machine's kernel)
    """
    codename = host["release"]
    version = {"bookworm": "12", "trixie": "13"}[codename]
    pci = [
        {
            "slot": "0000:" + g["pci_bus_id"].split(":", 1)[1].lower(),
            "class_id": "0302",
            "vendor_id": "10de",
            "device_id": g["pci_device_id"],
        }
        for g in host.get("gpus", [])
    ]
    return {
        "os": {"id": "debian", "version_id": version, "codename": codename, "arch": "x86_64"},
        "kernel": kernel,
        "pci": pci,
        "smi": {"state": "no-driver", "gpus": [], "error": None},
        "packages": {},
        "module": {},
    }


def planner_facts(host: Mapping[str, Any], os_info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``provision facts`` shape of a converged lab host (for the model plan)."""
    return {
        "gpu_state": "ok" if host.get("gpus") else "no-gpu",
        "gpus": [
            {
                "index": i,
                "name": g["name"],
                "uuid": g.get("uuid"),
                "memory_total_mib": g["memory_total_mib"],
                "compute_cap": g.get("compute_cap"),
                "pci_bus_id": g.get("pci_bus_id"),
                "mig": None,
            }
            for i, g in enumerate(host.get("gpus", []))
        ],
        "os": dict(os_info),
        "memory_total_mib": None,
        "pci_devices": [],
    }


def components_sources(
    sources: Sequence[tuple[str, Sequence[str], str]], components: Sequence[str]
) -> str:
    """The deb822 file that enables ``components`` next to each ``main`` source, as the driver
    deploy writes it (``nvidia.distro_components``). ``sources``: (URL, suites, signed-by)."""
    if not components:
        return ""
    stanzas: dict[tuple[str, str], list[str]] = {}
    pairs = sorted((url, suite, by) for url, suites, by in sources for suite in suites)
    for url, suite, signed_by in pairs:
        stanzas.setdefault((url, signed_by), []).append(suite)
    text = CONTRIB_HEADER
    for (url, by), suites in sorted(stanzas.items()):
        text += f"\nTypes: deb\nURIs: {url}\nSuites: {' '.join(suites)}\n"
        text += f"Components: {' '.join(components)}\n"
        text += f"Signed-By: {by}\n" if by else ""
    return text


def exclude_regex(globs: Sequence[str]) -> str:
    """One extended regular expression matching any of ``globs`` (for ``grep -E``)."""
    if not globs:
        return "^$"
    special = set(".^$+(){}[]|\\")

    def one(glob: str) -> str:
        out = ""
        for char in glob:
            if char == "*":
                out += ".*"
            elif char == "?":
                out += "."
            else:
                out += "\\" + char if char in special else char
        return out

    return "^(" + "|".join(one(g) for g in globs) + ")$"


def _release_sum(release: ollama_release.Release) -> str:
    """No pinned sum: the release's own sha256sum.txt, read here (the lab mirror), as the
    provisioner's deploy reads it on the host."""
    import urllib.request

    with urllib.request.urlopen(release.sums_url, timeout=30) as answer:
        text = answer.read().decode()
    found = ollama_release.sums_line(text, release.asset)
    if found is None:
        raise ValueError(f"{release.sums_url} has no line for ./{release.asset}")
    return found


def host_vars(
    name: str,
    host: Mapping[str, Any],
    data: Mapping[str, Any],
    *,
    kernel: str,
    key_sha256: str,
    distro_sources: Sequence[tuple[str, Sequence[str], str]],
) -> dict[str, Any]:
    """Every variable of site.yml for one host.

    + name: the host's inventory name
    + host: its lab.json entry (``address``, ``release``, ``gpus``)
    + data: its host data (group_data merged with the inventory's), before defaults
    + kernel: ``uname -r`` of the host
    + key_sha256: sha256 of the repository key file (get_url pins by checksum; provisioner by
      the key's fingerprint)
    + distro_sources: the host's Debian sources, (URL, suites, signed-by)
    """
    from provisioner.deploys.ollama import (
        HOME,
        INSTALL_DIR,
        fetch_helper_path,
        render_dropin,
        render_unit,
        settings_from,
    )
    from provisioner.operations.nvidia import _render

    resolved = settings.resolve(dict(data))
    facts = before_install_facts(host, kernel)
    stack = gpu_stack.plan_stack(resolved, facts)
    driver, toolkit, torch = stack.driver, stack.toolkit, stack.torch
    values: dict[str, Any] = {"ansible_host": host["address"]}
    if driver.skip or driver.distro is None or driver.key is None:
        values.update(
            nvidia_driver_package="",
            nvidia_components_sources="",
            cuda_toolkit_package="",
        )
    else:
        distro = driver.distro
        meta = distro.driver_meta[driver.flavour]
        values.update(
            nvidia_key_url=driver.key.url,
            nvidia_key_path=driver.key.path,
            nvidia_key_sha256=key_sha256,
            nvidia_repo_sources=(
                f"Types: deb\nURIs: {driver.repo_url}\nSuites: /\nSigned-By: {driver.key.path}\n"
            ),
            nvidia_components_sources=components_sources(distro_sources, driver.extra_components),
            nvidia_pinning_package=distro.pinning(driver.branch),
            nvidia_driver_package=f"{meta}={driver.version}" if driver.version else meta,
            nvidia_module_package=distro.kernel_module[driver.flavour][0],
            nvidia_hold_globs=list(distro.hold_globs),
            nvidia_hold_exclude=exclude_regex(distro.hold_exclude),
            nouveau_blacklist=_render("blacklist-nouveau.conf.j2"),
        )
        if toolkit is not None and not toolkit.skip and toolkit.package:
            values.update(
                cuda_toolkit_package=toolkit.package,
                cuda_profile=_render(
                    "cuda-profile.sh.j2", version=toolkit.version, bin_dir=toolkit.bin_dir
                ),
            )
        else:
            values["cuda_toolkit_package"] = ""
    assert torch is not None and torch.distro is not None
    values.update(
        venv_packages=list(torch.distro.venv_packages),
        torch_user=torch.user,
        torch_venv=torch.venv,
        torch_requirement=f"torch=={torch.local_version}",
        torch_index_url=torch.index_url,
        torch_trusted_host=torch.trusted_host or "",
    )
    cfg, problems = settings_from(resolved)
    if cfg is None:
        raise ValueError(f"{name}: Ollama settings: {problems}")
    release = ollama_release.resolve(
        cfg.version, "x86_64", cfg.release_url, cfg.sha256, cfg.allow_vulnerable
    )
    release_sha256 = release.sha256 or _release_sum(release)
    plan = planner.plan_host(name, planner_facts(host, facts["os"]), resolved)
    models = [m["tag"] for m in plan["models"]]
    models += [m for m in resolved.get("models_pinned") or [] if m not in models]
    registry = resolved.get("ollama_registry")
    namespace = resolved.get("ollama_registry_namespace") or "library"
    values.update(
        ollama_packages=["curl", "ca-certificates", "tar", "gzip"]
        + (["zstd"] if release.format == "zst" else []),
        ollama_version=release.version,
        ollama_url=release.url,
        ollama_sha256=release_sha256,
        ollama_install_dir=INSTALL_DIR,
        ollama_home=HOME,
        ollama_models_dir=cfg.models_dir,
        ollama_unit=render_unit(cfg),
        ollama_dropin=render_dropin(cfg),
        ollama_fetch_helper_src=fetch_helper_path(),
        ollama_api=cfg.api_url,
        ollama_models=models,
        ollama_pull_names={
            m: (site_name(m, registry, namespace).display if registry else m) for m in models
        },
        ollama_registry_insecure=bool(resolved.get("ollama_registry_insecure")),
    )
    return values


def inventory(
    hosts: Mapping[str, Mapping[str, Any]], *, ssh_user: str, ssh_key: str
) -> dict[str, Any]:
    """The Ansible inventory (YAML plugin structure) of ``hosts`` (name -> host_vars)."""
    return {
        "all": {
            "vars": {
                "ansible_user": ssh_user,
                "ansible_ssh_private_key_file": ssh_key,
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "hosts": {name: dict(values) for name, values in hosts.items()},
        }
    }
