"""
Manage Ollama: a checksum-verified release in a versioned directory, the service switched to it
atomically (rolled back when it does not answer), the model store's directories, and the set
of models a host holds.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

from provisioner import bounds
from provisioner.facts.ollama import (
    APPLIED_STAMP,
    INSTALL_DIR,
    MODELS_DIR,
    RELEASE_MARKER,
    OllamaInstall,
    OllamaModels,
    OllamaRegistryManifest,
    PathChain,
)
from provisioner.ollama_api import ModelName, PullError, PullStream, site_name
from provisioner.operations import system
from provisioner.planner import wanted_models

__all__ = ["FETCH_HELPER", "SERVICE_USER", "models", "refuse", "release", "service", "store"]

#: Where the Ollama deploy installs ``templates/ollama/ollama-fetch-model.sh``.
FETCH_HELPER = "/usr/local/lib/provisioner/ollama-fetch-model"
#: The command on PATH, a link to ``install_dir/current/bin/ollama``.
BIN_LINK = "/usr/local/bin/ollama"
#: The user the service runs as, owner of the model store.
SERVICE_USER = "ollama"
DEFAULT_API = "http://127.0.0.1:11434"

q = shlex.quote


# --- refusing a host -------------------------------------------------------------------------


@operation()
def refuse(reason: str):
    """
    Fail this host, with ``reason``, when the run reaches this operation; the other hosts go
    on. For problems found while preparing a host (a version below the CVE floor): raising
    would stop every host of the run.

    + reason: the message the host fails with

    **Example:**

    .. code:: python

        ollama.refuse(name="Check the Ollama release", reason="0.17.1 is below the CVE floor")
    """
    yield system.refusal(reason)


# --- release ----------------------------------------------------------------------------------


def _release_script(
    version: str,
    url: str,
    sha256: str | None,
    install_dir: str,
    archive: str,
    sums_url: str = "",
    source: str = "ollama_sha256",
) -> str:
    d = install_dir.rstrip("/")
    staging, download, final = (
        f"{d}/.staging-{version}",
        f"{d}/.download-{version}",
        f"{d}/{version}",
    )
    asset = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    # zstd -dc | tar: any tar can read it (GNU tar's --zstd needs 1.31+); `zstd` is the
    # package of that name on Debian, Ubuntu and EL, which the deploy installs.
    untar = (
        f"tar -xzf {q(download)}" if archive == "tgz" else f"zstd -dcq {q(download)} | tar -xf -"
    )
    lines = [
        "set -e",
        "umask 022",
        f"mkdir -p {q(d)}",
        f"rm -rf {q(staging)} {q(download)} {q(download)}.sums",
        f"curl -fsSL {shlex.join(bounds.curl_options('release_max_time_s'))} "
        f"-o {q(download)} {q(url)} || {{ rc=$?; rm -f {q(download)}; "
        f'echo "download of {url} into {d} failed (curl exit $rc'
        "$([ $rc -eq 23 ] && echo ', no space left on device')); nothing was unpacked\" >&2; "
        "exit 1; }",
    ]
    if sha256:
        lines.append(f"expected={q(sha256)}; source={q(source)}")
    else:  # the release's own sha256sum.txt, from the same source as the archive
        lines += [
            f"if ! curl -fsSL {shlex.join(bounds.curl_options('release_max_time_s'))} "
            f"-o {q(download)}.sums {q(sums_url)}; "
            f'then rm -f {q(download)}; echo "cannot fetch {sums_url}, and no sha256 is pinned '
            '(ollama_sha256): nothing was unpacked" >&2; exit 1; fi',
            f'expected=$(awk -v a={q(asset)} \'{{n=$2; sub(/^\\*/, "", n); '
            f'sub(/^\\.\\//, "", n)}} n == a && length($1) == 64 && $1 !~ /[^0-9a-fA-F]/ '
            f"{{print tolower($1); exit}}' {q(download)}.sums)",
            f"rm -f {q(download)}.sums",
            f'if [ -z "$expected" ]; then rm -f {q(download)}; echo "{sums_url} has no line '
            f'for ./{asset}: nothing was unpacked" >&2; exit 1; fi',
            f"source={q(sums_url)}",
        ]
    lines += [
        f"actual=$(sha256sum {q(download)} | cut -d' ' -f1)",
        f'if [ "$actual" != "$expected" ]; then rm -f {q(download)}; '
        f'echo "checksum mismatch for {url}: expected $expected (from $source), got $actual; '
        'nothing was unpacked" >&2; exit 1; fi',
        f"mkdir {q(staging)}",
        f"{untar} -C {q(staging)} --no-same-owner",
        f"if [ ! -x {q(staging)}/bin/ollama ]; then rm -rf {q(staging)} {q(download)}; "
        f'echo "{url} holds no bin/ollama" >&2; exit 1; fi',
        f'echo "$actual" > {q(staging)}/{RELEASE_MARKER}',
        f"rm -rf {q(final)}",
        f"mv {q(staging)} {q(final)}",
        f"rm -f {q(download)}",
        f'echo "Ollama {version}: sha256 $actual verified against $source"',
    ]
    return "\n".join(lines)


@operation()
def release(
    version: str,
    url: str,
    sha256: str | None = None,
    install_dir: str = INSTALL_DIR,
    archive: str = "tgz",
    sums_url: str = "",
    sha256_source: str = "ollama_sha256",
):
    """
    Unpack one Ollama release into ``install_dir/<version>``, checked against its sha256
    before anything is unpacked. A release already unpacked with the same sum (or, with no
    pinned sum, unpacked at all: it was verified when it was) is left alone.

    + version: the Ollama version, the name of its directory
    + url: where the release archive is downloaded from
    + sha256: the archive's pinned sha256; a mismatch fails the host and unpacks nothing.
      None: take it from ``sums_url`` (the release's ``sha256sum.txt``), on the host
    + install_dir: the parent of the versioned directories
    + archive: ``tgz`` or ``zst`` (``.tar.zst``, needs ``zstd`` on the host)
    + sums_url: the release's ``sha256sum.txt`` (lines ``<sha256>  ./<archive name>``)
    + sha256_source: where a pinned sum came from, for the messages

    **Example:**

    .. code:: python

        ollama.release(
            name="Unpack Ollama 0.32.15",
            version="0.32.15",
            url="https://github.com/ollama/ollama/releases/download/v0.32.15/ollama-linux-amd64.tar.zst",
            sums_url="https://github.com/ollama/ollama/releases/download/v0.32.15/sha256sum.txt",
            archive="zst",
        )
    """
    if archive not in ("tgz", "zst"):
        raise OperationValueError(f"archive must be tgz or zst, not {archive!r}")
    if not sha256 and not sums_url:
        raise OperationValueError("give sha256 or sums_url: an archive is never unpacked unchecked")
    sha256 = sha256.lower() if sha256 else None
    installed = host.get_fact(OllamaInstall, install_dir=install_dir)
    have = installed["releases"].get(version)
    if have and (sha256 is None or have == sha256):
        host.noop(f"Ollama {version} is unpacked in {install_dir}/{version} (sha256 {have})")
        return
    yield StringCommand(
        _release_script(version, url, sha256, install_dir, archive, sums_url, sha256_source)
    )


# --- service ----------------------------------------------------------------------------------


def _switch_script(version: str, install_dir: str, bin_link: str = BIN_LINK) -> str:
    d = install_dir.rstrip("/")
    tmp_link = f"{bin_link.rsplit('/', 1)[0]}/.ollama.tmp"
    return (
        f"ln -sfn {q(version)} {q(d)}/.current.tmp && mv -T {q(d)}/.current.tmp {q(d)}/current && "
        f"ln -sfn {q(d)}/current/bin/ollama {q(tmp_link)} && mv -T {q(tmp_link)} {q(bin_link)}"
    )


def _wait_script(
    version: str,
    api_url: str,
    timeout: int,
    service_name: str,
    install_dir: str,
    previous: str | None,
) -> str:
    d = install_dir.rstrip("/")
    pattern = '"version" *: *"' + version.replace(".", "\\.") + '"'
    lines = [
        f"systemctl daemon-reload && systemctl restart {q(service_name)}",
        f"end=$(( $(date +%s) + {int(timeout)} ))",
        f"until curl -fsS -m 2 {q(api_url + '/api/version')} 2>/dev/null"
        f" | grep -q {q(pattern)}; do",
        '  if [ "$(date +%s)" -ge "$end" ]; then',
        f'    echo "Ollama {version} did not answer on {api_url} within {int(timeout)}s '
        'after the restart" >&2',
        f"    systemctl status {q(service_name)} --no-pager -n 20 >&2 || true",
    ]
    if previous:
        lines += [
            f"    ln -sfn {q(previous)} {q(d)}/.current.tmp && "
            f"mv -T {q(d)}/.current.tmp {q(d)}/current",
            f"    systemctl restart {q(service_name)} || true",
            f'    echo "rolled back to Ollama {previous}" >&2',
        ]
    lines += ["    exit 1", "  fi", "  sleep 1", "done"]
    return "\n".join(lines)


@operation()
def service(
    version: str,
    release_sha256: str | None,
    config_sha256: str,
    api_url: str = DEFAULT_API,
    start_timeout: int = 60,
    install_dir: str = INSTALL_DIR,
    service_name: str = "ollama",
):
    """
    Serve Ollama ``version``: switch ``install_dir/current`` and ``/usr/local/bin/ollama`` to
    it (``ln -sfn`` + ``mv -T``, atomic), restart the service only when the release or the
    rendered configuration changed since the last successful start (or it is not running), and
    wait until the API answers with that version. An upgrade that does not answer in time is
    rolled back to the version that was serving, and the host fails with the reason.

    + version: the release to serve (unpacked by ``ollama.release``)
    + release_sha256: the release archive's sha256 (a re-unpacked release restarts too); None
      when it was not pinned: the sum the host verified (``.provisioner-sha256``) is used
    + config_sha256: a digest of the rendered unit and drop-in (a change restarts)
    + api_url: where the API answers on the host (``/api/version`` is polled)
    + start_timeout: seconds to wait for the API after a restart
    + install_dir: the parent of the versioned directories
    + service_name: the systemd unit

    **Example:**

    .. code:: python

        ollama.service(
            name="Serve Ollama 0.32.15",
            version="0.32.15",
            release_sha256="<sha256>",
            config_sha256="<sha256 of the unit and drop-in>",
        )
    """
    installed = host.get_fact(OllamaInstall, install_dir=install_dir, service=service_name)
    d = install_dir.rstrip("/")
    # the sum of the unpacked release: pinned, or as the host verified it (sha256sum.txt)
    unpacked = (release_sha256 or "").lower() or installed["releases"].get(version) or ""
    desired = f"{version} {unpacked} {config_sha256}"

    changed = False
    if installed["enabled"] != "enabled":
        yield f"systemctl enable {q(service_name)}"
        changed = True

    switch = installed["current"] != version or installed["bin"] != f"{d}/current/bin/ollama"
    restart = switch or installed["applied"] != desired or installed["active"] != "active"
    if restart:
        previous = installed["current"]
        if previous == version or previous not in installed["releases"]:
            previous = None
        if switch:
            yield _switch_script(version, install_dir)
        yield _wait_script(version, api_url, start_timeout, service_name, install_dir, previous)
        yield (
            f'echo {q(version)} "$(cat {q(f"{d}/{version}/{RELEASE_MARKER}")})" '
            f"{q(config_sha256)} > {q(d + '/' + APPLIED_STAMP)}"
        )
        changed = True
    if not changed:
        host.noop(f"Ollama {version} is serving with the current configuration")


# --- the store's directories ------------------------------------------------------------------


def _traversable(entry: dict[str, Any], user: str, group: str) -> bool:
    mode = entry["mode"] or 0
    if entry["user"] == user:
        return bool(mode & 0o100)
    if entry["group"] == group:
        return bool(mode & 0o010)
    return bool(mode & 0o001)


@operation()
def store(path: str, user: str = "ollama", group: str = "ollama", mode: str = "755"):
    """
    Make ``path`` a directory owned by ``user``:``group`` that the service can reach: missing
    parents are created (root-owned, 755) and parents the user cannot traverse get ``o+x``
    (traverse only, no listing): the most common reason Ollama fails on a custom
    ``OLLAMA_MODELS`` is a parent it cannot enter.

    + path: absolute path of the directory
    + user: owner of the directory (the service user)
    + group: its group
    + mode: its mode, octal

    **Example:**

    .. code:: python

        ollama.store(path="/srv/llm/models")
    """
    if not path.startswith("/"):
        raise OperationValueError(f"the model store must be an absolute path, not {path!r}")
    path = path.rstrip("/") or "/"
    chain = host.get_fact(PathChain, path=path)
    if not chain:
        yield system.refusal(f"cannot inspect {path} on the host")
        return
    *parents, leaf = chain
    for entry in parents:
        if not entry["exists"]:
            yield f"mkdir -m 755 {q(entry['path'])}"
        elif not _traversable(entry, user, group):
            yield f"chmod o+x {q(entry['path'])}"
    if not leaf["exists"]:
        yield f"mkdir -m {q(mode)} {q(path)}"
        yield f"chown {q(user)}:{q(group)} {q(path)}"
        return
    if (leaf["user"], leaf["group"]) != (user, group):
        yield f"chown {q(user)}:{q(group)} {q(path)}"
    if leaf["mode"] != int(mode, 8):
        yield f"chmod {q(mode)} {q(path)}"
    if parents and all(e["exists"] and _traversable(e, user, group) for e in parents):
        if (leaf["user"], leaf["group"], leaf["mode"]) == (user, group, int(mode, 8)):
            host.noop(f"{path} is owned by {user} and reachable")


# --- running a command while reading its output -----------------------------------------------


def _connector_arguments(target: Any) -> dict[str, Any]:
    given = getattr(target, "current_op_global_arguments", None) or {}
    return {key: given[key] for key in CONNECTOR_ARGUMENT_KEYS if key in given}


def _stream(state: Any, target: Any, command: str, on_line: Callable[[str], None]) -> int:
    """Run ``command`` on ``target`` and hand every output line to ``on_line`` as it arrives.

    SSH and local hosts stream (stdout and stderr combined); other connectors run the command
    through pyinfra and replay its output afterwards. Returns the exit status.
    """
    from pyinfra.connectors.local import LocalConnector
    from pyinfra.connectors.ssh import SSHConnector
    from pyinfra.connectors.util import make_unix_command_for_host

    arguments = _connector_arguments(target)
    connector = getattr(target, "connector", None)
    unix_arguments = {
        k: v
        for k, v in arguments.items()
        if k not in ("_get_pty", "_timeout", "_stdin", "_success_exit_codes")
    }
    if isinstance(connector, SSHConnector) and connector.client is not None:
        raw = make_unix_command_for_host(state, target, StringCommand(command), **unix_arguments)
        transport = connector.client.get_transport()
        channel = transport.open_session()
        channel.set_combine_stderr(True)
        try:
            channel.exec_command(raw.get_raw_value())
            with channel.makefile("r") as lines:
                for line in lines:
                    text = line if isinstance(line, str) else line.decode("utf-8", "replace")
                    on_line(text.rstrip("\n"))
            return channel.recv_exit_status()
        finally:  # also when on_line raised: the remote command is not left running
            channel.close()
    if isinstance(connector, LocalConnector):
        raw = make_unix_command_for_host(state, target, StringCommand(command), **unix_arguments)
        with subprocess.Popen(
            raw.get_raw_value(),
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    on_line(line.rstrip("\n"))
                return proc.wait()
            except BaseException:  # interrupted, or on_line raised: stop the command it ran
                _terminate_group(proc)
                raise
    status, output = target.run_shell_command(StringCommand(command), **arguments)
    for line in [*output.stdout_lines, *output.stderr_lines]:
        on_line(line)
    return 0 if status else 1


def _terminate_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of ``proc`` (the shell and the command it started)."""
    import os
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def _report(state: Any, target: Any, model: str, event: dict[str, Any]) -> None:
    """Hand a pull progress event to every state callback handler that wants them."""
    for handler in getattr(state, "callback_handlers", ()):
        callback = getattr(handler, "ollama_pull_progress", None)
        if callback is not None:
            callback(state, target, model, event)


def _follow(state: Any, target: Any, model: str, command: str) -> bool:
    stream = PullStream(model)
    logged: set[str] = set()

    def on_line(line: str) -> None:
        event = stream.feed(line)
        if event is None:
            return
        if stream.status not in logged:  # each step once in pyinfra's log
            logged.add(stream.status)
            logger.info(f"{target.print_prefix}{model}: {stream.status}")
        _report(
            state,
            target,
            model,
            {"status": stream.status, "completed": stream.completed, "total": stream.total},
        )

    try:
        returncode = _stream(state, target, command, on_line)
        stream.finish(returncode)
    except PullError as exc:
        _report(state, target, model, {"error": str(exc)})
        target.log_styled(str(exc), fg="red", log_func=logger.error)
        return False
    _report(
        state,
        target,
        model,
        {"status": "success", "completed": stream.total, "total": stream.total},
    )
    return True


def _api_command(
    api: str, method: str, path: str, body: dict[str, Any], *, stream: bool = False
) -> str:
    request = (
        f"-X {method} -H 'Content-Type: application/json' "
        f"--data-binary {q(json.dumps(body, sort_keys=True))} {q(api.rstrip('/') + path)}"
    )
    if stream:
        return f"curl -sS -N {request}"
    # not `curl -f`, which hides Ollama's {"error": ...} body: keep it and fail on >= 400
    return (
        "t=$(mktemp) || exit 1; "
        f'code=$(curl -sS -o "$t" -w "%{{http_code}}" {request}) || {{ rm -f "$t"; exit 1; }}; '
        'if [ "$code" -ge 400 ]; then '
        f'echo "{method} {path}: HTTP $code: $(cat "$t")" >&2; rm -f "$t"; exit 1; fi; '
        'rm -f "$t"'
    )


def pull_model(state: Any, host: Any, label: str, api: str, name: str, insecure: bool) -> bool:
    """Pull ``name`` through the host's ``/api/pull``, checking every NDJSON line."""
    body: dict[str, Any] = {"model": name, "stream": True}
    if insecure:
        body["insecure"] = True
    return _follow(state, host, label, _api_command(api, "POST", "/api/pull", body, stream=True))


def fetch_model(state: Any, host: Any, label: str, arguments: list[str]) -> bool:
    """Place a model from a registry into the store with the fetch helper, checking its output.
    The helper's transfer and lock bounds come from ``data/bounds.toml``."""
    env = [
        "PROVISIONER_CURL_BOUNDS=" + " ".join(bounds.curl_options("blob_max_time_s")),
        f"PROVISIONER_STORE_WAIT={bounds.get('store_lock', 'wait_s')}",
    ]
    return _follow(state, host, label, shlex.join(["env", *env, *arguments]))


# --- models -----------------------------------------------------------------------------------


def _site_host(registry: str | None, namespace: str) -> str:
    """The site registry's host (``host:port``, lower case), or "" without one."""
    if not registry:
        return ""
    return site_name("library/probe:latest", registry, namespace).host.lower()


@operation()
def models(
    models: list[str] | Callable[[], list[str]],
    pinned: list[str] | None = None,
    prune: bool = False,
    refresh: bool = True,
    registry: str | None = None,
    namespace: str = "library",
    insecure: bool = False,
    transport: str = "place",
    api: str = DEFAULT_API,
    models_dir: str = MODELS_DIR,
    user: str | None = None,
    fetch_helper: str | None = None,
    locked: dict[str, str] | None = None,
):
    """
    Make the host hold exactly the planned models: pull what is missing, re-pull what changed
    in the registry (``refresh``), and with ``prune`` remove what is neither planned nor pinned.
    Every line of a pull is checked for an error; an interrupted pull resumes on the next run.

    + models: the planned model names (``qwen2.5-coder:14b``), or a function returning them,
      called when the operation runs (so a plan can use facts gathered on a fresh host)
    + pinned: models the operator pinned: pulled like planned ones and never pruned
    + prune: remove every other model from the store
    + refresh: compare each present model with its registry manifest and re-pull on change
    + registry: a site registry (``http://10.0.0.5:5000``) to take models from instead of the
      public library; each model keeps its short name through an alias (``/api/copy``)
    + namespace: the site registry's namespace for library models
    + insecure: allow a plain-HTTP site registry
    + transport: ``place`` (download and verify the blobs into the store, works with every
      registry) or ``pull`` (Ollama's own ``/api/pull``; needs a registry that redirects blob
      downloads); the public library is always pulled
    + api: the host's Ollama API
    + models_dir: the store (``OLLAMA_MODELS``)
    + user: the owner of placed files (default: the service user, ``ollama``)
    + fetch_helper: the helper the Ollama deploy installs for ``place`` (default
      ``/usr/local/lib/provisioner/ollama-fetch-model``)
    + locked: the fleet's lock for this host (model -> manifest digest, ``provisioner.lock``):
      each model is held at that digest, placed from the registry by digest (which keeps it
      after its tag moved), and the host fails when a source offers another; None: no lock

    **Example:**

    .. code:: python

        ollama.models(
            name="Serve the planned models",
            models=["qwen2.5-coder:14b", "nomic-embed-text:latest"],
            registry="http://10.0.0.5:5000",
            insecure=True,
            prune=True,
        )
    """
    if transport not in ("place", "pull"):
        raise OperationValueError(f"transport must be place or pull, not {transport!r}")
    options = _Options(
        refresh,
        transport,
        api,
        insecure,
        models_dir,
        user or SERVICE_USER,
        fetch_helper,
        _site_host(registry, namespace),
        locked,
    )
    try:
        planned = models() if callable(models) else list(models)
    except Exception as exc:  # the planner failed for this host: fail it, not the run
        yield system.refusal(f"no model plan for this host: {exc}")
        return
    sources = _sources(planned, pinned or [], registry, namespace, insecure)
    installed = host.get_fact(OllamaModels, models_dir=models_dir)
    run = _Run()
    for name, source in sources.items():
        yield from _sync_model(name, source, installed, options, run)
        if run.refused:
            return
    removed = _unwanted(installed, sources) if prune else []
    for name in removed:
        yield _api_command(api, "DELETE", "/api/delete", {"model": name})
    yield from _clean_blobs(run.replaced, models_dir)
    if not run.replaced and not removed and len(run.current) == len(sources):
        host.noop(
            f"{len(sources)} planned model(s) present and current"
            + (f": {', '.join(sources)}" if sources else "")
        )


@dataclass(frozen=True)
class _Options:
    """How :func:`models` syncs: its arguments, once checked."""

    refresh: bool
    transport: str
    api: str
    insecure: bool
    models_dir: str
    user: str
    fetch_helper: str | None
    site_host: str  # the site registry's host:port, lower case ("" without one)
    locked: dict[str, str] | None = None  # the fleet lock's digests (None: not locked)


@dataclass
class _Run:
    """What :func:`models` found so far on this host."""

    current: list[str] = field(default_factory=list)  # present and equal to the registry's
    replaced: dict[str, list[str]] = field(default_factory=dict)  # name -> digests it drops
    refused: bool = False


def _sources(
    planned: list[str], pinned: list[str], registry: str | None, namespace: str, insecure: bool
) -> dict[str, ModelName]:
    """Each wanted model (``planner.wanted_models``) and where it is taken from."""
    try:
        sources = {
            name: (site_name(name, registry, namespace) if registry else ModelName.parse(name))
            for name in wanted_models(planned, pinned)
        }
    except ValueError as exc:
        raise OperationValueError(str(exc)) from None
    for name, source in sources.items():
        if source.scheme == "http" and not insecure:
            raise OperationValueError(
                f"{name}: {source.registry_url} is plain HTTP; set ollama_registry_insecure"
            )
    return sources


def _sync_model(
    name: str, source: ModelName, installed: dict[str, Any], options: _Options, run: _Run
) -> Iterator[Any]:
    """The commands that make one model present and current (nothing when it is)."""
    have = installed.get(name)
    present = bool(have and have.get("complete"))
    place = source.canonical != name and options.transport == "place"
    remote, problem = _remote(name, source, options, have if present else None, place)
    if problem:
        yield system.refusal(problem)
        run.refused = True
        return
    if present and (remote is None or have["content"] == remote["content"]):
        run.current.append(name)
        return
    if have and have.get("content"):
        new = set(remote["content"]) if remote else set()
        run.replaced[name] = [digest for digest in have["content"] if digest not in new]
    yield from _transfer(name, source, installed.get(source.canonical), remote, place, options)


def _remote(
    name: str,
    source: ModelName,
    options: _Options,
    have: dict[str, Any] | None,
    place: bool,
) -> tuple[dict[str, Any] | None, str | None]:
    """The registry manifest to compare ``name`` with or fetch it by (None: not needed), or
    why the host fails. ``have``: the store's complete copy, or None."""
    if options.locked is not None:
        return _locked_remote(name, source, options.locked, have, place)
    if not (options.refresh or (place and have is None)):
        return None, None
    remote = host.get_fact(OllamaRegistryManifest, url=source.manifest_url)
    if "error" in remote:
        verb = "check" if have is not None else "fetch"
        return None, f"cannot {verb} {name} against {source.manifest_url}: {remote['error']}"
    return remote, None


def _locked_remote(
    name: str, source: ModelName, locked: dict[str, str], have: dict[str, Any] | None, place: bool
) -> tuple[dict[str, Any] | None, str | None]:
    """The registry manifest to hold ``name`` at its locked digest (None: the store already
    holds it), or why the host fails: the model is not in the lock, or its source offers
    another manifest. Placed models are fetched by digest; pulled ones by their tag, which
    must still name the locked digest."""
    digest = locked.get(name)
    if digest is None:
        return None, (
            f"model {name} is planned but not in the lock: run `provision lock INVENTORY` "
            "and review the lock"
        )
    if have is not None and have.get("digest") == digest:
        return None, None
    url = source.manifest_url
    if place:
        url = f"{source.registry_url}/v2/{source.repository}/manifests/{digest}"
    remote = host.get_fact(OllamaRegistryManifest, url=url)
    if "error" in remote:
        return None, f"model {name}: cannot fetch its locked manifest {url}: {remote['error']}"
    if remote["digest"] != digest:
        return None, (
            f"model {name}: {url} offers {remote['digest']}, the lock holds {digest}; "
            "`provision lock INVENTORY --upgrade model` moves the lock (review it)"
        )
    return {**remote, "url": url}, None


def _transfer(
    name: str,
    source: ModelName,
    have_source: dict[str, Any] | None,
    remote: dict[str, Any] | None,
    place: bool,
    options: _Options,
) -> Iterator[Any]:
    """Fetch or pull ``source`` unless the store already holds it, then alias it as ``name``."""
    source_ok = (
        source.canonical != name
        and have_source is not None
        and have_source.get("complete")
        and remote is not None
        and have_source["content"] == remote["content"]
    )
    if not source_ok:
        if place:
            assert remote is not None
            yield _fetch_command(name, source, remote, options)
        else:
            # insecure only towards the site registry's own host, never another registry
            plain = options.insecure and source.host.lower() == options.site_host
            yield FunctionCommand(pull_model, (name, options.api, source.pull_name, plain), {})
    if source.canonical != name:
        body = {"source": source.display, "destination": name}
        yield _api_command(options.api, "POST", "/api/copy", body)


def _fetch_command(
    name: str, source: ModelName, remote: dict[str, Any], options: _Options
) -> FunctionCommand:
    base = source.blob_url("").rstrip("/") + "/"
    blobs = [f"{digest}:{size}" for digest, size in remote["blobs"]]
    arguments = [
        options.fetch_helper or FETCH_HELPER,
        options.models_dir,
        options.user,
        base,
        remote["digest"],
        remote.get("url") or source.manifest_url,  # fetched by the helper, never an argument
        source.manifest_path,
        *blobs,
    ]
    return FunctionCommand(fetch_model, (name, arguments), {})


def _unwanted(installed: dict[str, Any], sources: dict[str, ModelName]) -> list[str]:
    """Models in the store that are neither wanted nor the site copy of a wanted one."""
    keep = set(sources) | {source.canonical for source in sources.values()}
    return sorted(name for name in installed if name not in keep)


def _clean_blobs(replaced: dict[str, list[str]], models_dir: str) -> Iterator[str]:
    """Remove the blobs that replaced models dropped, unless another manifest uses them."""
    stale = sorted({digest.split(":", 1)[1] for content in replaced.values() for digest in content})
    if stale:
        blobs_dir = models_dir.rstrip("/") + "/blobs"
        yield (
            f"cd {q(blobs_dir)} && for h in {' '.join(stale)}; do "
            'grep -rqs "sha256:$h" ../manifests || rm -f "sha256-$h"; done'
        )
