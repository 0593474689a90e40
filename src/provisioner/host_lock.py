"""One provisioner run per host at a time: a ``flock`` on the host, held for the whole run.

The lock is taken by the first operation of every deploy that changes a host (``site`` and
``ollama_models``, through :class:`provisioner.facts.system.HostLock`). A small holder process
on the host keeps the lock (``flock`` on ``[host_lock] path`` of ``data/bounds.toml``) for as
long as the SSH connection that took it stays open: it watches that connection's ``sshd``
process (for a local host, the controller's ``python``), so the lock goes away with the run,
however the run ends (done, failed, interrupted, killed), and in any case after
``max_hold_s``. The holder writes who holds it (``run <id> by user@controller pid N since
<UTC time>``) beside the lock file; a second run waits ``wait_s`` seconds and then fails that
host with the holder's name, while its other hosts go on. A reboot ends the connection and
the lock with it; the reboot operation takes it again as soon as the host is back.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import uuid
from datetime import UTC, datetime
from functools import cache

from provisioner import bounds

#: Overrides ``[host_lock] path`` (tests that run many controllers against one local host).
PATH_ENV = "PROVISIONER_HOST_LOCK_PATH"

# The holder: takes the lock (bounded wait), says who holds it, and keeps it while the
# process carrying the connection lives. Arguments: lock, wait_s, owner, watched pid, max_hold_s.
# GNU tail --pid checks the process every 0.1 s in one sleeping process, so the lock is free
# about 0.1 s after the run's connection ends (the next run, e.g. a verify right after an apply,
# waited up to a second); timeout(1) bounds the hold. Without them (exit other than 0 or 124):
# a loop that looks once a second.
_HOLDER = (
    'exec 9>>"$1" || exit 1; '
    'flock -w "$2" 9 || exit 1; '
    'printf "%s\\n" "$3" > "$1.owner"; '
    'timeout "$5" tail --pid="$4" -s 0.1 -f /dev/null 2>/dev/null; r=$?; '
    'if [ "$r" -ne 0 ] && [ "$r" -ne 124 ]; then '
    "end=$(( $(date +%s) + $5 )); "
    'while kill -0 "$4" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done; fi; '
    'rm -f "$1.owner"'
)


@cache
def owner() -> str:
    """Who this run is, as the lock's owner file says it (one value per controller process)."""
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid
        user = str(os.getuid())
    where = f"{user}@{socket.gethostname()} pid {os.getpid()}"
    return f"run {uuid.uuid4().hex[:8]} by {where} since {since}"


def script(run_owner: str) -> str:
    """Shell that takes (or confirms) the lock for ``run_owner`` and prints one line:
    ``held``, ``busy <owner line of the holder>`` or ``error <why>``."""
    b = bounds.bounds()["host_lock"]
    path = lock_path()
    lock, info = shlex.quote(path), shlex.quote(path + ".owner")
    me = shlex.quote(run_owner)
    return "\n".join(
        [
            f"lock={lock} info={info} me={me}",
            # shell builtins only: the lines below run on every run (a process costs ~1 ms)
            'mine() { l=; { IFS= read -r l; } 2>/dev/null <"$info"; [ "$l" = "$me" ]; }',
            "command -v flock >/dev/null 2>&1 || { echo 'error flock (util-linux) is not "
            "installed'; exit 0; }",
            # already ours (a later deploy of the same run): the holder is alive
            'if mine && ! flock -n "$lock" true 2>/dev/null; then echo held; exit 0; fi',
            # the process carrying this connection: the first sshd (or python) above us
            "p=$$ watch=",
            'while [ -n "$p" ] && [ "$p" -gt 1 ]; do '
            'q=; while read -r k v; do if [ "$k" = PPid: ]; then q=$v; break; fi; done '
            "2>/dev/null </proc/$p/status; p=$q; "
            '[ -n "$p" ] || break; '
            "c=; { read -r c; } 2>/dev/null </proc/$p/comm; "
            'case "$c" in sshd* | python*) watch=$p; break ;; '
            "esac; done",
            '[ -n "$watch" ] || watch=$PPID',
            f'sh -c {shlex.quote(_HOLDER)} provisioner-lock "$lock" {int(b["wait_s"])} '
            f'"$me" "$watch" {int(b["max_hold_s"])} </dev/null >/dev/null 2>&1 &',
            "child=$!",
            # the holder takes a few ms: poll often at first (a run used to wait 0.1 s here)
            'n=0; while kill -0 "$child" 2>/dev/null; do if mine; then echo held; exit 0; fi; '
            'n=$((n + 1)); if [ "$n" -le 50 ]; then sleep 0.01; else sleep 0.1; fi; done',
            "if mine; then echo held; exit 0; fi",
            'echo "busy $(cat "$info" 2>/dev/null || echo \'a process that left no name\')"',
        ]
    )


def lock_path() -> str:
    """The lock file on the host: ``$PROVISIONER_HOST_LOCK_PATH``, else ``[host_lock] path``."""
    return os.environ.get(PATH_ENV) or str(bounds.get("host_lock", "path"))


def refusal(holder: str) -> str:
    """The reason a host is failed with when another run holds its lock."""
    path = lock_path()
    wait = bounds.get("host_lock", "wait_s")
    return (
        f"another provisioner run holds {path} on this host ({holder}); waited {wait}s. "
        "Let it finish (or stop it), then re-run"
    )
