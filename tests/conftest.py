"""Shared by every test directory.

A runner that starts pytest as a background job of a script (``cmd &``) leaves SIGINT ignored,
and an interpreter that starts with SIGINT ignored never raises ``KeyboardInterrupt``; its
children inherit the ignored signal too. The Ctrl-C tests (``test_interrupts.py``,
``test_ollama_sync.py``, ``test_fetch_helper_bounds.py``) press Ctrl-C as a terminal delivers
it, so the test process takes Python's own handler back. (``provision`` itself handles a start
with SIGINT ignored: ``test_ollama_sync.py``'s ``..._even_when_started_with_it_ignored``.)
"""

from __future__ import annotations

import signal

import pytest


def _take_ctrl_c_back() -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_take_ctrl_c_back()


@pytest.fixture(autouse=True)
def _ctrl_c_as_a_terminal_delivers_it():
    """Also before each test: a test that leaves SIGINT ignored does not blind the next."""
    _take_ctrl_c_back()
    yield
