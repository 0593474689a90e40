"""The checks of ``provision verify``, one module per layer of the stack.

Each check is a pytest test over testinfra's ``host`` (through the ``target`` fixture of
``provisioner/verify/plugin.py``), marked with its layer. A check that finds the host wrong
fails with a message naming the host, the expected and the actual value; a check that does
not apply to the host is skipped with the reason.
"""
