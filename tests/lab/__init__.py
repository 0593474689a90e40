"""The lab: real Debian hosts (systemd-nspawn, one network namespace each) and local mirrors.

See README.md here; `python -m tests.lab --help` drives it by hand.
"""
