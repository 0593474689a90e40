"""Data for every host of inventories/prod.py (the file's name is a group).

Site-wide settings live here: how to connect, and where the mirrors are for an air-gapped site.
Secrets never go here: point at them (a file on the control host, an environment variable).
"""

ssh_user = "ops"
_sudo = True

# Pinned server settings: they are inputs to the VRAM plan.
ollama_context_length = 8192
ollama_num_parallel = 2
