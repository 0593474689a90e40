"""``provision verify``: a testinfra suite that proves each host's GPU stack works.

The checks live in :mod:`provisioner.verify.checks` (one module per layer: driver, cuda,
pytorch, ollama, host) and ship with the package, so they run from an installed package:

* from Python: :func:`run_verify` (``provisioner.verify.runner``) with one
  :class:`VerifyTarget` per host, returning a :class:`VerifyReport` (table, failures, JSON,
  JUnit XML, exit code);
* directly: ``pytest --pyargs provisioner.verify --hosts=ssh://gpu-1
  --provisioner-expect=expect.json`` (the plugin comes from the package's ``pytest11`` entry
  point; add ``-p provisioner.verify.plugin`` where that is not installed). See
  ``docs/verify.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from provisioner.verify.report import CheckResult, VerifyReport
    from provisioner.verify.runner import VerifyError, VerifyTarget, run_verify

__all__ = ["CheckResult", "VerifyError", "VerifyReport", "VerifyTarget", "run_verify"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the suite's own imports (pytest loads this package) stay light.
    if name in ("CheckResult", "VerifyReport"):
        from provisioner.verify import report

        return getattr(report, name)
    if name in ("VerifyError", "VerifyTarget", "run_verify"):
        from provisioner.verify import runner

        return getattr(runner, name)
    raise AttributeError(name)
