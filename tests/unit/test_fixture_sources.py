"""Every operation fixture names its origin (issue 17: 30 of 87 had no ``source``).

A fixture's expected commands are only as good as where they come from, so each
``tests/fixtures/operations/<module>.<op>/*.json`` starts its ``source`` with one of:

* ``recorded:`` a real run it was copied from (host, tool and version);
* ``doc:`` the document the expectation follows (repository, commit and file, or URL);
* ``scenario:`` a hand-made case: what it sets up and, where not obvious, why it matters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

OPERATIONS = Path(__file__).resolve().parents[1] / "fixtures" / "operations"
FIXTURES = sorted(OPERATIONS.glob("*/*.json"))
ORIGIN = re.compile(r"(recorded|doc|scenario): \S")


def test_the_operation_fixtures_are_found():
    assert len(FIXTURES) >= 87


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_operation_fixture_names_its_origin(path):
    source = json.loads(path.read_text()).get("source")
    assert isinstance(source, str), f"{path}: no top-level 'source'"
    assert ORIGIN.match(source), f"{path}: source must start with recorded:, doc: or scenario:"
    assert len(source) >= 30, f"{path}: say what the case sets up (and why): {source!r}"


def test_doc_references_name_a_commit_or_url():
    for path in FIXTURES:
        source = json.loads(path.read_text())["source"]
        for ref in re.findall(r"doc: (\S+)", source):
            assert re.search(r"@[0-9a-f]{40}|^https?://", ref), f"{path}: {ref} (pin a commit)"
