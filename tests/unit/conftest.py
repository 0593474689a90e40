"""Unit tests run many controllers against this machine (``@local``) at once, under xdist too:
each test process takes its own provisioner host lock, not the machine's /run/provisioner.lock."""

from __future__ import annotations

import os
import tempfile

from provisioner.host_lock import PATH_ENV

os.environ.setdefault(
    PATH_ENV, os.path.join(tempfile.mkdtemp(prefix="provisioner-lock-"), "provisioner.lock")
)
