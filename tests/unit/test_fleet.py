"""provisioner.fleet: the one way to connect to many hosts (used by gather and models_sync)."""

from __future__ import annotations

import gevent
import pytest
from pyinfra.api import Inventory
from pyinfra.context import ctx_host

from provisioner import fleet, gather
from provisioner.inventory import LoadedInventory

# Nothing listens on the discard port of loopback: the connection is refused at once.
DOWN = {"ssh_hostname": "127.0.0.1", "ssh_port": 9, "ssh_connect_retries": 0}


def _loaded(*hosts: tuple[str, dict]) -> LoadedInventory:
    inventory = Inventory((list(hosts), {}))
    return LoadedInventory(source="test", inventory=inventory, hosts=list(inventory))


def test_an_unreachable_host_is_reported_and_the_others_connect():
    loaded = _loaded(("down-1", dict(DOWN)), ("@local", {}), ("down-2", dict(DOWN)))
    state = fleet.make_state(loaded)
    try:
        errors = fleet.connect(state, loaded.hosts)
        assert sorted(errors) == ["down-1", "down-2"]
        assert all(error.split(":")[0].endswith("Error") for error in errors.values()), errors
        assert [h.name for h in fleet.connected(state, loaded.hosts)] == ["@local"]
    finally:
        fleet.disconnect(state)


def test_each_runs_in_the_host_context_and_keeps_one_hosts_error_to_itself():
    loaded = _loaded(("a", {}), ("b", {}), ("c", {}))

    def job(target):
        assert ctx_host.get() is target  # facts and operations need the host's context
        if target.name == "b":
            raise ValueError("b is broken")
        return target.name.upper()

    results, errors = fleet.each(fleet.make_state(loaded), loaded.hosts, job)
    assert results == {"a": "A", "c": "C"}
    assert errors == {"b": "ValueError: b is broken"}


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_work_is_bounded_by_parallel(parallel):
    loaded = _loaded(*((f"h{i}", {}) for i in range(6)))
    running = {"now": 0, "most": 0}

    def job(target):
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        gevent.sleep(0.01)
        running["now"] -= 1

    results, errors = fleet.each(fleet.make_state(loaded, parallel), loaded.hosts, job)
    assert not errors and len(results) == 6
    assert running["most"] == parallel


def test_gather_reports_the_unreachable_host_beside_a_reached_one(monkeypatch):
    monkeypatch.setattr(gather, "host_facts", lambda host: {"gpu_state": "no-gpu", "os": {}})
    loaded = _loaded(("down-1", dict(DOWN)), ("@local", {}))
    facts = gather.gather(loaded)
    assert list(facts) == ["down-1", "@local"]
    assert facts["down-1"]["gpu_state"] == "unreachable"
    assert "Error" in facts["down-1"]["error"]
    assert facts["@local"]["gpu_state"] == "no-gpu"


def test_gather_reports_a_fact_failure_as_that_hosts_error(monkeypatch):
    def broken(host):
        raise RuntimeError("lsb_release: no output")

    monkeypatch.setattr(gather, "host_facts", broken)
    facts = gather.gather(_loaded(("@local", {})))
    assert facts["@local"]["gpu_state"] == "error"
    assert facts["@local"]["error"] == "fact gathering failed: RuntimeError: lsb_release: no output"


def test_gather_restores_pyinfras_log_level(monkeypatch):
    import logging

    monkeypatch.setattr(gather, "host_facts", lambda host: {"gpu_state": "no-gpu"})
    pyinfra_log = logging.getLogger("pyinfra")
    monkeypatch.setattr(pyinfra_log, "level", logging.INFO)
    seen = []
    real = fleet.connect

    def spy(state, hosts):
        seen.append(pyinfra_log.level)
        return real(state, hosts)

    monkeypatch.setattr(fleet, "connect", spy)
    gather.gather(_loaded(("@local", {})))
    assert seen == [logging.ERROR]  # quiet while gathering: warnings would break the report
    assert pyinfra_log.level == logging.INFO
