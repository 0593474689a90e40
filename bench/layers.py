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
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
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


def count(argv: list[str]) -> dict[str, dict[str, int]]:
    """Run pyinfra's CLI on ``argv`` (``pyinfra`` arguments) and count each host's commands."""
    from provisioner import run_outcome

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
    sys.argv = ["pyinfra", *argv]
    try:
        run_outcome.main()
    except SystemExit:
        pass
    finally:
        Host.run_shell_command = original  # type: ignore[method-assign]
    return {name: dict(sorted(c.items())) for name, c in counts.items()}


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
    result = count([sys.argv[1], entry, "-y"])
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
