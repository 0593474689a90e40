"""pyinfra deploy files that ``provision`` runs with pyinfra's CLI (not imported as modules)."""
