"""pyinfra facts, one module per subject (paired with ``provisioner.operations``)."""
