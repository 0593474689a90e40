"""Host layer: the machine answers, and the model store is owned right and has room."""

from __future__ import annotations

import shlex

import pytest

from provisioner.deploys.ollama import USER as OLLAMA_USER
from provisioner.facts.ollama import PathChain
from provisioner.operations.ollama import _traversable
from provisioner.verify import parse
from provisioner.verify.context import HostContext

pytestmark = pytest.mark.layer("host")


def test_reachable(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The host answers a command over its connection."""
    error = target.unreachable()
    if error:
        target.fail("connection", "the host runs a command", error)
    target.passed(request, "answers")


def _models_dir(target: HostContext) -> str:
    path = target.key("ollama_models_dir")
    if not path:
        target.skip("ollama_models_dir is not set")
    return str(path)


def test_models_dir_owner(target: HostContext, request: pytest.FixtureRequest) -> None:
    """The models directory exists, belongs to the Ollama user, and that user can reach it
    through every parent directory (the failure Ollama users hit most)."""
    path = _models_dir(target)
    user = OLLAMA_USER  # its group has the same name
    result = target.run(f"stat -c '%U' {shlex.quote(path)}")
    if result.rc != 0:
        target.fail(f"models directory {path}", f"a directory owned by {user}", "it does not exist")
    owner = result.stdout.strip()
    if owner != user:
        target.fail(f"owner of {path}", user, owner)
    blocked = [
        entry["path"]
        for entry in target.fact(PathChain, path)
        if entry["exists"] and not _traversable(entry, user, user)
    ]
    if blocked:
        target.fail(
            f"path to {path}",
            f"every directory searchable by {user}",
            "not searchable: " + ", ".join(blocked),
        )
    target.passed(request, f"{path} owned by {owner}")


def test_models_dir_free_space(target: HostContext, request: pytest.FixtureRequest) -> None:
    """Room for the next update: at least the largest planned model's size is free (an
    update holds the old and the new blobs until the old ones are pruned). Sizes are the real
    blob sizes of the model's manifest (in the store, else in the registry); the catalog's
    estimate only when neither can be read, and the message says which was used."""
    path = _models_dir(target)
    planned = target.planned_models()
    if not planned:
        target.skip("no models planned for this host")
    sizes = {m["tag"]: target.model_bytes(m["tag"]) for m in planned}
    known = {tag: sized for tag, sized in sizes.items() if sized[0]}
    if not known:
        target.skip(
            "sizes of the planned models unknown (not in /api/tags, the registry or the catalog)"
        )
    tag, (largest, source) = max(known.items(), key=lambda item: item[1][0])
    available = parse.df_available_bytes(target.output(f"df -P -k {shlex.quote(path)}"))
    if available is None:
        target.fail(
            f"free space in {path}", "a df reading", "df failed (does the directory exist?)"
        )
    if available < largest:
        target.fail(
            f"free space in {path}",
            f">= {parse.human_bytes(largest)} (largest planned model, {tag}, {source})",
            parse.human_bytes(available),
        )
    target.passed(
        request,
        f"{parse.human_bytes(available)} free, largest model {tag} "
        f"{parse.human_bytes(largest)} ({source})",
    )
