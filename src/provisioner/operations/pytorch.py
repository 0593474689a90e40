"""
Operations of the PyTorch component: the service user, its virtual environment, and the torch
wheel from the index that matches the driver.
"""

from __future__ import annotations

import posixpath

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.facts.files import Directory, File
from pyinfra.operations import server

from provisioner.facts.pytorch import TorchVersion
from provisioner.facts.system import UserAccount

NOLOGIN = "/usr/sbin/nologin"


@operation()
def service_user(user: str):
    """
    Create the system user that owns the PyTorch virtual environment (no login shell, no
    home directory). ``root`` is used as it is.

    + user: the user name

    **Example:**

    .. code:: python

        pytorch.service_user(name="PyTorch user", user="provisioner")
    """
    if user == "root":
        host.noop("the virtual environment belongs to root")
        return
    if host.get_fact(UserAccount, user=user) is not None:
        host.noop(f"user {user} exists")
        return
    yield from server.user._inner(
        user=user, system=True, shell=NOLOGIN, ensure_home=False, create_home=False
    )


@operation()
def venv(path: str, user: str, python: str = "python3"):
    """
    Create a virtual environment owned by ``user`` (created as that user with ``runuser``),
    or give an existing one back to ``user``.

    + path: the virtual environment
    + user: its owner
    + python: the interpreter that creates it

    **Example:**

    .. code:: python

        pytorch.venv(name="PyTorch venv", path="/opt/provisioner/torch-venv", user="provisioner")
    """
    directory = host.get_fact(Directory, path=path)
    if host.get_fact(File, path=posixpath.join(path, "pyvenv.cfg")) and directory:
        if directory.get("user") == user:
            host.noop(f"virtual environment {path} exists, owned by {user}")
            return
        yield StringCommand("chown", "-R", QuoteString(f"{user}:"), QuoteString(path))
        return
    yield StringCommand("mkdir", "-p", QuoteString(path))
    yield StringCommand("chown", QuoteString(f"{user}:"), QuoteString(path))
    yield StringCommand(
        "runuser",
        "-u",
        QuoteString(user),
        "--",
        QuoteString(python),
        "-m",
        "venv",
        QuoteString(path),
    )


@operation()
def torch(
    venv: str,
    version: str,
    tag: str,
    index_url: str,
    user: str,
    trusted_host: str | None = None,
    wheel: str | None = None,
):
    """
    Install ``torch==<version>+<tag>`` into a virtual environment from one wheel index
    (``<pytorch_index_url>/<tag>``, whose sha256 links pip checks), as the venv's owner.
    Nothing when exactly that build is installed; another build (another tag) is replaced.

    + venv: the virtual environment
    + version: PyTorch version, e.g. ``"2.9.1"``
    + tag: wheel index tag, e.g. ``"cu130"`` or ``"cpu"``
    + index_url: the index, e.g. ``https://download.pytorch.org/whl/cu130``
    + user: the venv's owner
    + trusted_host: host of a plain-HTTP index on a trusted network (pip's ``--trusted-host``)
    + wheel: the fleet lock's wheel, ``torch @ URL#sha256=…`` (pip checks the sum); its
      dependencies still come from the index. None: ``torch==<version>+<tag>`` from the index

    **Example:**

    .. code:: python

        pytorch.torch(
            name="PyTorch",
            venv="/opt/provisioner/torch-venv",
            version="2.9.1",
            tag="cu130",
            index_url="https://download.pytorch.org/whl/cu130",
            user="provisioner",
        )
    """
    wanted = f"{version}+{tag}"
    installed = host.get_fact(TorchVersion, python=posixpath.join(venv, "bin", "python"))
    if installed == wanted:
        host.noop(f"torch {wanted} is installed in {venv}")
        return
    yield StringCommand(
        "runuser",
        "-u",
        QuoteString(user),
        "--",
        QuoteString(posixpath.join(venv, "bin", "pip")),
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--index-url",
        QuoteString(index_url),
        *(["--trusted-host", QuoteString(trusted_host)] if trusted_host else []),
        QuoteString(wheel or f"torch=={wanted}"),
    )
