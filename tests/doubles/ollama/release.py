# TEST DOUBLE: builds a stand-in Ollama release (archives + sha256sum.txt) around ollama_double.py.
"""Build a stand-in of Ollama's Linux release assets for the lab mirror, as one version ships.

Copies ``.github/workflows/release.yaml`` of ollama/ollama (records in
``tests/conformance/ollama/records.toml``, ids ``release.*``):

* the archive is ``ollama-linux-<arch>.tgz`` (``tar c ... | pigz -9``) before v0.14.0 and
  ``ollama-linux-<arch>.tar.zst`` (``tar c ... | zstd``) from v0.14.0 (v0.13.5 and v0.14.0
  workflows);
* members are what ``tar c -C dist/linux-<arch> -T <list> --owner 0 --group 0`` writes for
  the list ``bin/ollama``, ``lib/ollama/*.so*``, ``lib/ollama/cuda_v*``, ``lib/ollama/vulkan*``
  (and ``lib/ollama/llama-server`` from v0.30.0): paths without ``./``, no entries for
  ``bin/`` or ``lib/`` themselves, a directory entry for each listed directory;
* ``sha256sum.txt`` is ``find . -type f -not -name sha256sum.txt | xargs sha256sum`` in
  ``dist/``: one ``<sha256>  ./<file>`` line per asset.

``bin/ollama`` is the double with the version baked into its ``VERSION`` line; the libraries
are placeholders. Members are sorted with fixed mtimes, gzip carries no timestamp and zstd
runs single-threaded at a fixed level, so a version always gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

PROGRAM = Path(__file__).with_name("ollama_double.py")
CHECKSUMS = "sha256sum.txt"
ARCHES = ("amd64", "arm64")
MTIME = 1_700_000_000  # fixed member mtime, so the archive is reproducible
ZSTD_FROM = (0, 14, 0)  # release.yaml at v0.14.0: `| zstd --ultra -22 -T0 > ....tar.zst`
LLAMA_SERVER_FROM = (0, 30, 0)  # release.yaml at v0.30.0 lists lib/ollama/llama-server*
_VERSION_LINE = re.compile(r'^VERSION = "[^"]*"', re.MULTILINE)

PLACEHOLDER = (
    b"TEST DOUBLE: placeholder for one of Ollama's runtime libraries. It is not a shared\n"
    b"object; bin/ollama in this archive is a Python stand-in that never loads it.\n"
)
LIB_FILES = {
    "amd64": ("libggml-base.so", "libggml-cpu-x64.so"),
    "arm64": ("libggml-base.so", "libggml-cpu-armv8.0_1.so"),
}
LIB_DIRS = {  # lib/ollama/<dir>: tar recurses into them
    "amd64": {
        "cuda_v12": ("libggml-cuda.so",),
        "cuda_v13": ("libggml-cuda.so",),
        "vulkan": ("libggml-vulkan.so",),
    },
    "arm64": {"cuda_v12": ("libggml-cuda.so",), "cuda_v13": ("libggml-cuda.so",)},
}


def _version_tuple(version: str) -> tuple[int, int, int]:
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a version string: {version!r}")
    major, minor, patch = (int(x) for x in match.groups())
    return (major, minor, patch)


def archive_name(version: str, arch: str = "amd64") -> str:
    """The Linux archive's file name for ``version`` (``.tgz`` before 0.14.0)."""
    ext = "tar.zst" if _version_tuple(version) >= ZSTD_FROM else "tgz"
    return f"ollama-linux-{arch}.{ext}"


def program_text(version: str) -> str:
    """The double's source with ``version`` baked into its VERSION line."""
    if not re.fullmatch(r"[0-9A-Za-z.+~-]+", version):
        raise ValueError(f"not a version string: {version!r}")
    text = PROGRAM.read_text()
    baked, count = _VERSION_LINE.subn(f'VERSION = "{version}"', text, count=1)
    if count != 1:
        raise RuntimeError(f"no VERSION line in {PROGRAM}")
    return baked


def install_program(dest: Path, version: str) -> Path:
    """Write the double as an executable ``dest`` (e.g. ``.../bin/ollama``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(program_text(version))
    dest.chmod(0o755)
    return dest


def _info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0  # --owner 0 --group 0
    info.uname = info.gname = "root"
    return info


def members(version: str, arch: str = "amd64") -> list[tuple[str, bytes | None, int]]:
    """``(name, data or None for a directory, mode)`` in the order ``tar c -T list`` writes
    them: the list is ``bin/*`` then ``lib/ollama/*`` (shell glob order), directories
    followed by their contents."""
    listed: list[tuple[str, bytes | None, int]] = [
        ("bin/ollama", program_text(version).encode(), 0o755)
    ]
    lib: dict[str, list[tuple[str, bytes | None, int]]] = {}
    for name in LIB_FILES[arch]:
        lib[name] = [(f"lib/ollama/{name}", PLACEHOLDER, 0o755)]
    if _version_tuple(version) >= LLAMA_SERVER_FROM:
        lib["llama-server"] = [("lib/ollama/llama-server", PLACEHOLDER, 0o755)]
    for folder, files in LIB_DIRS[arch].items():
        lib[folder] = [(f"lib/ollama/{folder}/", None, 0o755)] + [
            (f"lib/ollama/{folder}/{f}", PLACEHOLDER, 0o755) for f in sorted(files)
        ]
    for key in sorted(lib):
        listed += lib[key]
    return listed


def _tar(version: str, arch: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in members(version, arch):
            info = _info(name.rstrip("/"), mode)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _zstd(data: bytes) -> bytes:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise RuntimeError("building a .tar.zst release needs the zstd program (apt install zstd)")
    return subprocess.run(
        [zstd, "-19", "-T1", "-q", "-c"], input=data, capture_output=True, check=True
    ).stdout


def archive_bytes(version: str, arch: str = "amd64") -> bytes:
    """The compressed release archive, byte-for-byte reproducible for a version."""
    data = _tar(version, arch)
    if archive_name(version, arch).endswith(".tar.zst"):
        return _zstd(data)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def tarball_bytes(version: str) -> bytes:
    """The amd64 archive (kept for callers of the first version of this module)."""
    return archive_bytes(version, "amd64")


def build_release(out_dir: Path, version: str) -> Path:
    """Write the archives for every architecture and ``sha256sum.txt`` into ``out_dir``;
    return the amd64 archive."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for arch in ARCHES:
        path = out_dir / archive_name(version, arch)
        path.write_bytes(archive_bytes(version, arch))
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ./{path.name}")
    (out_dir / CHECKSUMS).write_text("\n".join(sorted(lines, key=lambda x: x[66:])) + "\n")
    return out_dir / archive_name(version, "amd64")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("version")
    ns = parser.parse_args()
    print(build_release(ns.out_dir, ns.version))
