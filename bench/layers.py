"""Remote commands of one deploy run, per host, layer and phase, counted on the controller.

``python -m bench.layers INVENTORY [ENTRYPOINT]`` runs pyinfra's CLI exactly as ``provision
apply`` does (``provisioner.run_outcome``, the site entrypoint) with a counter around
``Host.run_shell_command``, the one call every fact and every shell command of an operation goes
through (with ``BENCH_LAYERS_COMMANDS=FILE`` every command is written there too, by
layer), and prints a JSON object ``{host: {"PHASE LAYER": count}}``:

* phase: ``plan`` (pyinfra preparing the operations: the deploys' own facts and every
  operation's body run once to see what it would do) or ``execute``;
* layer: the deploy directly under ``site`` (``GPU stack``, ``Ollama``, ``models``,
  ``monitoring``) or ``site`` for the site's own operations (the host lock, the run record).

The bench runs it once on a converged host beside the sshd counts (the source of truth for
the total: they must agree); it is a breakdown, not another figure.

With ``BENCH_LAYERS_TIMELINE=FILE`` it also writes a timeline of the run there (JSON, see
:class:`Timeline`): when pyinfra's stages began (connect, prepare = *plan*, execute,
disconnect), how long each host spent planning each layer, each operation's start and end
(as a whole and on each host, ``time.monotonic``) with its layer, and at every one of those
boundaries the bytes each host has received so far: the ``tx_bytes`` counter of the machine's
end of the host's veth (``/sys/class/net/vlab-<host>/statistics/tx_bytes``; another file
pattern with ``BENCH_LAYERS_NET``, ``{host}`` standing for the host's name; ``None`` where the
file does not exist). The bench's first apply runs this way; :mod:`bench.timeline` turns the
file into seconds and bytes per layer. The exit status is pyinfra's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyinfra.api.host import Host


def layer_of(host: Any) -> tuple[str, str]:
    """(phase, layer) of the command ``host`` is about to run."""
    state = host.state
    if getattr(state, "is_executing", False) and host.current_op_hash:
        meta = state.get_op_meta(host.current_op_hash)
        name = sorted(meta.names)[0] if meta.names else ""
        return "execute", _layer(name, depth=3)  # "provisioner | LAYER | operation"
    return "plan", _layer(host.current_deploy_name or "", depth=2)  # "provisioner | LAYER"


def _layer(name: str, depth: int) -> str:
    parts = [p.strip() for p in name.split("|")]
    return parts[1] if len(parts) >= depth else "site"


#: The file each host's received-bytes counter is read from (``{host}``: its name).
NET_ENV = "BENCH_LAYERS_NET"
DEFAULT_NET = "/sys/class/net/vlab-{host}/statistics/tx_bytes"
TIMELINE_ENV = "BENCH_LAYERS_TIMELINE"


def received_bytes(names: Any, pattern: str = DEFAULT_NET) -> dict[str, int | None]:
    """Each host's received-bytes counter now (``None`` where its file is missing)."""
    out: dict[str, int | None] = {}
    for name in names:
        try:
            out[name] = int(Path(pattern.format(host=name)).read_text().strip())
        except (OSError, ValueError):
            out[name] = None
    return out


def op_layer(state: Any, op_hash: str) -> tuple[str, str]:
    """(name, layer) of an operation: ``provisioner | LAYER | operation``."""
    meta = state.get_op_meta(op_hash)
    name = sorted(meta.names)[0] if meta.names else op_hash
    return name, _layer(name, depth=3)


class Timeline:
    """Records one pyinfra run (see the module's docstring) into :attr:`doc`:

    * ``stages``: ``{"stage", "at", "bytes"}`` when pyinfra entered each stage, and ``end``;
    * ``plan``: ``{"host", "layer", "start", "end"}`` for each layer a host planned;
    * ``ops``: ``{"name", "layer", "start", "end", "bytes_start", "bytes_end", "hosts":
      {NAME: {"start", "end", "ok", "bytes_start", "bytes_end"}}}`` in execution order.

    Times are ``time.monotonic()`` seconds; bytes are the hosts' counters at that moment.
    """

    def __init__(self, pattern: str = DEFAULT_NET, clock: Any = time.monotonic) -> None:
        self.pattern = pattern
        self.clock = clock
        self.names: list[str] = []
        self.ops: dict[str, dict[str, Any]] = {}
        self.doc: dict[str, Any] = {"version": 1, "net": pattern, "stages": [], "plan": []}
        self._undo: list[Any] = []

    def sample(self, names: Any = None) -> dict[str, int | None]:
        return received_bytes(self.names if names is None else names, self.pattern)

    def stage(self, state: Any, stage: str) -> None:
        if not self.names:
            self.names = [host.name for host in state.inventory]
        self.doc["stages"].append({"stage": stage, "at": self.clock(), "bytes": self.sample()})

    def op(self, state: Any, op_hash: str) -> dict[str, Any]:
        if op_hash not in self.ops:
            name, layer = op_layer(state, op_hash)
            self.ops[op_hash] = {"name": name, "layer": layer, "hosts": {}}
        return self.ops[op_hash]

    def install(self) -> None:
        """Wrap pyinfra's stage changes, planned deploys and operation runs."""
        from pyinfra.api import operations
        from pyinfra.api.state import State

        self._wrap(State, "set_stage", self._set_stage)
        self._wrap(Host, "deploy", self._deploy)
        self._wrap(operations, "_run_single_op", self._single_op)
        self._wrap(operations, "run_host_op", self._host_op)

    def uninstall(self) -> None:
        while self._undo:
            owner, attr, original = self._undo.pop()
            setattr(owner, attr, original)

    def _wrap(self, owner: Any, attr: str, make: Any) -> None:
        original = getattr(owner, attr)
        self._undo.append((owner, attr, original))
        setattr(owner, attr, make(original))

    def _set_stage(self, original: Any) -> Any:
        def set_stage(state: Any, stage: Any) -> Any:
            self.stage(state, getattr(stage, "name", str(stage)).lower())
            return original(state, stage)

        return set_stage

    def _deploy(self, original: Any) -> Any:
        @contextlib.contextmanager
        def deploy(host: Any, name: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
            outer = host.current_deploy_name or ""
            full = f"{outer} | {name}" if outer else name
            planning = bool(name) and not getattr(host.state, "is_executing", False)
            is_layer = planning and len(full.split("|")) == 2  # provisioner | LAYER
            started = self.clock()
            try:
                with original(host, name, *args, **kwargs) as inner:
                    yield inner
            finally:
                if is_layer:
                    self.doc["plan"].append(
                        {
                            "host": host.name,
                            "layer": _layer(full, 2),
                            "start": started,
                            "end": self.clock(),
                        }
                    )

        return deploy

    def _single_op(self, original: Any) -> Any:
        def run_single_op(state: Any, op_hash: str) -> Any:
            record = self.op(state, op_hash)
            names = [host.name for host in state.inventory.get_active_hosts()]
            record.update(start=self.clock(), bytes_start=self.sample(names))
            try:
                return original(state, op_hash)
            finally:
                record.update(end=self.clock(), bytes_end=self.sample(names))

        return run_single_op

    def _host_op(self, original: Any) -> Any:
        def run_host_op(state: Any, host: Any, op_hash: str) -> Any:
            mine = {"start": self.clock(), "bytes_start": self.sample([host.name])[host.name]}
            self.op(state, op_hash)["hosts"][host.name] = mine
            ok = False
            try:
                ok = original(state, host, op_hash)
                return ok
            finally:
                mine.update(
                    end=self.clock(), ok=bool(ok), bytes_end=self.sample([host.name])[host.name]
                )

        return run_host_op

    def finish(self) -> dict[str, Any]:
        """The document: the stages with a last ``end`` sample, the plan, the operations."""
        self.doc["stages"].append({"stage": "end", "at": self.clock(), "bytes": self.sample()})
        self.doc["ops"] = list(self.ops.values())
        return self.doc


def run_pyinfra(argv: list[str]) -> int:
    """pyinfra's CLI on ``argv`` as ``provision apply`` runs it; its exit status."""
    from provisioner import run_outcome

    sys.argv = ["pyinfra", *argv]
    try:
        run_outcome.main()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def measure(
    argv: list[str], timeline: Timeline | None = None
) -> tuple[int, dict[str, dict[str, int]]]:
    """Run pyinfra's CLI on ``argv`` (``pyinfra`` arguments), count each host's commands and,
    with ``timeline``, record the run into it. Returns (exit status, counts)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    trail = os.environ.get("BENCH_LAYERS_COMMANDS")  # a file: every command, by layer
    original = Host.run_shell_command

    def counting(self: Host, *args: Any, **kwargs: Any) -> Any:
        phase, layer = layer_of(self)
        counts[self.name][f"{phase} {layer}"] += 1
        if trail:
            command = args[0] if args else kwargs.get("command")
            text = command if isinstance(command, str) else command.get_masked_value()
            with open(trail, "a") as out:
                out.write(f"{self.name}\t{phase} {layer}\t{text[:300]!r}\n")
        return original(self, *args, **kwargs)

    Host.run_shell_command = counting  # type: ignore[method-assign]
    if trail:
        _trail_facts(trail)
    if timeline:
        timeline.install()
    try:
        code = run_pyinfra(argv)
    finally:
        Host.run_shell_command = original  # type: ignore[method-assign]
        if timeline:
            timeline.uninstall()
            timeline.finish()
    return code, {name: dict(sorted(c.items())) for name, c in counts.items()}


def count(argv: list[str]) -> dict[str, dict[str, int]]:
    """Run pyinfra's CLI on ``argv`` (``pyinfra`` arguments) and count each host's commands."""
    return measure(argv)[1]


def _trail_facts(trail: str) -> None:
    """Write every fact read from a host (class and arguments) to ``trail`` too: wraps the
    ``get_fact`` that ``Host.get_fact`` calls, before ``provisioner.fact_cache`` takes it."""
    from pyinfra.api import host as pyinfra_host

    original = pyinfra_host.get_fact

    def reading(state: Any, host: Any, cls: Any, args: Any = None, kwargs: Any = None, **more):
        phase, layer = layer_of(host)
        with open(trail, "a") as out:
            out.write(f"{host.name}\t{phase} {layer}\tFACT {cls.__module__}.{cls.__name__}")
            out.write(f"\t{kwargs!r}\n")
        return original(state, host, cls, args=args, kwargs=kwargs, **more)

    pyinfra_host.get_fact = reading


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.split("\n")[2], file=sys.stderr)
        return 2
    from provisioner.apply import entrypoint

    entry = sys.argv[2] if len(sys.argv) > 2 else entrypoint("site")
    out = os.environ.get("BENCH_LAYERS_OUT")
    timeline_file = os.environ.get(TIMELINE_ENV)
    timeline = Timeline(os.environ.get(NET_ENV) or DEFAULT_NET) if timeline_file else None
    try:
        code, result = measure([sys.argv[1], entry, "-y"], timeline)
    finally:
        if timeline_file and timeline:
            Path(timeline_file).write_text(json.dumps(timeline.doc) + "\n")
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
