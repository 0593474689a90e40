"""Fact and operation tests generated from JSON/YAML fixtures, as pyinfra's own tests are.

* ``tests/fixtures/facts/<module>.<Fact>/*.json``: ``{command, output, fact}`` (plus an
  optional ``source`` naming where the output comes from) -> class ``TestFact_<module>.<Fact>``
  made by ``pyinfra_testing.facts.make_fact_tests("provisioner.facts", ...)``.
* ``tests/fixtures/operations/<module>.<op>/*.json``: ``{args, kwargs, facts, commands,
  noop_description, exception, local_files}`` -> class ``TestOp_<module>.<op>`` made by
  ``pyinfra_testing.operations.make_operation_tests("provisioner.operations", ...)``.

Two known pitfalls of pyinfra-testing 0.2.1 are worked around here:

1. its ``patch_files`` fakes ``os.path``/``open`` only, while pyinfra 3.10's operations also
   look at local files through ``pathlib.Path``; :class:`PathlibPatchFiles` fakes those too
   (only for fixtures that declare ``local_files``);
2. its generated test methods read each fixture with ``path.open().read()``, leaving the
   file to be closed when it is freed, with a ResourceWarning (an error under ``-W
   error``); the methods are wrapped to ignore that one warning, and renamed
   ``test_<fixture>`` (instead of ``test_<dotted.fact.name>_<fixture>``).

A fixture folder whose module cannot be imported gives one failing test, not a failed
collection of this whole file.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any
from unittest import TestCase
from unittest.mock import patch

import pyinfra_testing.operations
from pyinfra_testing.facts import make_fact_tests
from pyinfra_testing.operations import make_operation_tests
from pyinfra_testing.util import patch_files

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FACT_FIXTURES = FIXTURES / "facts"
OPERATION_FIXTURES = FIXTURES / "operations"
SUFFIXES = frozenset({".json", ".yaml", ".yml"})


class PathlibPatchFiles(patch_files):
    """``patch_files`` that also fakes ``Path.exists/is_file/is_dir/is_symlink/mkdir``."""

    def __enter__(self) -> None:
        self._path_patches = []
        if self._files or self._directories or self._symlinks:
            fake = self
            self._path_patches = [
                patch.object(Path, "exists", lambda p: fake.exists(str(p))),
                patch.object(Path, "is_file", lambda p: fake.isfile(str(p))),
                patch.object(Path, "is_dir", lambda p: fake.isdir(str(p))),
                patch.object(Path, "is_symlink", lambda p: fake.islink(str(p))),
                patch.object(Path, "mkdir", lambda p, *args, **kwargs: None),
            ]
        for patched in self._path_patches:
            patched.start()
        return super().__enter__()

    def __exit__(self, type_, value, traceback) -> None:
        try:
            super().__exit__(type_, value, traceback)
        finally:
            for patched in reversed(self._path_patches):
                patched.stop()


# make_operation_tests looks ``patch_files`` up in its module when a test runs.
pyinfra_testing.operations.patch_files = PathlibPatchFiles


def fixture_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix in SUFFIXES)


def fixture_folders(root: Path) -> list[Path]:
    """The ``<module>.<name>`` folders under ``root`` holding at least one fixture."""
    if not root.is_dir():
        return []
    return sorted(
        folder
        for folder in root.iterdir()
        if folder.is_dir() and "." in folder.name and fixture_files(folder)
    )


def _method_name(stem: str) -> str:
    return "test_" + re.sub(r"\W", "_", stem)


def _fact_prefix(base_import_path: str, name: str) -> str:
    module, fact = name.rsplit(".", 1)
    return f"test_{getattr(import_module(f'{base_import_path}.{module}'), fact).name}_"


def _operation_prefix(base_import_path: str, name: str) -> str:
    return "test_" + name.replace(".", "_", 1) + "_"


def _closing_files(method: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(method)
    def test(self: Any) -> None:
        # pyinfra-testing reads each fixture with ``path.open().read()``: the file is
        # closed when the object is freed, with a ResourceWarning (see docstring, item 2).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ResourceWarning)
            method(self)

    return test


def _renamed(cls: type[TestCase], folder: Path, prefix: str) -> type[TestCase]:
    """``test_<fixture>`` methods, wrapped by :func:`_closing_files` (docstring, item 2)."""
    for path in fixture_files(folder):
        method = vars(cls)[prefix + path.stem]
        delattr(cls, prefix + path.stem)
        setattr(cls, _method_name(path.stem), _closing_files(method))
    return cls


def _broken(folder: Path, exc: Exception) -> type[TestCase]:
    message = f"cannot build tests for {folder.relative_to(FIXTURES)}: {exc!r}"

    class Broken(TestCase):
        def test_fixture_folder_loads(self) -> None:
            self.fail(message)

    return Broken


def make_tests(
    root: Path,
    class_prefix: str,
    factory: Callable[[str, str, Path], type[TestCase]],
    base_import_path: str,
    method_prefix: Callable[[str, str], str],
) -> dict[str, type[TestCase]]:
    classes: dict[str, type[TestCase]] = {}
    for folder in fixture_folders(root):
        try:
            cls = factory(base_import_path, folder.name, folder)
            cls = _renamed(cls, folder, method_prefix(base_import_path, folder.name))
        except Exception as exc:  # one broken folder must not hide the others
            cls = _broken(folder, exc)
        cls.__name__ = cls.__qualname__ = f"{class_prefix}{folder.name}"
        classes[cls.__name__] = cls
    return classes


globals().update(
    make_tests(FACT_FIXTURES, "TestFact_", make_fact_tests, "provisioner.facts", _fact_prefix)
)
globals().update(
    make_tests(
        OPERATION_FIXTURES,
        "TestOp_",
        make_operation_tests,
        "provisioner.operations",
        _operation_prefix,
    )
)
