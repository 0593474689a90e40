"""``operations.system.service`` decides daemon-reload and restart from the operations before
it inside its own body (done: what they did; planning with checks: what they would do), so
that ``-y`` planning runs none of them ahead; ``any_change`` is the one rule (the driver's
reboot uses it too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.operations import parse_commands
from pyinfra_testing.util import FakeState, create_host

from provisioner.operations import system

FIXTURE = Path(__file__).parent.parent / "fixtures" / "operations" / "system.service"


class Op:
    """An earlier operation's meta: complete or not, what it did or would do."""

    def __init__(self, complete: bool, did: bool = False, will: bool = False):
        self.complete, self.did, self.will = complete, did, will

    def is_complete(self) -> bool:
        return self.complete

    def did_change(self) -> bool:
        return self.did

    @property
    def will_change(self) -> bool:
        if self.complete:
            raise AssertionError("a done operation is asked what it did, not run again")
        return self.will


def test_any_change_asks_done_operations_what_they_did_and_others_what_they_would_do():
    assert system.any_change([]) is False
    assert system.any_change([Op(True, did=False)]) is False
    assert system.any_change([Op(True, did=False), Op(True, did=True)]) is True
    assert system.any_change([Op(False, will=True)]) is True
    assert system.any_change([Op(False, will=False), Op(True, did=False)]) is False


def run(**kwargs) -> list:
    facts = json.loads((FIXTURE / "converged.json").read_text())["facts"]
    state = FakeState()
    host = create_host(state, facts=facts)
    with ctx_state.use(state), ctx_host.use(host):
        return parse_commands(list(system.service._inner(**kwargs)))


@pytest.mark.parametrize(
    ("reload_after", "restart_after", "wanted"),
    [
        ([Op(True)], [Op(True)], []),
        ([Op(True, did=True)], [Op(True)], ["systemctl daemon-reload"]),
        (
            [Op(True, did=True)],
            [Op(True, did=True)],
            ["systemctl daemon-reload", "systemctl restart prometheus-node-exporter.service"],
        ),
        ([], [Op(False, will=True)], ["systemctl restart prometheus-node-exporter.service"]),
    ],
)
def test_reload_and_restart_follow_the_operations_before(reload_after, restart_after, wanted):
    commands = run(
        service="prometheus-node-exporter.service",
        reload_after=reload_after,
        restart_after=restart_after,
    )
    assert commands == wanted
