"""``--limit``: one parser for every command, commas and groups, and what pyinfra is given.

Issue 18, item 1: ``apply --limit gpu1,gpu3`` passed the raw string to pyinfra, which matched no
host, and reported success with 0 operations. The selection is made once
(:func:`provisioner.inventory.load`); ``apply`` hands pyinfra one value per selected host, and
the conformance test below feeds those values to pyinfra 3.x's own ``--limit`` matcher
(``pyinfra_cli/cli.py``, ``_get_inventory_pattern_matches``) to prove it selects the same hosts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.test_cli_bad_input import recorder, run  # noqa: F401 (the fixture)

# gpu1..gpu3 in group "gpus", cpu1, cpu2 and a host named "edge" in group "cpus", and a group
# named "edge" that holds gpu1: pyinfra reads the value "edge" as that group.
INVENTORY = """
gpus = [{gpu1}, {gpu2}, {gpu3}]
cpus = [{cpu1}, {cpu2}, {edge}]
edge = [{gpu1}]
"""

COMMANDS = [
    ["facts"],
    ["plan"],
    ["apply"],
    ["verify"],
    ["models", "sync"],
    ["models", "update"],
    ["models", "mirror", "--to", "registry.example:5000"],
]


def write_inventory(tmp_path: Path, port: int) -> Path:
    def host(name: str) -> str:
        return f'("{name}", {{"ssh_hostname": "127.0.0.1", "ssh_port": {port}}})'

    names = ["gpu1", "gpu2", "gpu3", "cpu1", "cpu2", "edge"]
    inv = tmp_path / "inventories" / "site.py"
    inv.parent.mkdir(parents=True, exist_ok=True)
    inv.write_text(textwrap.dedent(INVENTORY.format(**{n: host(n) for n in names})))
    return inv


SELECT = """
import json, sys
from pyinfra_cli.cli import _get_inventory_pattern_matches
from provisioner.apply import pyinfra_command
from provisioner.inventory import load
out = {}
for limit in json.loads(sys.argv[2]):
    loaded = load(sys.argv[1], limit)
    command = pyinfra_command(loaded, "site", limit=limit)
    given = [command[i + 1] for i, arg in enumerate(command) if arg == "--limit"]
    by_pyinfra = _get_inventory_pattern_matches(loaded.inventory, given, "--limit")
    out[",".join(limit)] = {
        "ours": [h.name for h in loaded.hosts],
        "pyinfra": sorted(h.name for h in by_pyinfra),
        "given": given,
    }
print(json.dumps(out))
"""

CASES = {
    ("gpu1,gpu3",): ["gpu1", "gpu3"],
    ("gpu1,cpu1",): ["gpu1", "cpu1"],
    ("gpu1", "cpu2"): ["gpu1", "cpu2"],
    ("gpus",): ["gpu1", "gpu2", "gpu3"],
    ("gpus,cpu1",): ["gpu1", "gpu2", "gpu3", "cpu1"],
    ("cpus",): ["cpu1", "cpu2", "edge"],
    ("gpu*",): ["gpu1", "gpu2", "gpu3"],
    ("c?u2, gpu2,",): ["gpu2", "cpu2"],
    ("edge",): ["gpu1", "edge"],
}


@pytest.fixture(scope="module")
def selections(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("limit")
    inv = write_inventory(tmp_path, 9)
    result = subprocess.run(
        [sys.executable, "-c", SELECT, str(inv), json.dumps([list(c) for c in CASES])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("limit", list(CASES), ids=lambda c: " ".join(c))
def test_limit_selects_names_and_groups_split_at_commas(selections, limit):
    assert selections[",".join(limit)]["ours"] == CASES[limit]


@pytest.mark.parametrize("limit", list(CASES), ids=lambda c: " ".join(c))
def test_pyinfra_selects_exactly_our_hosts(selections, limit):
    """The --limit values apply gives pyinfra select, by pyinfra's own matcher, our hosts."""
    chosen = selections[",".join(limit)]
    assert chosen["pyinfra"] == sorted(CASES[limit])
    assert all("," not in value for value in chosen["given"])


def test_host_named_like_a_group_is_not_read_as_the_group(selections):
    # "cpus" selects the host "edge"; pyinfra would read a bare "edge" as the group (gpu1).
    chosen = selections["cpus"]
    assert "edge" not in chosen["given"] and "gpu1" not in chosen["pyinfra"]


def test_parse_limit_splits_strips_and_dedups():
    from provisioner.inventory import parse_limit

    assert parse_limit(["gpu1,gpu3", " gpus ,", "gpu1", ""]) == ["gpu1", "gpu3", "gpus"]
    assert parse_limit([]) == []


def test_no_limit_passes_no_limit_to_pyinfra():
    from provisioner.apply import pyinfra_command

    class Loaded:
        source = "inventories/prod.py"

    assert "--limit" not in pyinfra_command(Loaded(), "site")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_splits_commas_and_matches_groups(tmp_path, recorder, command):  # noqa: F811
    """A known host, a group and an unknown name: exit 2 naming only the unknown one."""
    inv = write_inventory(tmp_path, recorder.port)
    result = run([*command, str(inv), "--limit", "gpu1,cpus,gpu9"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{inv}: --limit gpu9 matches no host or group" in result.stderr
    assert "--limit gpu1" not in result.stderr and "--limit cpus" not in result.stderr
    assert recorder.accepted == 0


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_names_each_unknown_limit(tmp_path, recorder, command):  # noqa: F811
    inv = write_inventory(tmp_path, recorder.port)
    result = run([*command, str(inv), "--limit", "gpu7", "--limit", "gpus,db*"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--limit gpu7 matches no host" in result.stderr
    assert "--limit db* matches no host" in result.stderr
    assert "nothing was changed and no host was contacted" in result.stderr
    assert recorder.accepted == 0
