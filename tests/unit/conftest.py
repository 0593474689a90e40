"""Unit-test set-up shared by every module of tests/unit.

Unit tests run many controllers against this machine (``@local``) at once, under xdist too:
each test process takes its own provisioner host lock, not the machine's /run/provisioner.lock.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

from provisioner.host_lock import PATH_ENV

_LOCK = os.path.join(tempfile.mkdtemp(prefix="provisioner-lock-"), "provisioner.lock")


@pytest.fixture(autouse=True)
def _private_host_lock(monkeypatch):
    """Per unit test (not process-wide: the lab's hosts, in the same pytest run, must keep the
    real lock path)."""
    monkeypatch.setenv(PATH_ENV, os.environ.get(PATH_ENV) or _LOCK)


@pytest.fixture(autouse=True)
def _no_fleet_lock(monkeypatch):
    """``provision apply|models`` name the run's lock in ``$PROVISIONER_LOCK`` (in-process for
    ``models sync``): each unit test starts without one, and what a test sets is undone."""
    from provisioner import lock

    monkeypatch.delenv(lock.ENV, raising=False)
    lock._load.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_caches_under_mutation_testing():
    """Under mutmut (``make mutation``), empty provisioner's ``functools`` caches before each test.

    mutmut forks every mutant's test run from a process that already ran the tests: results
    cached there (the planner's and the estimator's ``lru_cache``) would be served to the mutant
    without running its code, and the mutant would seem to survive.
    """
    if os.environ.get("MUTANT_UNDER_TEST"):
        for name, module in list(sys.modules.items()):
            if name == "provisioner" or name.startswith("provisioner."):
                for value in list(vars(module).values()):
                    clear = getattr(value, "cache_clear", None)
                    if callable(clear):
                        clear()
    yield
