"""Smoke-test inventory: every running VM of the repository's Vagrantfile.

``@vagrant`` is pyinfra's Vagrant connector. When the inventory loads it runs
``vagrant status --machine-readable``, then ``vagrant ssh-config NAME`` for each machine in the
``running`` state, and makes one host per VM, named ``@vagrant/NAME`` (``@vagrant/debian12``),
with ``ssh_hostname``, ``ssh_port``, ``ssh_user`` and ``ssh_key`` taken from that output.
Machines that are not running are left out; with none running the inventory does not load
(``provision`` exits 2 before contacting anything).

Every host is in the groups ``@vagrant`` (set by the connector), ``vms`` and ``vagrant`` (this
file's name), so two group_data files apply:

* ``group_data/@vagrant.py``: how to connect to a Vagrant VM (throwaway host keys, sudo);
* ``group_data/vagrant.py``: the smoke profile (no GPU, one small model sized to RAM).

Run it with ``scripts/vagrant-smoke.sh`` or by hand (docs/vagrant.md)::

    vagrant up --provider=libvirt
    provision apply inventories/vagrant.py
    provision verify inventories/vagrant.py --limit '@vagrant/debian12'
"""

import os
from pathlib import Path

# The connector runs `vagrant` in the current directory; point it at this repository's
# Vagrantfile wherever `provision` is started. An operator's own VAGRANT_CWD wins.
os.environ.setdefault("VAGRANT_CWD", str(Path(__file__).resolve().parent.parent))
# No version check against HashiCorp's servers on every inventory load.
os.environ.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")

vms = ["@vagrant"]
