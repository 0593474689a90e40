"""Facts read by many operations of one run: one remote command per layer, fetched again only
after something changed.

pyinfra 3 does not cache facts: each ``host.get_fact`` is a remote command, and pyinfra runs
every operation's body twice (once to plan it, once to execute it), so a converged host paid
each read twice. Two tools here:

* ``get_fact(cls, **kwargs)``: ``host.get_fact`` for the current host, re-used while nothing
  changed.
* ``register(keys)``: a layer's state, registered for the host (``(cls, kwargs)`` pairs, the
  facts the layer's operations will read: ``facts/gpu_state.py``), read later: the first read
  of any registered key reads every registered key not read yet, in ONE remote command. From
  then on ``host.get_fact`` of a registered key, by our operations or by pyinfra's own
  (``files.put``, ``systemd.service``, ...), is answered from the values read.
* ``probe(keys)``: ``register(keys)`` and read now (one command): for what a deploy needs to
  plan. Keys registered before and not read yet come along in the same command, so a site
  that registers every layer's planning facts first plans a host in one command.

Registered keys are read in the order they were registered: the site registers the host lock
(``HostLock``, the one fact with an effect) first, so the lock is taken before the state it
guards is read. When pyinfra does not check operations for changes while planning (``-y``, as
``provision apply`` runs it), the operations' keys are only read when the run executes: a
converged run reads each host twice (plan, execute).

Nothing stale: values are kept per *generation*: the phase of the run (planning or
executing), the number of completed operations that changed the host, and the number of
commands and uploads run on it outside fact reads (an operation that runs ``mkdir`` and then
reads the folder inside the same operation sees it). When the run starts executing, and again
after anything ran on the host, the values are dropped; the next read of a registered key
reads every registered key again, in one command (a change made between planning and
executing, or by an earlier command, is seen). Use it only for reads at the top
of an operation (before it yields), never to poll inside one: ``fresh`` reads the host now
(the module after a reboot), and ``BootId``, which the reboot wait polls, is never registered.

A part of the probe whose command fails (non-zero exit, a missing command, output its fact
cannot parse) is not kept: it is read alone, as pyinfra would, so an error reads and fails the
host exactly as before.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra.api import FactBase, Host, State, StringCommand
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api import host as pyinfra_host
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.context import ctx_host, ctx_state

from provisioner import fact_batch

Key = tuple[type[FactBase], dict[str, Any]]

_CACHE: WeakKeyDictionary[Host, tuple[Any, dict[Any, Any]]] = WeakKeyDictionary()
# the keys each host's probes registered (key -> (cls, kwargs)), in order
_REGISTERED: WeakKeyDictionary[Host, dict[Any, Key]] = WeakKeyDictionary()
_TRIED = object()  # the values' entry: keys a probe already tried in this generation
PROBE_MARK = "##provisioner-probe"
_pyinfra_get_fact = pyinfra_host.get_fact
# per host: fact reads in progress, and commands or uploads run outside them (see _install)
_READING: WeakKeyDictionary[Host, int] = WeakKeyDictionary()
_EXECUTED: WeakKeyDictionary[Host, int] = WeakKeyDictionary()
# per run: each key's fact instance, its command and the command's text, built once for every
# host and probe of the run (a fact's command depends on its arguments only; pyinfra's File
# builds its own with shlex, 120 facts a probe)
_PREPARED: WeakKeyDictionary[State, dict[Any, tuple[FactBase, Any, str]]] = WeakKeyDictionary()
_NO_FIELD = object()  # changes_so_far: an OperationMeta without pyinfra 3.10's fields


@contextmanager
def _reading(host: Host) -> Iterator[None]:
    """A fact read: the commands it runs do not count as changes to the host."""
    _READING[host] = _READING.get(host, 0) + 1
    try:
        yield
    finally:
        _READING[host] -= 1


def _remote(state: State, host: Host, cls: Any, args: Any = None, kwargs: Any = None, **more: Any):
    """pyinfra's own fact read (one remote command)."""
    with _reading(host):
        return _pyinfra_get_fact(state, host, cls, args=args, kwargs=kwargs, **more)


def changes_so_far(state: State, host: Host) -> int:
    """How many completed operations changed ``host`` in this run.

    Asked on every fact read, over every operation of the host: ``OperationMeta``'s state is
    read from its two fields (pyinfra 3.10: ``did_change()`` is ``_success`` and a non-empty
    ``_commands``, ``is_complete()`` is ``_success is not None``), a third of the controller's
    time per host otherwise; where a pyinfra names them differently, its methods are asked.
    """
    count = 0
    for data in state.ops.get(host, {}).values():
        meta = data.operation_meta
        success = getattr(meta, "_success", _NO_FIELD)
        if success is _NO_FIELD or not hasattr(meta, "_commands"):
            count += meta.is_complete() and meta.did_change()
        elif success and meta._commands:
            count += 1
    return count


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def cache_key(cls: type[FactBase], kwargs: dict[str, Any] | None) -> Any:
    """The identity of one fact read: its class and its arguments."""
    return (cls, _freeze(kwargs or {}))


def _values(state: State, host: Host) -> dict[Any, Any]:
    """This host's cached values, emptied when the run started executing or an operation
    changed the host since they were read."""
    generation = (bool(state.is_executing), changes_so_far(state, host), _EXECUTED.get(host, 0))
    cached_generation, values = _CACHE.get(host, (None, {}))
    if cached_generation != generation:
        values = {_TRIED: set()}
        _CACHE[host] = (generation, values)
    return values


def _following(state: Any) -> bool:
    return isinstance(getattr(state, "ops", None), dict)


def _read(state: State, host: Host, cls: type[FactBase], kwargs: dict[str, Any]) -> Any:
    """One fact from the cache: a registered key not read in this generation makes the
    registered keys be probed again (one command); anything else is read alone."""
    values = _values(state, host)
    key = cache_key(cls, kwargs)
    if key in values:
        return values[key]
    registered = _REGISTERED.get(host, {})
    if key in registered and key not in values[_TRIED]:
        _fetch(state, host, values, registered)
    if key not in values:
        values[key] = _remote(state, host, cls, kwargs=kwargs)
    return values[key]


def get_fact(cls: type[FactBase], **kwargs: Any) -> Any:
    """``host.get_fact(cls, **kwargs)`` for the current host, re-used while nothing changed
    (see the module docstring)."""
    host, state = ctx_host.get(), ctx_state.get()
    if not _following(state):  # no run to follow (test doubles)
        return host.get_fact(cls, **kwargs)
    return _read(state, host, cls, kwargs)


def fresh(cls: type[FactBase], **kwargs: Any) -> Any:
    """``host.get_fact(cls, **kwargs)`` read from the current host now, never from a probe:
    for a state that a command of the running operation may have changed (the module after
    a reboot); the value read replaces the cached one."""
    host, state = ctx_host.get(), ctx_state.get()
    value = _remote(state, host, cls, kwargs=kwargs)
    if _following(state):
        _values(state, host)[cache_key(cls, kwargs)] = value
    return value


def _cached_get_fact(
    state: State, host: Host, cls: Any, args: Any = None, kwargs: Any = None, **more: Any
) -> Any:
    """pyinfra's ``get_fact`` as ``Host.get_fact`` calls it, answered from the probes' values
    for the keys the probes registered (see the module docstring)."""
    registered = _REGISTERED.get(host)
    if registered is None or args or more or not _following(state):
        return _remote(state, host, cls, args=args, kwargs=kwargs, **more)
    if cache_key(cls, kwargs) not in registered:
        return _remote(state, host, cls, args=args, kwargs=kwargs)
    return _read(state, host, cls, kwargs or {})


def _counted(method: Any) -> Any:
    """``Host.run_shell_command``/``put_file`` that count what runs outside a fact read: an
    operation's command may change what the next read inside the same operation sees."""

    def run(self: Host, *args: Any, **kwargs: Any) -> Any:
        if not _READING.get(self):
            _EXECUTED[self] = _EXECUTED.get(self, 0) + 1
        return method(self, *args, **kwargs)

    run.counted = True  # type: ignore[attr-defined]
    return run


def _install() -> None:
    """Route ``Host.get_fact`` through the probes' values, and count the commands and uploads
    operations run (once per process)."""
    if pyinfra_host.get_fact is not _cached_get_fact:
        pyinfra_host.get_fact = _cached_get_fact
    for name in ("run_shell_command", "put_file"):
        method = getattr(Host, name)
        if not getattr(method, "counted", False):
            setattr(Host, name, _counted(method))


def _part_command(fact: FactBase, kwargs: dict[str, Any]) -> Any:
    """One fact's command as pyinfra builds it (``requires_command`` guard included), or None
    when the fact cannot share a command (another shell, preconditions). The same instance
    processes the output (facts such as ``Sha1File`` keep their arguments on it)."""
    if fact.shell_executable or type(fact).check_preconditions is not FactBase.check_preconditions:
        return None
    command = pyinfra_facts._make_command(fact.command, dict(kwargs))
    requires = pyinfra_facts._make_command(fact.requires_command, dict(kwargs))
    if requires:
        missing = f"'{pyinfra_facts._MISSING_COMMAND_MARKER}';"
        command = StringCommand(
            "if", "command", "-v", requires, ">/dev/null", "2>&1;",
            "then", "(", command, ");", "else", "echo", missing, "fi",
        )  # fmt: skip
    return command


def probe_command(parts: Sequence[Any], nonce: str) -> StringCommand:
    """The probe: each part in a subshell, followed by a line ``MARK NONCE INDEX STATUS``
    (after a newline, so a part's last line is always complete). The whole output is gathered
    by the shell and written at the end: written as the parts print it, it left the host in
    about one SSH packet per line (a thousand per probe), each encrypted by sshd and checked
    and decrypted, in Python, by paramiko on the controller."""
    pieces: list[Any] = ["o=$("]
    for index, part in enumerate(parts):
        pieces += ["(", part, ");", "printf", f"'\\n%s {index} %s\\n'", f"'{PROBE_MARK} {nonce}'"]
        pieces += ['"$?";']
    pieces += [");", "printf", "'%s\\n'", '"$o"']
    return StringCommand(*pieces)


def split_output(lines: Sequence[str], nonce: str) -> dict[int, tuple[int, list[str]]]:
    """Each part's exit status and stdout lines, as they would read had the part run alone
    (the newline the marker line adds is taken off again)."""
    prefix = f"{PROBE_MARK} {nonce} "
    parts: dict[int, tuple[int, list[str]]] = {}
    current: list[str] = []
    for line in lines:
        if not line.startswith(prefix):
            current.append(line)
            continue
        index, status = line[len(prefix) :].split()
        if current and current[-1] == "":
            current.pop()
        parts[int(index)] = (int(status), current)
        current = []
    return parts


def _process(fact: FactBase, status: int, lines: list[str]) -> tuple[bool, Any]:
    if status != 0 or lines == [pyinfra_facts._MISSING_COMMAND_MARKER]:
        return False, None
    if not lines:
        return True, fact.default()
    try:
        return True, fact.process(lines)
    except Exception:  # noqa: BLE001 - read alone later, where pyinfra reports it
        return False, None


def register(keys: Iterable[Key]) -> None:
    """Register ``keys`` for the current host, to be read together on the first read of any
    registered key (see the module docstring); no command now."""
    host, state = ctx_host.get(), ctx_state.get()
    if not _following(state):
        return
    _install()
    registered = _REGISTERED.setdefault(host, {})
    for cls, kwargs in keys:
        registered.setdefault(cache_key(cls, kwargs), (cls, kwargs))


def probe(keys: Iterable[Key]) -> int:
    """Register ``keys`` for the current host and read every registered key not read yet in
    this generation, ``keys`` included, in one remote command (see the module docstring);
    returns how many values were kept."""
    host, state = ctx_host.get(), ctx_state.get()
    if not _following(state):
        return 0
    register(keys)
    return _fetch(state, host, _values(state, host), _REGISTERED[host])


def _fetch(state: State, host: Host, values: dict[Any, Any], keys: dict[Any, Key]) -> int:
    """Read the keys of ``keys`` that ``values`` lacks, in one command, into ``values``."""
    todo = []
    prepared = _PREPARED.setdefault(state, {})
    for key, (cls, kwargs) in keys.items():
        if key in values or key in values[_TRIED]:
            continue
        values[_TRIED].add(key)
        if key not in prepared:
            fact = cls()
            command = _part_command(fact, kwargs)
            prepared[key] = (fact, command, _text(command) if command is not None else "")
        fact, command, text = prepared[key]
        if command is not None:
            todo.append((key, fact, kwargs, command, text))
    if not todo:
        return 0
    nonce = secrets.token_hex(6)
    _, global_kwargs = pyinfra_facts._handle_fact_kwargs(state, host, type(todo[0][1]), None, {})
    executor = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
    parts = _Parts()
    index = [parts.add(fact, kwargs, command, text) for _, fact, kwargs, command, text in todo]
    with _reading(host):
        ok, output = host.run_shell_command(
            probe_command(parts.commands(), nonce),
            print_output=state.print_fact_output,
            print_input=state.print_fact_input,
            **executor,
        )
    outputs = parts.outputs(split_output(output.stdout_lines, nonce) if ok else {})
    kept = 0
    for (key, fact, *_), where in zip(todo, index, strict=True):
        good, value = _process(fact, *outputs.get(where, (1, [])))
        if good:
            values[key] = value
            kept += 1
    return kept


def _text(command: Any) -> str:
    return command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)


class _Parts:
    """The parts of one probe: facts whose commands are the same text (one fact with a default
    argument spelled out or not) share one part; path facts share a batch, a unit's status and
    enablement one ``systemctl show`` (``fact_batch``)."""

    def __init__(self) -> None:
        self._commands: list[Any] = []
        self._by_text: dict[str, int] = {}
        self._batches: dict[int, tuple[fact_batch.Batch, list[str]]] = {}

    def add(
        self, fact: FactBase, kwargs: dict[str, Any], command: Any, text: str | None = None
    ) -> tuple[int, str | None]:
        """Where this fact's output will be: (part, None) or (batch part, path); ``text`` is
        the command's text (``_text``), when the caller has it."""
        text = _text(command) if text is None else text
        batch = fact_batch.batch_for(fact, kwargs, text)
        if batch is None:
            wide = fact_batch.widened(fact, text)
            return (self._part(wide, wide) if wide else self._part(text, command)), None
        part = self._part(f"batch:{id(batch)}", batch)
        paths = self._batches.setdefault(part, (batch, []))[1]
        if kwargs["path"] not in paths:
            paths.append(kwargs["path"])
        return part, kwargs["path"]

    def _part(self, text: str, command: Any) -> int:
        if text not in self._by_text:
            self._by_text[text] = len(self._commands)
            self._commands.append(command)
        return self._by_text[text]

    def commands(self) -> list[Any]:
        return [
            self._batches[i][0].command(self._batches[i][1]) if i in self._batches else command
            for i, command in enumerate(self._commands)
        ]

    def outputs(
        self, parts: dict[int, tuple[int, list[str]]]
    ) -> dict[tuple[int, str | None], tuple[int, list[str]]]:
        """Each fact's (status, lines) by where ``add`` put it; a batch not understood answers
        none of its facts."""
        out: dict[tuple[int, str | None], tuple[int, list[str]]] = {}
        for part, (status, lines) in parts.items():
            if part not in self._batches:
                out[(part, None)] = (status, lines)
                continue
            batch, paths = self._batches[part]
            split = batch.split(lines, paths) if status == 0 else None
            for path, path_lines in (split or {}).items():
                out[(part, path)] = (0, path_lines)
        return out
