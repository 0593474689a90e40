"""The pytest plugin of the verification suite: options, the per-host ``target`` fixture, the
layer of each check, and the clean failure messages the reports use.

Loaded with ``-p provisioner.verify.plugin`` (the runner does), or automatically through the
package's ``pytest11`` entry point. Outside the suite's own checks it does nothing: it only
adds two options and a fixture.

Options (besides testinfra's ``--hosts``, ``--ssh-config``...):

* ``--provisioner-expect=FILE``: what each host should look like (``docs/verify.md``);
  without it, or for a host it does not list, the declared defaults of every data key
  apply and nothing is planned.
* ``--provisioner-results=FILE``: write one record per host and check (``recorder.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from provisioner.verify.context import HostContext, find_expectations, load_expectations
from provisioner.verify.recorder import ResultsRecorder
from provisioner.verify.report import ERROR, FAIL, LAYERS, SKIP

CHECKS_DIR = Path(__file__).resolve().parent / "checks"

_EXPECT = pytest.StashKey[dict[str, dict[str, Any]]]()
_CONTEXTS = pytest.StashKey[dict[str, HostContext]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("provisioner", "provision verify")
    group.addoption(
        "--provisioner-expect",
        dest="provisioner_expect",
        default=None,
        help="JSON file with each host's expected state (name, data, plan, facts).",
    )
    group.addoption(
        "--provisioner-results",
        dest="provisioner_results",
        default=None,
        help="Write the per-host, per-check results here as JSON.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"layer(name): the stack layer a check belongs to ({', '.join(LAYERS)})"
    )
    config.stash[_EXPECT] = load_expectations(config.getoption("provisioner_expect"))
    config.stash[_CONTEXTS] = {}
    results = config.getoption("provisioner_results")
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(ResultsRecorder(Path(results)), "provisioner-results")


def _in_suite(item: pytest.Item) -> bool:
    return Path(item.path).resolve().is_relative_to(CHECKS_DIR)


def _testinfra_host(item: pytest.Item) -> Any:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("_testinfra_host") if callspec is not None else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag every check with its host, layer and name, and keep a host's checks on one
    xdist worker (``--dist loadgroup``): they share observations, and two model loads on
    one host at once would measure each other."""
    expectations = config.stash[_EXPECT]
    for order, item in enumerate(items):
        if not _in_suite(item):
            continue
        marker = item.get_closest_marker("layer")
        layer = str(marker.args[0]) if marker and marker.args else "host"
        check = getattr(item, "originalname", item.name).removeprefix("test_")
        host = _testinfra_host(item)
        if host is not None:
            entry = find_expectations(expectations, host)
            host_id = str(host.backend.get_pytest_id())
            name = str(entry.get("name") or host_id)
            item.add_marker(pytest.mark.xdist_group(host_id))
        else:
            name = "?"
        item.user_properties.extend(
            [("host", name), ("layer", layer), ("check", check), ("order", order)]
        )


def _describe(exc: BaseException) -> str:
    detail = exc.args[0] if exc.args else None
    stderr = getattr(detail, "stderr", None)  # testinfra's ssh backend raises its result
    if stderr is not None:
        return f"{type(exc).__name__}: command failed on the host: {str(stderr).strip()}"
    return f"{type(exc).__name__}: {exc}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the kind of outcome and a clean message: a check that found the host wrong
    (``pytest.fail``/``assert``) is ``fail``; anything else raised is ``error``."""
    report = yield
    excinfo = call.excinfo
    if excinfo is None or report.passed or not _in_suite(item):
        return report
    exc = excinfo.value
    if excinfo.errisinstance(pytest.skip.Exception):
        kind, message = SKIP, str(getattr(exc, "msg", exc))
    elif excinfo.errisinstance(pytest.fail.Exception):
        kind, message = FAIL, str(getattr(exc, "msg", exc))
    elif excinfo.errisinstance(AssertionError):
        kind, message = FAIL, str(exc) or str(excinfo.getrepr(style="value"))
    else:
        kind, message = ERROR, _describe(exc)
    report.user_properties = [*report.user_properties, ("kind", kind), ("message", message)]
    return report


@pytest.fixture
def target(host: Any, request: pytest.FixtureRequest) -> HostContext:
    """The host under test with its expectations (one per host and worker). A check on a
    host that cannot be reached is skipped; ``host/reachable`` fails for it."""
    contexts = request.config.stash[_CONTEXTS]
    key = str(host.backend.get_pytest_id())
    if key not in contexts:
        contexts[key] = HostContext(host, find_expectations(request.config.stash[_EXPECT], host))
    ctx = contexts[key]
    if request.node.originalname != "test_reachable":
        ctx.require_reachable()
    return ctx
