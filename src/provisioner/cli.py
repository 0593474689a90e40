"""The ``provision`` command line.

Exit status, for scripts: 0 success; 1 a host failed or was unreachable (the others were still
served); 2 bad input (inventory, data keys, options) — reported before any host is touched;
3 (apply) every host succeeded but some wait for a reboot they were not allowed.

Imports stay inside the commands so that ``provision --help`` is fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_HOST_FAILED, EXIT_BAD_INPUT = 0, 1, 2

limit_option = click.option(
    "--limit",
    "limit",
    multiple=True,
    metavar="HOST",
    help="Restrict to these hosts or groups (globs, repeatable, comma-separated), as pyinfra's.",
)
data_option = click.option(
    "--data",
    "data",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a data key for every selected host (repeatable), as pyinfra's --data; "
    "VALUE is true/false, a number, JSON or a string. Validated like the inventory.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout (documented in the README)."
)


def _parse_data(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, with pyinfra's --data value rules."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            _fail_input(f"--data {item!r}: expected KEY=VALUE")
        if raw.lower() in ("true", "false"):
            parsed[key] = raw.lower() == "true"
            continue
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
    return parsed


def _fail_input(message: str) -> NoReturn:
    click.echo(f"provision: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _load(inventory: str, limit: tuple[str, ...], data: dict[str, Any] | None = None):
    from provisioner.inventory import InventoryError, load

    try:
        return load(inventory, limit, data)
    except InventoryError as exc:
        for problem in exc.problems:
            click.echo(f"provision: error: {problem}", err=True)
        click.echo("provision: nothing was changed and no host was contacted.", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _print_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=False))


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="provisioner")
def main() -> None:
    """Provision NVIDIA GPU servers into private LLM/ML servers.

    INVENTORY is a pyinfra inventory file (inventories/prod.py) or a pyinfra host string
    such as @local. Run `provision COMMAND --help` for each command.
    """


@main.command()
@click.argument("inventory")
@limit_option
@json_option
def facts(inventory: str, limit: tuple[str, ...], as_json: bool) -> None:
    """Show each host's GPUs, driver, CUDA version and OS."""
    from provisioner.gather import gather

    loaded = _load(inventory, limit)
    results = gather(loaded)
    if as_json:
        _print_json({"hosts": results})
    else:
        from provisioner.report import facts_table

        _console().print(facts_table(results))
    _exit_for_unreachable(results)


def _exit_for_unreachable(results: dict[str, dict[str, Any]]) -> None:
    bad = [name for name, facts in results.items() if facts.get("gpu_state") == "unreachable"]
    for name in bad:
        click.echo(f"provision: host {name} unreachable: {results[name]['error']}", err=True)
    sys.exit(EXIT_HOST_FAILED if bad else EXIT_OK)


@main.command()
@click.argument("inventory", required=False)
@limit_option
@click.option(
    "--what-if",
    "what_if",
    multiple=True,
    metavar="SPEC",
    help="Plan an imaginary host with these GPUs, '[N x ]GPU-NAME:MiB' (repeatable).",
)
@click.option(
    "--profile", default=None, help="Model profile for --what-if hosts (default: general)."
)
@click.option(
    "--users",
    type=click.IntRange(min=1, max=256),
    default=None,
    help="Concurrent requests each model must serve: sizes the KV cache for them "
    "(ollama_num_parallel for this plan).",
)
@data_option
@json_option
def plan(
    inventory: str | None,
    limit: tuple[str, ...],
    what_if: tuple[str, ...],
    profile: str | None,
    users: int | None,
    data: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show which models each host will serve, sized to its GPUs' memory.

    With --what-if, --data sets the host data of the imaginary hosts (context, parallelism, KV
    type, an explicit models list, ...), parsed and validated as `apply --data`.
    """
    from provisioner import planner

    if what_if:
        if inventory:
            _fail_input("give either INVENTORY or --what-if, not both")
        override = _parse_data(data)
        if users is not None:
            if "ollama_num_parallel" in override:
                _fail_input("give either --users or --data ollama_num_parallel=, not both")
            override["ollama_num_parallel"] = users
        _plan_what_if(what_if, profile, override, as_json)

    if not inventory:
        _fail_input("give an INVENTORY or at least one --what-if SPEC (see provision plan --help)")
    if profile:
        _fail_input(
            "--profile applies to --what-if; set model_profile in the inventory's data instead"
        )
    if data:
        _fail_input("--data applies to --what-if; set host data in the inventory instead")
    from provisioner.gather import gather

    loaded = _load(inventory, limit)
    gathered = gather(loaded)
    users_data = {"ollama_num_parallel": users} if users is not None else {}
    result = planner.plan_fleet(
        {
            host.name: (gathered[host.name], {**loaded.resolved(host), **users_data})
            for host in loaded.hosts
        }
    )
    _show_plan(result, as_json)
    _exit_for_unreachable(gathered)


def _plan_what_if(
    what_if: tuple[str, ...], profile: str | None, data: dict[str, Any], as_json: bool
) -> NoReturn:
    """Plan imaginary hosts; bad --profile, --data or --what-if exits 2 before anything runs."""
    from provisioner import planner, settings
    from provisioner.inventory import data_problems

    if profile:
        if "model_profile" in data:
            _fail_input("give the profile either with --profile or --data model_profile=")
        data["model_profile"] = profile
    problems = data_problems(data)
    for key, message in problems:
        option = "--profile" if key == "model_profile" and profile else f"--data {key}"
        click.echo(f"provision: error: {option}: {message}", err=True)
    if problems:
        sys.exit(EXIT_BAD_INPUT)
    for spec in what_if:
        try:
            planner.parse_what_if(spec)
        except planner.WhatIfError as exc:
            _fail_input(f"--what-if {spec!r}: {exc}")
    result = planner.plan_what_if(list(what_if), settings.resolve(data))
    _show_plan(result, as_json)
    sys.exit(EXIT_OK)


def _show_plan(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(result)
        return
    from provisioner.report import plan_table

    _console().print(plan_table(result))


@main.command()
@click.argument("inventory")
@limit_option
@click.option("--dry", is_flag=True, help="Show what would change without changing anything.")
@click.option(
    "--no-reboot",
    is_flag=True,
    help="Never reboot; hosts that need one are reported as pending reboot.",
)
@click.option("--serial", is_flag=True, help="Run host by host (pyinfra --serial).")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Hosts worked on at once (pyinfra --parallel); reboots happen this many at a time.",
)
@data_option
@json_option
def apply(
    inventory: str,
    limit: tuple[str, ...],
    dry: bool,
    no_reboot: bool,
    serial: bool,
    batch: int | None,
    data: tuple[str, ...],
    as_json: bool,
) -> None:
    """Install driver, CUDA toolkit, PyTorch, Ollama and the planned models on every host."""
    from provisioner.apply import run_deploy

    override: dict[str, Any] = _parse_data(data)
    if no_reboot:
        override["nvidia_reboot"] = False
    if batch:
        override["nvidia_reboot_batch"] = batch
    loaded = _load(inventory, limit, override or None)
    _use_lock(loaded.source)
    with _interruptible("apply"):
        result = run_deploy(
            loaded, "site", limit=limit, dry=dry, serial=serial, batch=batch, data=override
        )
    _report_run(result, as_json)


@main.command("lock")
@click.argument("inventory")
@click.argument("components", nargs=-1, metavar="[COMPONENT...]")
@click.option(
    "--upgrade",
    is_flag=True,
    help="Re-resolve the COMPONENTs given (driver, fabricmanager, toolkit, ollama, torch, "
    "model), every kind when none is given, and print what moved (old -> new).",
)
@limit_option
@json_option
def lock_command(
    inventory: str,
    components: tuple[str, ...],
    upgrade: bool,
    limit: tuple[str, ...],
    as_json: bool,
) -> None:
    """Resolve every moving part of the fleet and write INVENTORY's lock (X.py -> X.lock.toml).

    A lock that exists keeps every answer it holds (a second run changes nothing); only
    --upgrade moves them. The format is in docs/lock.md.
    """
    from provisioner import lock as lockfile

    if components and not upgrade:
        _fail_input("COMPONENTs are only given with --upgrade (provision lock INV --upgrade model)")
    unknown = sorted(set(components) - set(lockfile.KINDS))
    if unknown:
        _fail_input(f"--upgrade {unknown[0]!r}: not a component ({', '.join(lockfile.KINDS)})")
    loaded = _load(inventory, limit)
    result = _write_lock(loaded, list(components) if upgrade else None)
    if as_json:
        _print_json(result.to_json())
    else:
        _show_lock(result)
    sys.exit(result.exit_code)


def _write_lock(loaded, upgrade: list[str] | None):
    from provisioner import lock as lockfile
    from provisioner import lock_resolve

    try:
        with _interruptible("lock"):
            return lock_resolve.run(loaded, upgrade)
    except lockfile.LockError as exc:
        _fail_input(str(exc))


def _show_lock(result) -> None:
    what = "wrote" if result.written else "unchanged:"
    click.echo(f"{what} {result.path} ({len(result.lock.items)} items)")
    for change in result.changes:
        click.echo(f"  {change.line()}")
    for host, why in result.errors.items():
        click.echo(f"provision: host {host}: {why}", err=True)


@main.group()
def bundle() -> None:
    """The fleet's locked artefacts in one archive, for a site that reaches no source."""


@bundle.command("export")
@click.argument("inventory")
@click.option("-o", "--output", "output", required=True, metavar="FILE", help="The bundle (tar).")
@json_option
def bundle_export(inventory: str, output: str, as_json: bool) -> None:
    """Fetch every artefact INVENTORY's lock names, each checked, into one archive FILE."""
    from pathlib import Path

    from provisioner import bundle as bundle_lib
    from provisioner import lock as lockfile

    path = lockfile.path_for(inventory)
    if path is None or not path.exists():
        _fail_input(f"{inventory}: no lock next to it; `provision lock {inventory}` writes one")
    result = _bundle_step(lambda: bundle_lib.export(path, Path(output)))
    _bundle_done(
        result,
        as_json,
        f"wrote {result.path}: {len(result.entries)} files, {result.size} bytes, "
        f"sha256 {result.sha256}",
    )


@bundle.command("import")
@click.argument("file")
@click.option("--to", "site", required=True, metavar="SITE", help="The site mirror's folder.")
@click.option("--registry", metavar="URL", help="The site's OCI registry, for the models.")
@click.option(
    "--sign-key",
    metavar="KEY",
    help="Sign each apt Release with this GnuPG secret key of the site ($GNUPGHOME); its "
    "public key is written beside it as <last 8 hex of the fingerprint>.pub.",
)
@json_option
def bundle_import(
    file: str, site: str, registry: str | None, sign_key: str | None, as_json: bool
) -> None:
    """Check FILE and load it into the site mirror SITE and the site registry."""
    from pathlib import Path

    from provisioner import bundle as bundle_lib

    if not Path(file).is_file():
        _fail_input(f"{file}: no such bundle")
    result = _bundle_step(
        lambda: bundle_lib.import_bundle(Path(file), Path(site), registry, sign_key)
    )
    signed = f"; apt Release signed by {result.signed_by}" if result.signed_by else ""
    _bundle_done(
        result,
        as_json,
        f"{site}: {len(result.files)} files; registry: {len(result.models)} models{signed}",
    )


def _bundle_step(step: Callable[[], Any]) -> Any:
    """Run a bundle step: a bad lock or signing key is bad input (exit 2), any other
    :class:`provisioner.bundle.BundleError` (a source, a file that does not match) exits 1."""
    from provisioner import bundle as bundle_lib
    from provisioner import lock as lockfile

    try:
        return step()
    except (lockfile.LockError, bundle_lib.SigningKeyError) as exc:
        _fail_input(str(exc))
    except bundle_lib.BundleError as exc:
        click.echo(f"provision: bundle: {exc}", err=True)
        sys.exit(EXIT_HOST_FAILED)


def _bundle_done(result: Any, as_json: bool, summary: str) -> None:
    """Print a bundle step's result (its JSON, or ``summary``) and exit 0."""
    if as_json:
        _print_json(result.to_json())
    else:
        click.echo(summary)
    sys.exit(EXIT_OK)


def _use_lock(source: str) -> None:
    """Name this run's lock (next to the inventory ``source``) to the deploys
    (``$PROVISIONER_LOCK``), or say once, on stderr, that the fleet is not locked. A lock that
    cannot be used is bad input (exit 2)."""
    import os

    from provisioner import lock as lockfile

    path = lockfile.path_for(source)
    try:
        found = lockfile.read(path) if path else None
    except lockfile.LockError as exc:
        _fail_input(f"{exc}; nothing was changed and no host was contacted")
    os.environ[lockfile.ENV] = str(path) if found is not None else ""
    if found is None:
        where = f" (no {path})" if path else ""
        click.echo(
            f"provision: the fleet is not locked{where}: versions, sums and model digests are "
            "resolved anew on this run; `provision lock INVENTORY` records them.",
            err=True,
        )


@contextlib.contextmanager
def _interruptible(what: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM): the run stops what it started on the hosts (see
    provisioner.interrupts), then ``provision`` says so and exits 130."""
    from provisioner.interrupts import EXIT_INTERRUPTED, delivered_to_main, message

    try:
        with delivered_to_main():
            yield
    except KeyboardInterrupt:
        click.echo(message(what), err=True)
        sys.exit(EXIT_INTERRUPTED)


def _report_run(result, as_json: bool) -> None:
    if as_json:
        _print_json(result.to_json())
    else:
        from provisioner.report import run_table

        _console().print(run_table(result))
        for line in result.advice():
            click.echo(line, err=True)
    sys.exit(result.exit_code)


@main.command()
@click.argument("inventory")
@limit_option
@json_option
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write JUnit XML here.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Hosts checked in parallel (default: all).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Then run provision apply on the hosts found broken (only those) and verify them again.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="With --repair: hosts repaired (and rebooted) at once.",
)
def verify(
    inventory: str,
    limit: tuple[str, ...],
    as_json: bool,
    junit: str | None,
    workers: int | None,
    repair: bool,
    batch: int | None,
) -> None:
    """Prove with testinfra checks that every layer works on every host."""
    from pathlib import Path

    loaded = _load(inventory, limit)
    from provisioner.verify.runner import VerifyError
    from provisioner.verify_cli import verify_inventory

    try:
        report = verify_inventory(loaded, workers=workers, junit=Path(junit) if junit else None)
    except VerifyError as exc:
        click.echo(f"provision: verify could not run: {exc}", err=True)
        sys.exit(EXIT_HOST_FAILED)
    if repair:
        _verify_and_repair(inventory, report, as_json, batch, workers)
    if as_json:
        _print_json(report.to_json())
    else:
        _show_verify(report)
    sys.exit(report.exit_code)


def _show_verify(report) -> None:
    console = _console()
    console.print(report.table())
    failures = report.failures()
    if failures:
        console.print(failures)


def _verify_and_repair(inventory, report, as_json: bool, batch, workers) -> None:
    """``verify --repair``: the report, then apply on the broken hosts, then their re-check."""
    from provisioner.verify_cli import repair

    if not as_json:
        _show_verify(report)
    _use_lock(inventory)  # the repair's apply honours the fleet's lock
    fixed = repair(lambda hosts: _load(inventory, hosts), report, batch=batch, workers=workers)
    if as_json:
        _print_json({**report.to_json(), "repair": fixed.to_json()})
    elif not fixed.broken:
        click.echo("provision: nothing to repair", err=True)
    else:
        from provisioner.report import run_table

        click.echo(f"provision: repairing {', '.join(fixed.broken)}", err=True)
        _console().print(run_table(fixed.run))
        if fixed.after is not None:
            _show_verify(fixed.after)
    sys.exit(fixed.exit_code)


@main.group()
def models() -> None:
    """Keep each host's models in line with its plan (sync, scheduled update, site mirror)."""


def _report_models(result, as_json: bool) -> None:
    if as_json:
        _print_json(result.to_json())
    else:
        _console().print(result.table())
    sys.exit(result.exit_code)


@models.command("sync")
@click.argument("inventory")
@limit_option
@click.option(
    "--prune",
    is_flag=True,
    help="Also remove models that are no longer planned (pinned ones stay).",
)
@click.option("--dry", is_flag=True, help="Show what would change without changing anything.")
@click.option(
    "--batch", type=click.IntRange(min=1), default=None, help="Hosts synced at once (default: all)."
)
@json_option
def models_sync(
    inventory: str, limit: tuple[str, ...], prune: bool, dry: bool, batch: int | None, as_json: bool
) -> None:
    """Pull the planned models that are missing (or changed) on each host."""
    loaded = _load(inventory, limit)
    _use_lock(loaded.source)
    from provisioner import models_sync as sync_lib

    with _interruptible("models sync"):
        result = sync_lib.sync(
            loaded, prune=True if prune else None, dry=dry, batch=batch, show_progress=not as_json
        )
    _report_models(result, as_json)


@models.command("update")
@click.argument("inventory")
@limit_option
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Hosts updated at once (default: all).",
)
@click.option(
    "--upgrade-lock",
    is_flag=True,
    help="First move the lock's model digests to what the registries serve now "
    "(provision lock --upgrade model), then update to them: commit the lock it writes.",
)
@json_option
def models_update(
    inventory: str, limit: tuple[str, ...], batch: int | None, upgrade_lock: bool, as_json: bool
) -> None:
    """Re-pull every planned tag whose registry digest changed, then check each host's models.

    With a lock, the lock's digests are installed; --upgrade-lock moves them first.
    """
    loaded = _load(inventory, limit)
    if upgrade_lock:
        moved = _write_lock(loaded, ["model"])
        for change in moved.changes:
            click.echo(f"provision: lock: {change.line()}", err=True)
        for host, why in moved.errors.items():
            click.echo(f"provision: host {host}: {why}", err=True)
    _use_lock(loaded.source)
    from provisioner import models_sync as sync_lib

    with _interruptible("models update"):
        result = sync_lib.update(loaded, batch=batch, show_progress=not as_json)
    _report_models(result, as_json)


@models.command("mirror")
@click.argument("inventory")
@limit_option
@click.option(
    "--to",
    "registry",
    default=None,
    help="Site registry URL (default: each host's ollama_registry).",
)
@click.option(
    "--from", "upstream", default=None, help="Upstream registry (default: the public library)."
)
@json_option
def models_mirror(
    inventory: str,
    limit: tuple[str, ...],
    registry: str | None,
    upstream: str | None,
    as_json: bool,
) -> None:
    """Copy the planned models of an inventory into the site registry, once."""
    loaded = _load(inventory, limit)
    from provisioner import models_sync as sync_lib

    if not registry and not any(loaded.resolved(h).get("ollama_registry") for h in loaded.hosts):
        _fail_input("no host has a site registry (ollama_registry) and no --to was given")
    kwargs = {"registry": registry, "show_progress": not as_json}
    if upstream:
        kwargs["upstream"] = upstream
    results = sync_lib.mirror_inventory(loaded, **kwargs)
    if as_json:
        _print_json({"registries": [r.to_json() for r in results]})
    else:
        for result in results:
            _console().print(result.table())
    sys.exit(max((r.exit_code for r in results), default=EXIT_OK))


@models.command("table")
@click.option(
    "--context",
    type=click.IntRange(min=1, max=16 * 2**20),
    default=None,
    help="Context per request (default: ollama_context_length's default).",
)
@click.option(
    "--tiers",
    default="8,16,24,48,80",
    show_default=True,
    help="Card sizes in GB to check each model against.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also draw VRAM against context for the most used models into this PNG (matplotlib).",
)
@data_option
def models_table(
    context: int | None, tiers: str, fmt: str, chart_path: str | None, data: tuple[str, ...]
) -> None:
    """Print every catalog model with the VRAM it needs and the cards that hold it."""
    from provisioner import model_table
    from provisioner.inventory import data_problems

    override = _parse_data(data)
    for key, message in data_problems(override):
        _fail_input(f"--data {key}: {message}")
    try:
        tier_list = model_table.parse_tiers(tiers)
        rows = model_table.rows(context, tier_list, override)
    except model_table.TableError as exc:
        _fail_input(str(exc))
    ctx = context or int(override.get("ollama_context_length") or 0) or rows[0]["context"]
    if context is None and not data and fmt == "md" and tier_list == model_table.DEFAULT_TIERS:
        click.echo(model_table.markdown_page(tier_list), nl=False)
    else:
        click.echo(model_table.render(rows, fmt, ctx), nl=False)
    if chart_path:
        try:
            model_table.chart(chart_path)
        except model_table.TableError as exc:
            _fail_input(str(exc))
    sys.exit(EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    main()
