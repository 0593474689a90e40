"""What the GPU stack deploys share: their data defaults, the facts they plan from, and how a
host is refused (failed before anything changes on it, while the other hosts carry on)."""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.context import ctx_host, ctx_state

from provisioner import fact_cache, gpu_stack, settings
from provisioner.facts import gpu_state
from provisioner.facts.gpu import ONE_RUN, NvidiaPciDevices, NvidiaSmi
from provisioner.facts.nvidia import (
    GpuStackPackages,
    MokEnrolled,
    NvidiaKernelModule,
    PackageAvailable,
    RepoDriverBranches,
    SecureBoot,
)
from provisioner.facts.system import KernelRelease, OsInfo
from provisioner.operations import system

# Every key the stack reads, so that each deploy also works when called on its own.
STACK_DEFAULTS: dict[str, Any] = {
    **settings.defaults("core"),
    **settings.defaults("nvidia_driver"),
    **settings.defaults("cuda_toolkit"),
    **settings.defaults("pytorch"),
}


def gather_facts() -> dict[str, Any]:
    """The facts a GPU stack plan is made from (see ``gpu_stack.plan_driver``), read in one
    remote command (``facts/gpu_state.PLAN_FACTS``)."""
    fact_cache.probe(gpu_state.PLAN_FACTS)
    facts = {
        "os": host.get_fact(OsInfo),
        "kernel": host.get_fact(KernelRelease),
        "pci": host.get_fact(NvidiaPciDevices),
        "smi": host.get_fact(NvidiaSmi, **ONE_RUN),
        "packages": host.get_fact(GpuStackPackages),
        "module": host.get_fact(NvidiaKernelModule),
        "secure_boot": host.get_fact(SecureBoot),
    }
    cert = host.data.get("nvidia_mok_cert")
    if facts["secure_boot"].get("enabled") and cert:
        facts["mok"] = host.get_fact(MokEnrolled, cert=cert)
    return facts


def headers_available(driver: gpu_stack.DriverPlan, facts: dict[str, Any]) -> bool | None:
    """Whether the host's repositories offer the kernel headers the plan installs; asked only
    on EL hosts that lack them (where an older minor's kernel-devel leaves the repositories)."""
    target = driver.distro
    if driver.skip or target is None or target.family.name != "dnf" or driver.headers_repo_url:
        return None
    if gpu_stack.is_installed(facts.get("packages"), driver.headers):
        return None
    return host.get_fact(PackageAvailable, package=driver.headers)


def repository_branches(driver: gpu_stack.DriverPlan) -> dict[str, Any] | None:
    """The branches the planned apt repository offers, read from its index before anything
    changes (None where there is nothing to read: a skip, the distro source, dnf)."""
    target = driver.distro
    if driver.skip or target is None or target.distribution_driver:
        return None
    if target.family.name != "apt":
        return None
    installed = driver.installed.version
    if installed and gpu_stack.branch_of(installed) == driver.branch:
        return None  # the branch is installed (a converged host): nothing to download
    return host.get_fact(
        RepoDriverBranches,
        url=driver.repo_url,
        fetch=list(target.family.fetch),
        package=driver.driver_packages[0],
    )


def host_failed() -> bool:
    """Whether this host was already failed (an earlier deploy refused it)."""
    return ctx_host.get() in ctx_state.get().failed_hosts


def refuse(component: str, error: Exception) -> None:
    """Fail this host now, at prepare time, with the reason: none of its operations run, the
    other hosts go on (pyinfra's ``state.fail_hosts``; with ``--fail-percent`` or the CLI's
    confirmation prompt pyinfra may stop the run, as it does for any failed host)."""
    state = ctx_state.get()
    reason = f"{component}: refused, nothing was changed on this host: {error}"
    system.announce_refusal(state, ctx_host.get(), reason)
    state.fail_hosts({ctx_host.get()})


def announce(component: str, message: str) -> None:
    host.log_styled(f"{component}: {message}", log_func=logger.info)


def plan(component: str, toolkit: bool = False, torch: bool = False) -> gpu_stack.StackPlan | None:
    """Plan this host's GPU stack (driver always; toolkit and PyTorch when asked), or refuse
    the host and return None."""
    if host_failed():
        return None
    try:
        facts = gather_facts()
        driver = gpu_stack.plan_driver(host.data, facts)
        gpu_stack.check_offered_branch(driver, repository_branches(driver))
        gpu_stack.check_headers_offered(driver, headers_available(driver, facts), facts["os"])
        toolkit_plan = gpu_stack.plan_toolkit(host.data, driver) if toolkit else None
        torch_plan = gpu_stack.plan_torch(host.data, driver, facts["os"]) if torch else None
    except gpu_stack.GpuStackError as error:
        refuse(component, error)
        return None
    stack = gpu_stack.StackPlan(driver, toolkit_plan, torch_plan)
    fact_cache.register(gpu_state.operation_keys(stack))  # what the operations will read
    return stack
