"""Example production inventory: copy it, change the addresses, keep the shape.

A pyinfra inventory: each module-level list (or ``(hosts, data)`` tuple) is a group, and this
file's name (``prod``) is a group too, so ``group_data/prod.py`` applies to every host here.
Host data keys are documented in docs/data-keys.md; an unknown key or a wrong type stops
``provision`` with exit status 2 before any host is contacted.

The addresses come from the documentation ranges (RFC 5737): nothing ever connects to them in
the tests. Run ``provision plan inventories/prod.py`` against your real copy to see what each
host would serve.
"""

# Two HGX-style training/inference boxes: 2x A100 80 GB each, NVSwitch-connected.
a100_servers = (
    [
        ("gpu-a100-01", {"ssh_hostname": "192.0.2.11"}),
        ("gpu-a100-02", {"ssh_hostname": "192.0.2.12"}),
    ],
    {
        "gpu_count": 2,
        "gpu_memory_mib": 81920,
        "model_profile": "reasoning",
        "models_max": 2,
    },
)

# Developer workstations serving code models to the IDE plugins of one team.
coding_servers = (
    [
        ("gpu-4090-01", {"ssh_hostname": "192.0.2.21"}),
        ("gpu-4090-02", {"ssh_hostname": "192.0.2.22", "ollama_context_length": 16384}),
    ],
    {
        "gpu_count": 1,
        "gpu_memory_mib": 24564,
        "model_profile": "coding",
        "models_always": ["nomic-embed-text:v1.5"],
    },
)

# An explicit model list: each model is checked against the host's VRAM, and one that does not
# fit is reported by `provision plan`, never silently dropped.
inference_servers = [
    (
        "gpu-l40s-01",
        {
            "ssh_hostname": "198.51.100.31",
            "models": ["llama3.3:70b", "qwen2.5-coder:14b"],
            "ollama_kv_cache_type": "q8_0",
        },
    ),
]

# CPU-only embedding node: no NVIDIA driver, models sized to RAM.
embedding_nodes = (
    [("cpu-embed-01", {"ssh_hostname": "198.51.100.41"})],
    {"gpu": False, "model_profile": "embedding"},
)
