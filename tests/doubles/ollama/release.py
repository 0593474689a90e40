# TEST DOUBLE: builds a stand-in Ollama release (tarball + sha256sum.txt) around ollama_double.py.
"""Build a stand-in of Ollama's Linux release assets for the lab mirror.

The real release ships ``ollama-linux-amd64.tgz`` (made with ``tar -C dist/linux-amd64 .``,
so every member starts with ``./``) holding ``bin/ollama`` and ``lib/ollama/``, and a
``sha256sum.txt`` with one ``<sha256>  ./<file>`` line per asset. This builds the same
layout with the double as ``bin/ollama`` and placeholder libraries, deterministically: the
same version always gives the same bytes and so the same sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from pathlib import Path

PROGRAM = Path(__file__).with_name("ollama_double.py")
TARBALL = "ollama-linux-amd64.tgz"
CHECKSUMS = "sha256sum.txt"
MTIME = 1_700_000_000  # fixed member mtime, so the archive is reproducible
_VERSION_LINE = re.compile(r'^VERSION = "[^"]*"', re.MULTILINE)

PLACEHOLDER = (
    b"TEST DOUBLE: placeholder for one of Ollama's runtime libraries. It is not a shared\n"
    b"object; bin/ollama in this archive is a Python stand-in that never loads it.\n"
)
NOTE = (
    b"This archive is a TEST DOUBLE of Ollama's Linux release, built by provisioner's\n"
    b"tests/doubles/ollama/release.py. bin/ollama is a Python stand-in (ollama_double.py)\n"
    b"and the files under lib/ollama/ are placeholders named like the real ones.\n"
)
LIB_FILES = (
    "libggml-base.so",
    "libggml-cpu-x64.so",
    "cuda_v12/libggml-cuda.so",
    "cuda_v13/libggml-cuda.so",
)


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


def _dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = MTIME
    tar.addfile(info)


def _file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = MTIME
    tar.addfile(info, io.BytesIO(data))


def tarball_bytes(version: str) -> bytes:
    """The gzip-compressed release archive, byte-for-byte reproducible for a version."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = {"./", "./bin/", "./lib/", "./lib/ollama/"}
        dirs.update(f"./lib/ollama/{Path(p).parent}/" for p in LIB_FILES if "/" in p)
        files = {"./bin/ollama": (program_text(version).encode(), 0o755)}
        files["./lib/ollama/TEST-DOUBLE.txt"] = (NOTE, 0o644)
        files.update({f"./lib/ollama/{p}": (PLACEHOLDER, 0o755) for p in LIB_FILES})
        for name in sorted(dirs | set(files)):
            if name in dirs:
                _dir(tar, name.rstrip("/") if name != "./" else ".")
            else:
                data, mode = files[name]
                _file(tar, name, data, mode)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def build_release(out_dir: Path, version: str) -> Path:
    """Write ``ollama-linux-amd64.tgz`` and ``sha256sum.txt`` into out_dir; return the tarball."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = tarball_bytes(version)
    tgz = out_dir / TARBALL
    tgz.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (out_dir / CHECKSUMS).write_text(f"{digest}  ./{TARBALL}\n")
    return tgz


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("version")
    ns = parser.parse_args()
    print(build_release(ns.out_dir, ns.version))
