"""pyinfra operations, one module per subject (paired with ``provisioner.facts``)."""
