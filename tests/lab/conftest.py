"""The `lab` fixture: the lab fleet, brought up once per test session and torn down at its end.

    def test_something(lab):
        lab.hosts        # ["gpu1", "gpu2", "gpu3", "cpu1"] (or $LAB_HOSTS)
        lab.addresses    # {"gpu1": "169.254.101.2", ...}
        lab.ssh_key      # Path of the lab's private key (user root)
        lab.inventory    # Path of inventories/lab.py
        lab.info         # lab.json: mirror URLs, key fingerprint and checksums, model digests
        lab.ssh("gpu1", "nvidia-smi -L", check=False)
        lab.fleet.reboot(lab.host("gpu1"))

A lab that is already up (`python -m tests.lab up`) is used as it is and left up.
LAB_REAL_TORCH=1 also serves the real CPU torch wheel. Skips with the reason when the machine
cannot run the lab (not root, packages missing).
"""

from __future__ import annotations

import os

import pytest

from .lab import Lab, missing_prerequisites


@pytest.fixture(scope="session")
def lab():
    why = missing_prerequisites()
    if why:
        pytest.skip(why)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("the lab is one fleet per machine: run lab tests without pytest-xdist (-n)")
    running = Lab.attach()
    if running is not None:
        running.attached = True  # a module that wipes or remakes the lab skips on it
        yield running  # brought up by hand: not ours to tear down
        return
    lab = Lab()
    lab.up(real_torch=os.environ.get("LAB_REAL_TORCH") == "1")
    try:
        yield lab
    finally:
        left = lab.down()
        assert not left, f"lab teardown left things behind: {left}"


def pytest_collection_modifyitems(config, items):
    """Harness tests first (they check a fresh host), the end-to-end flow last (it provisions):
    ``test_e2e`` and then the ``test_e2e_*`` modules that build on the fleet it left."""

    def order(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        if name == "test_lab_harness":
            return 0
        if name == "test_bundle_lab":
            return 3  # wipes the mirrors and remakes the hosts: after everything else
        return 1 if name.startswith("test_e2e") else 2  # faults and real packages: last

    items.sort(key=order)
